import Logging
import MQTTCodec

extension Broker {
    /// Checks every subscription of every session, connected or offline, against the authorizer in
    /// effect (`subscribe` access for its filter — the inner filter of `$share/GROUP/FILTER` — with
    /// the session's client id and the username it authenticated as), and removes those it no longer
    /// allows, as an UNSUBSCRIBE would: from the subscription index and shared groups, and from the
    /// session store through the journal. Internal clients (bridges) are not subject to client ACLs
    /// and are skipped.
    ///
    /// Messages queued for the session that no remaining subscription accounts for are not delivered:
    /// shared-subscription deliveries go to another member of their group (as when a member leaves),
    /// the rest are dropped and counted (`iotgw_messages_dropped_total{reason="acl_revoked"}`), QoS 1/2
    /// included — the client lost the right to read them. Messages already in flight complete their
    /// QoS 1/2 exchange: the client has them.
    ///
    /// Each revocation is logged at notice level and counted in `iotgw_acl_subscriptions_revoked_total`.
    /// - Returns: the number of subscriptions removed.
    @discardableResult
    func revokeSubscriptionsNotAllowed() -> Int {
        allSessions.reduce(0) { $0 + revokeSubscriptionsNotAllowed(of: $1) }
    }

    /// ``revokeSubscriptionsNotAllowed()`` for one session.
    @discardableResult
    func revokeSubscriptionsNotAllowed(of session: Session) -> Int {
        // Skipped: internal clients, and a session discarded since the caller saw it.
        guard !session.isInternal, self.session(clientID: session.clientID) === session else { return 0 }
        let authorizer = self.authorizer
        let username = session.username
        var denied: [String: Session.StoredSubscription] = [:]
        var kept: [(Session.StoredSubscription, filtered: Bool)] = []
        for (key, subscription) in session.subscriptions {
            switch authorizer.subscriptionGrant(filter: subscription.options.topicFilter, clientID: session.clientID, username: username) {
            case .denied: denied[key] = subscription
            case .allowed: kept.append((subscription, false))
            case .filtered: kept.append((subscription, true))
            }
        }
        // What stays may now need the per-message read check (a new deny rule overlaps it), or no longer.
        setReadChecks(kept, of: session)
        guard !denied.isEmpty else { return 0 }
        let keys = denied.keys.sorted()
        // A concurrent UNSUBSCRIBE may have removed some already: count only what this removed.
        let revoked = zip(keys, unsubscribe(keys, session: session)).filter { $0.1 == .success }.map(\.0)
        for key in revoked {
            logger.notice(
                "subscription revoked: the ACL no longer allows it",
                metadata: ["mqtt.client.id": "\(session.clientID)", "mqtt.topic_filter": "\(key)", "mqtt.username": "\(username ?? "")"]
            )
        }
        guard !revoked.isEmpty else { return 0 }
        metrics.subscriptionsRevoked(revoked.count)
        let orphaned = session.takeQueuedWithoutSubscription()
        let dropped = redistribute(orphaned, from: session)
        if dropped > 0 {
            metrics.messageDropped(.aclRevoked, count: dropped)
            logger.notice(
                "dropped queued messages of revoked subscriptions",
                metadata: ["mqtt.client.id": "\(session.clientID)", "iotgw.dropped": "\(dropped)"]
            )
        }
        return revoked.count
    }

    /// Updates the index entries of `session`'s subscriptions with whether each needs the ACL read check.
    private func setReadChecks(_ subscriptions: [(Session.StoredSubscription, filtered: Bool)], of session: Session) {
        guard !subscriptions.isEmpty else { return }
        withIndex { index in
            for (subscription, filtered) in subscriptions {
                index.setFiltered(filtered, filter: subscription.options.topicFilter, group: subscription.group, session: session)
            }
        }
    }
}

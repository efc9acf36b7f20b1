import Logging
import MQTTCodec
import NIOCore

extension Broker {
    /// What ``restore(from:)`` loaded.
    public struct RestoreReport: Sendable, Hashable {
        /// Persistent sessions restored (offline, waiting for their clients).
        public var sessions = 0
        /// Stored sessions whose expiry had passed: deleted.
        public var expiredSessions = 0
        public var subscriptions = 0
        /// Messages put back in session queues.
        public var queuedMessages = 0
        /// Messages put back in flight (sent again with DUP, or PUBREL, on reconnect).
        public var inflightMessages = 0
        /// Inbound QoS 2 exchanges put back (PUBREC sent, PUBREL awaited).
        public var inboundQoS2 = 0
        /// Stored messages over the queue caps (or undecodable, or of a missing session): deleted, counted.
        public var droppedMessages = 0
        public var retainedMessages = 0
        /// Retained messages whose Message Expiry had passed: deleted.
        public var expiredRetained = 0
    }

    /// Loads the durable state from `store` into this (new, not yet serving) broker: persistent
    /// sessions with their remaining expiry, their subscriptions (into the subscription index, shared
    /// ones included), their queued and in-flight messages in order, and retained messages. Call it
    /// before listeners accept. Deletions it decides (expired sessions, messages over the caps) go
    /// through the journal.
    ///
    /// Remaining expiry counts from the wall-clock time the session's connection ended; a session that
    /// was still connected when the process died counts as disconnected now.
    ///
    /// - Parameter internalClients: the queue limits of internal clients (bridges) by client id: their
    ///   restored sessions get these limits and drop new messages when full instead of disconnecting,
    ///   as ``attachInternalClient(clientID:subscriptions:limits:)`` would have made them.
    @discardableResult
    public func restore(from store: any BrokerStateStore, internalClients: [String: InternalClient.Limits] = [:]) async throws -> RestoreReport {
        let started = ContinuousClock.now
        let snapshot = try await store.load()
        let read = started.duration(to: .now)
        let report = restore(snapshot, internalClients: internalClients)
        logger.debug(
            "session store read and applied",
            metadata: ["iotgw.restore.read": "\(read)", "iotgw.restore.apply": "\(started.duration(to: .now) - read)"]
        )
        return report
    }

    func restore(_ snapshot: BrokerStateSnapshot, internalClients: [String: InternalClient.Limits] = [:]) -> RestoreReport {
        var report = RestoreReport()
        let now = self.now
        let wallNow = WallClock.millisecondsSinceEpoch()
        let configuration = self.configuration
        let limits = Session.Limits(
            maxInflight: configuration.maxInflight,
            maxQueuedMessages: configuration.maxQueuedMessages,
            maxQueuedBytes: configuration.maxQueuedBytes
        )
        if let maxSeq = snapshot.messages.map(\.seq).max() { journal?.advanceSequence(past: maxSeq) }

        var subscriptionsByClient: [String: [StoredSubscriptionRecord]] = [:]
        for subscription in snapshot.subscriptions { subscriptionsByClient[subscription.clientID, default: []].append(subscription) }
        var messagesByClient: [String: [StoredSessionMessage]] = [:]
        for message in snapshot.messages { messagesByClient[message.clientID, default: []].append(message) }
        var inboundQoS2ByClient: [String: [UInt16]] = [:]
        for exchange in snapshot.inboundQoS2 { inboundQoS2ByClient[exchange.clientID, default: []].append(exchange.packetID) }

        var restored: Set<String> = []
        for record in snapshot.sessions {
            let elapsed = Double(max(0, wallNow - (record.disconnectedAt ?? wallNow))) / 1000
            if let interval = record.expiryInterval, elapsed >= interval {
                report.expiredSessions += 1
                journal?.append(.deleteSession(clientID: record.clientID))
                continue
            }
            if record.disconnectedAt == nil {
                // Connected when the process died: its expiry starts now (and survives another crash).
                var disconnected = record
                disconnected.disconnectedAt = wallNow
                journal?.append(.upsertSession(disconnected))
            }
            let internalLimits = internalClients[record.clientID]
            let session = Session(
                clientID: record.clientID,
                persistent: true,
                expiryInterval: record.expiryInterval,
                limits: internalLimits.map {
                    Session.Limits(maxInflight: $0.maxInflight, maxQueuedMessages: $0.maxQueuedMessages, maxQueuedBytes: $0.maxQueuedBytes)
                } ?? limits,
                budget: budget,
                metrics: metrics,
                journal: journal,
                dropsWhenFull: internalLimits != nil || record.clientID.hasPrefix(InternalClient.reservedPrefix),
                username: record.username,
                congestion: congestion
            )
            let subscriptions = (subscriptionsByClient[record.clientID] ?? []).map { stored in
                (key: stored.key, Session.StoredSubscription(options: stored.options, subscriptionIdentifier: stored.subscriptionIdentifier, group: stored.group))
            }
            var messages: [(QueuedMessage, StoredSessionMessage.State, UInt16?)] = []
            for stored in messagesByClient[record.clientID] ?? [] {
                guard let properties = try? StoredForm.properties(stored.properties) else {
                    logger.warning("stored session message has undecodable properties; dropping it", metadata: ["mqtt.client.id": "\(record.clientID)"])
                    report.droppedMessages += 1
                    journal?.append(.deleteMessage(seq: stored.seq))
                    continue
                }
                let message = Message(
                    topic: stored.topic,
                    payload: stored.payload,
                    qos: stored.messageQoS,
                    retain: stored.messageRetain,
                    properties: properties,
                    publisherClientID: stored.publisherClientID,
                    expiresAt: StoredForm.instant(stored.expiresAt, now: now, wallNow: wallNow)
                )
                var queued = QueuedMessage(
                    message: message,
                    qos: stored.qos,
                    retain: stored.retain,
                    subscriptionIdentifiers: stored.subscriptionIdentifiers,
                    sharedGroup: stored.sharedGroup.flatMap { group in stored.sharedFilter.map { SharedGroupKey(group: group, filter: $0) } }
                )
                queued.seq = stored.seq
                messages.append((queued, stored.state, stored.packetID))
            }
            let disconnectedAt = now.advanced(by: .milliseconds(-Int64(elapsed * 1000)))
            let count = session.restore(subscriptions: subscriptions, messages: messages, disconnectedAt: disconnectedAt)
            if let inbound = inboundQoS2ByClient[record.clientID] {
                session.restoreInboundQoS2(inbound)
                report.inboundQoS2 += inbound.count
            }
            for seq in count.dropped { journal?.append(.deleteMessage(seq: seq)) }
            if !count.dropped.isEmpty {
                metrics.messageDropped(.queueFullQoS12, count: count.dropped.count)
                logger.notice(
                    "stored session queue over the configured caps; dropped the newest messages",
                    metadata: ["mqtt.client.id": "\(record.clientID)", "iotgw.dropped": "\(count.dropped.count)"]
                )
            }
            report.droppedMessages += count.dropped.count
            report.queuedMessages += count.queued
            report.inflightMessages += count.inflight
            report.subscriptions += subscriptions.count
            report.sessions += 1
            restored.insert(record.clientID)
            insertRestored(session, subscriptions: subscriptions)
        }
        // Rows of sessions that are not there (expired above, or left behind): removed.
        for clientID in Set(subscriptionsByClient.keys).union(messagesByClient.keys).union(inboundQoS2ByClient.keys)
        where !restored.contains(clientID) {
            if snapshot.sessions.contains(where: { $0.clientID == clientID }) { continue }  // deleted above
            report.droppedMessages += messagesByClient[clientID]?.count ?? 0
            journal?.append(.deleteSession(clientID: clientID))
        }

        for stored in snapshot.retained {
            if let expiresAt = stored.expiresAt, expiresAt <= wallNow {
                report.expiredRetained += 1
                journal?.append(.deleteRetained(topic: stored.topic))
                continue
            }
            guard let properties = try? StoredForm.properties(stored.properties) else {
                logger.warning("stored retained message has undecodable properties; dropping it", metadata: ["mqtt.topic": "\(stored.topic)"])
                journal?.append(.deleteRetained(topic: stored.topic))
                continue
            }
            retained.restore(
                Message(
                    topic: stored.topic,
                    payload: stored.payload,
                    qos: stored.qos,
                    retain: true,
                    properties: properties,
                    publisherClientID: stored.publisherClientID,
                    expiresAt: StoredForm.instant(stored.expiresAt, now: now, wallNow: wallNow)
                )
            )
            report.retainedMessages += 1
        }
        metrics.sessions(sessionCount)
        metrics.retained(retainedCount)
        logger.info(
            "restored broker state",
            metadata: [
                "iotgw.restore.sessions": "\(report.sessions)",
                "iotgw.restore.expired_sessions": "\(report.expiredSessions)",
                "iotgw.restore.subscriptions": "\(report.subscriptions)",
                "iotgw.restore.queued": "\(report.queuedMessages)",
                "iotgw.restore.inflight": "\(report.inflightMessages)",
                "iotgw.restore.dropped": "\(report.droppedMessages)",
                "iotgw.restore.retained": "\(report.retainedMessages)",
            ]
        )
        return report
    }
}

public import Logging
import MQTTCodec
import NIOCore
import Synchronization

/// The broker core: sessions, the subscription index, retained messages and routing.
///
/// Knows no sockets: connections reach it through ``ClientConnection`` and it reaches them back only
/// through ``ConnectionHandle``. Hot state (sessions and the subscription index) sits behind one
/// `Mutex`; every critical section is short and synchronous. Per-session state has its own lock, always
/// taken after (never while holding) the broker's, so the two cannot deadlock.
public final class Broker: Sendable {
    /// The current limits and switches. A read of the live holder: ``reconfigure(_:)`` (SIGHUP) may
    /// change the fields listed in ``BrokerConfiguration/applyingLiveChanges(from:)`` at any time, so
    /// read it once per decision rather than caching it.
    public var configuration: BrokerConfiguration { live.withLock { $0 } }
    public let metrics: GatewayMetrics
    let logger: Logger
    /// The authenticator and authorizer in effect; ``replaceAccessControl(authenticator:authorizer:)``
    /// (SIGHUP) swaps them. A nil authenticator means the built-in one, which follows the live
    /// `allowAnonymous` setting.
    private let accessControl: Mutex<AccessControl>
    private struct AccessControl: Sendable {
        var authenticator: (any Authenticator)?
        var authorizer: any Authorizer
        /// Counts replacements, so a SUBSCRIBE decided by an authorizer that was replaced meanwhile
        /// is checked again (see ``subscribe(_:session:username:version:)``).
        var generation: UInt64 = 0
    }
    /// Decides CONNECTs: the configured authenticator, or anonymous access per the live configuration.
    var authenticator: any Authenticator {
        accessControl.withLock { $0.authenticator } ?? AnonymousAuthenticator(allowAnonymous: configuration.allowAnonymous)
    }
    /// Decides topic access (ACLs). Read once per decision: a reload may replace it.
    var authorizer: any Authorizer { accessControl.withLock { $0.authorizer } }
    /// The authorizer in effect and its generation (bumped by every replacement).
    private var currentAuthorizer: (authorizer: any Authorizer, generation: UInt64) {
        accessControl.withLock { ($0.authorizer, $0.generation) }
    }
    /// The configuration behind ``configuration``; short critical sections, never held while calling out.
    private let live: Mutex<BrokerConfiguration>
    /// Counts changes of the configuration and of the access control, bumped after each is stored, so
    /// that a connection can keep copies of both and read them again only when this moved
    /// (``ClientConnection``): per PUBLISH, the locks of ``configuration`` and ``authorizer`` were
    /// contended by every event loop thread (perf, 1,000 publishers: `Mutex._lockSlow` 5.7 % of the
    /// gateway's CPU together with the routing lock).
    private let liveChanges = Atomic<UInt64>(0)
    /// What ``overflow(throttle:)`` needs per message, packed so that it is read without a lock:
    /// ``OverflowLimits``.
    private let overflowLimits: Atomic<UInt64>
    /// Mirrors `State.draining`, read per PUBLISH.
    private let draining = Atomic<Bool>(false)
    let budget: QueueBudget
    /// Sessions holding publishers back (back-pressure), for ``enforceSlowConsumerTimeout()``.
    let congestion = CongestedSessions()
    /// Bounds the log lines of per-connection errors (floods of bad packets or refused CONNECTs).
    public let logLimiter = LogRateLimiter()
    /// Per-address connection and CONNECT-rate limits.
    let addressLimits = AddressLimits()
    let retained = RetainedStore()
    /// The telemetry ingest queue, when storage is configured.
    public let ingest: IngestQueue?
    /// Where persistent sessions and retained messages are mirrored, when storage is configured.
    public let journal: StateJournal?
    /// The busiest topics for the admin dashboard; counts only while a dashboard is open.
    public let topicRates = TopicRates()
    /// Live copies of routed messages for the admin dashboard's watch box; idle while nobody watches.
    public let topicWatch = TopicWatch()
    private let state: Mutex<State>
    private let clock = ContinuousClock()

    private struct State: Sendable {
        var sessions: [String: Session] = [:]
        var index = SubscriptionIndex()
        var nextOwnerID: UInt64 = 1
        var connections: [GatewayMetrics.Transport: Int] = [:]
        var draining = false
        /// MQTT 5 Will messages waiting for their Will Delay Interval, by client id.
        var pendingWills: [String: (message: Message, due: ContinuousClock.Instant)] = [:]
        /// Sessions that went offline (their connection released them, or they were restored from the
        /// store), each with a stamp of that moment: what ``expireSessions()`` looks at, instead of every
        /// session under this lock each second. An entry may be stale (the session reconnected); the
        /// expiry pass drops those.
        var offline: [String: (session: Session, stamp: UInt64)] = [:]
        var nextOfflineStamp: UInt64 = 0

        /// Records that `session` went offline now, with a new stamp.
        mutating func markOffline(_ session: Session) {
            nextOfflineStamp &+= 1
            offline[session.clientID] = (session, nextOfflineStamp)
        }

        /// Forgets `session`'s offline entry (it is discarded or replaced).
        mutating func forgetOffline(_ session: Session) {
            if offline[session.clientID]?.session === session { offline[session.clientID] = nil }
        }
    }

    /// - Parameters:
    ///   - configuration: limits and switches.
    ///   - authenticator: decides CONNECTs; defaults to anonymous access per `configuration.allowAnonymous`.
    ///   - authorizer: decides topic access (ACLs); defaults to allowing everything.
    ///   - metrics: where counters go.
    ///   - logger: the gateway's logger.
    public init(
        configuration: BrokerConfiguration,
        authenticator: (any Authenticator)? = nil,
        authorizer: any Authorizer = AllowAllAuthorizer(),
        metrics: GatewayMetrics = GatewayMetrics(),
        ingest: IngestQueue? = nil,
        journal: StateJournal? = nil,
        logger: Logger
    ) {
        self.ingest = ingest
        self.journal = journal
        self.live = Mutex(configuration)
        self.overflowLimits = Atomic(OverflowLimits(configuration).packed)
        self.accessControl = Mutex(AccessControl(authenticator: authenticator, authorizer: authorizer))
        self.metrics = metrics
        self.logger = logger
        self.budget = QueueBudget(limit: configuration.globalMaxQueuedBytes)
        self.state = Mutex(State())
    }

    var now: ContinuousClock.Instant { clock.now }

    // MARK: Connections

    /// Counts a new network connection. Returns false when `maxConnections` is reached or the gateway is
    /// draining: the transport then closes the socket at once.
    public func admitConnection(transport: GatewayMetrics.Transport) -> Bool {
        let current = state.withLock { state -> Int? in
            let total = state.connections.values.reduce(0, +)
            guard !state.draining, total < configuration.maxConnections else { return nil }
            state.connections[transport, default: 0] += 1
            return state.connections[transport]!
        }
        guard let current else { return false }
        metrics.connectionOpened(transport, current: current)
        return true
    }

    /// Counts a connection from `address` (a peer address as NIO prints it) against
    /// `limits.max_connections_per_address`. Returns false when the address already holds that many: the
    /// connection is then refused at its CONNECT (``ClientConnection/overAddressLimit``). A connection
    /// counted here must be given back with ``releaseAddress(_:)``.
    public func admitAddress(_ address: String) -> Bool {
        addressLimits.open(host: PeerAddress.host(of: address), limit: configuration.maxConnectionsPerAddress)
    }

    /// Gives back what ``admitAddress(_:)`` counted.
    public func releaseAddress(_ address: String) {
        addressLimits.closed(host: PeerAddress.host(of: address))
    }

    /// Takes a CONNECT token of `address` (`limits.connect_rate_per_address`); false: refuse with 0x9F.
    func takeConnectToken(address: String) -> Bool {
        let configuration = self.configuration
        return addressLimits.takeConnectToken(
            host: PeerAddress.host(of: address),
            rate: configuration.connectRatePerAddress,
            burst: configuration.connectBurstPerAddress,
            now: now
        )
    }

    /// Forgets refilled CONNECT buckets. Called by housekeeping every second.
    public func pruneAddressLimits() {
        let configuration = self.configuration
        addressLimits.prune(now: now, rate: configuration.connectRatePerAddress, burst: configuration.connectBurstPerAddress)
    }

    /// Counts a network connection that ended (one admitted by ``admitConnection(transport:)``).
    public func releaseConnection(transport: GatewayMetrics.Transport) {
        let current = state.withLock { state -> Int in
            state.connections[transport, default: 1] -= 1
            return state.connections[transport]!
        }
        metrics.connectionClosed(transport, current: current)
    }

    /// The number of open network connections.
    public var connectionCount: Int { state.withLock { $0.connections.values.reduce(0, +) } }

    /// The number of clients whose CONNECT was accepted and that are still connected.
    public var connectedClientCount: Int {
        let sessions = state.withLock { Array($0.sessions.values) }
        return sessions.reduce(0) { $0 + ($1.isConnected ? 1 : 0) }
    }

    /// Every session, connected or not (internal ones included), in no particular order.
    var allSessions: [Session] { state.withLock { Array($0.sessions.values) } }

    /// The number of sessions, connected or not.
    public var sessionCount: Int { state.withLock { $0.sessions.count } }

    /// The session of `clientID`, if any.
    public func session(clientID: String) -> Session? { state.withLock { $0.sessions[clientID] } }

    /// What ``openSession(clientID:username:cleanStart:persistent:expiryInterval:clientReceiveMaximum:handle:)`` decided.
    struct OpenedSession {
        var session: Session
        var owner: UInt64
        var sessionPresent: Bool
    }

    /// Opens (or resumes) the session of an authenticated client and makes `handle` its owner. A
    /// connection already owning the session is told to close (session takeover, MQTT-3.1.4-2).
    /// `username` is the identity it authenticated as; the session keeps it for ACL re-checks.
    func openSession(
        clientID: String,
        username: String?,
        cleanStart: Bool,
        persistent: Bool,
        expiryInterval: Double?,
        clientReceiveMaximum: Int,
        handle: any ConnectionHandle,
        connectionInfo: ConnectionInfo? = nil
    ) -> OpenedSession? {
        let now = self.now
        let limits = Session.Limits(
            maxInflight: configuration.maxInflight,
            maxQueuedMessages: configuration.maxQueuedMessages,
            maxQueuedBytes: configuration.maxQueuedBytes
        )
        let result = state.withLock { state -> (OpenedSession, Session?)? in
            guard !state.draining else { return nil }
            // A reconnect before the Will Delay Interval passed cancels the Will (MQTT-3.1.3-9).
            state.pendingWills[clientID] = nil
            let owner = state.nextOwnerID
            state.nextOwnerID += 1
            var discarded: Session?
            if let existing = state.sessions[clientID] {
                // A clean session's state is never reused (MQTT-3.1.2-6), even by a takeover that asks
                // for a persistent one.
                if cleanStart || !existing.isPersistent || existing.isExpired(now: now) {
                    // Its rows go before the new session's are written (same client id).
                    existing.retire()
                    Self.removeSubscriptions(of: existing, from: &state.index)
                    state.sessions[clientID] = nil
                    state.forgetOffline(existing)
                    discarded = existing
                } else {
                    return (OpenedSession(session: existing, owner: owner, sessionPresent: true), nil)
                }
            }
            let session = Session(
                clientID: clientID,
                persistent: persistent,
                expiryInterval: expiryInterval,
                limits: limits,
                budget: budget,
                metrics: metrics,
                journal: journal,
                congestion: congestion
            )
            state.sessions[clientID] = session
            return (OpenedSession(session: session, owner: owner, sessionPresent: false), discarded)
        }
        guard let (opened, discarded) = result else { return nil }
        if let discarded {
            // The old session's connection (if any) is taken over; its queue goes with it.
            discarded.handle?.close(reason: .sessionTakenOver)
            redistribute(discarded.takeAllQueued(), from: discarded)
        }
        let previous = opened.session.attach(
            owner: opened.owner,
            handle: handle,
            username: username,
            persistent: persistent,
            expiryInterval: expiryInterval,
            clientReceiveMaximum: clientReceiveMaximum,
            connectionInfo: connectionInfo
        )
        if let previous {
            logger.debug("session taken over", metadata: ["mqtt.client.id": "\(clientID)"])
            previous.close(reason: .sessionTakenOver)
        }
        if opened.sessionPresent {
            // A resumed session now acts for this connection's username, which may not be the one its
            // subscriptions were granted to (or, for a session stored before migration v4, unknown).
            revokeSubscriptionsNotAllowed(of: opened.session)
        }
        metrics.sessions(sessionCount)
        return opened
    }

    /// Ends connection `owner`'s ownership of `session`. A non-persistent session is discarded.
    func closeSession(_ session: Session, owner: UInt64) {
        guard session.detach(owner: owner, now: now) else { return }
        if session.isPersistent {
            noteOffline(session)
        } else {
            discard(session)
        }
    }

    /// Records that `session` went offline, for ``expireSessions()``.
    func noteOffline(_ session: Session) {
        state.withLock { state in
            guard state.sessions[session.clientID] === session else { return }
            state.markOffline(session)
        }
    }

    private func discard(_ session: Session) {
        let removed = state.withLock { state -> Bool in
            guard state.sessions[session.clientID] === session else { return false }
            session.retire()
            state.sessions[session.clientID] = nil
            state.forgetOffline(session)
            Self.removeSubscriptions(of: session, from: &state.index)
            return true
        }
        let dropped = redistribute(session.takeAllQueued(), from: session)
        if removed {
            metrics.sessions(sessionCount)
        }
        if dropped > 0 && session.isPersistent {
            metrics.messageDropped(.sessionExpired, count: dropped)
        }
    }

    /// Hands the shared-subscription deliveries of an ending session to other members of their groups
    /// (MQTT 5 section 4.8.2); everything else ends with the session. Returns how many were not handed on.
    @discardableResult
    func redistribute(_ messages: [QueuedMessage], from ending: Session) -> Int {
        var dropped = 0
        for var queued in messages {
            guard let key = queued.sharedGroup else {
                dropped += 1
                continue
            }
            let size = queued.byteCount
            let authorizer = self.authorizer
            let topic = queued.message.topic
            let member = state.withLock { state in
                state.index.pickSharedMember(group: key.group, filter: key.filter, excluding: ending.clientID) { group in
                    Self.pickMember(of: &group, size: size) { Self.mayRead(topic, $0, authorizer) }
                }
            }
            guard let member else {
                dropped += 1
                continue
            }
            queued.qos = min(queued.message.qos, member.options.qos)
            queued.subscriptionIdentifiers = member.subscriptionIdentifier.map { [$0] } ?? []
            logger.debug(
                "handing a shared-subscription message to another member",
                metadata: ["mqtt.client.id": "\(member.session.clientID)", "iotgw.share.group": "\(key.group)"]
            )
            deliver(queued, to: member.session)
        }
        return dropped
    }

    private static func removeSubscriptions(of session: Session, from index: inout SubscriptionIndex) {
        for (_, subscription) in session.subscriptions {
            index.remove(filter: subscription.options.topicFilter, group: subscription.group, clientID: session.clientID)
        }
    }

    /// Removes offline sessions whose expiry has passed. Returns how many were removed.
    @discardableResult
    public func expireSessions() -> Int {
        let now = self.now
        // Only sessions that went offline are looked at, and outside the routing lock: checking every
        // session under it stalled every PUBLISH once a second for as long as that took.
        let candidates = state.withLock { state in Array(state.offline.values) }
        var expired: [Session] = []
        var reconnected: [(session: Session, stamp: UInt64)] = []
        for candidate in candidates {
            if candidate.session.isExpired(now: now) {
                expired.append(candidate.session)
            } else if candidate.session.isConnected {
                reconnected.append(candidate)
            }
        }
        if !reconnected.isEmpty {
            state.withLock { state in
                // Not an entry made since (the session went offline again meanwhile).
                for entry in reconnected where state.offline[entry.session.clientID]?.stamp == entry.stamp {
                    state.offline[entry.session.clientID] = nil
                }
            }
        }
        for session in expired {
            logger.debug("session expired", metadata: ["mqtt.client.id": "\(session.clientID)"])
            discard(session)
        }
        return expired.count
    }

    // MARK: Wills

    /// Publishes `message` (a Will) after `delay` seconds, or when the session ends if that is sooner,
    /// unless the client reconnects first. A delay of 0 publishes now.
    func scheduleWill(_ message: Message, clientID: String, delay: Double, sessionExpiry: Double?) {
        let wait = min(delay, sessionExpiry ?? .infinity)
        guard wait > 0 else {
            publish(message)
            return
        }
        let due = now.advanced(by: .seconds(wait))
        state.withLock { state in
            // Taken over: a connection owns the session again, so the Will is not sent.
            if let session = state.sessions[clientID], session.isConnected { return }
            state.pendingWills[clientID] = (message, due)
        }
    }

    /// Publishes the delayed Wills whose time has come. Called by housekeeping every second.
    @discardableResult
    public func publishDueWills() -> Int {
        let now = self.now
        let due = state.withLock { state -> [Message] in
            let ready = state.pendingWills.filter { $0.value.due <= now }
            for key in ready.keys { state.pendingWills[key] = nil }
            return ready.values.map(\.message)
        }
        for message in due { publish(message) }
        return due.count
    }

    // MARK: Routing

    /// Routes a published message to every matching subscription and applies it to the retained store.
    /// Returns the number of subscribers it was queued for.
    @discardableResult
    public func publish(_ message: Message) -> Int {
        publish(message, onPersisted: nil)
    }

    /// Routes `message` like ``publish(_:)`` and calls `whenPersisted` once every copy stored for a
    /// persistent session (and the retained change) has committed to the session store — at once when
    /// nothing was stored or storage is off. For callers that acknowledge a message elsewhere (the
    /// bridge acknowledging upstream) only once the gateway cannot lose it.
    @discardableResult
    public func publish(_ message: Message, whenPersisted: @escaping @Sendable () -> Void) -> Int {
        let gate = CommitGate(onOpen: whenPersisted)
        let count = publish(message, onPersisted: gate)
        gate.release()
        return count
    }

    /// Routes `message`; every copy stored for a persistent session (and the retained change) takes a
    /// hold on `gate`, released when it has committed.
    /// - Parameters:
    ///   - throttle: the publisher's ``ReadThrottle``, held back by subscribers whose queues are full
    ///     (`limits.slow_consumer: backpressure`); nil for the gateway's own messages.
    ///   - route: the publisher's last route, reused when `message` takes it again and kept otherwise
    ///     (``RouteCache``); nil to match every time.
    @discardableResult
    func publish(_ message: Message, onPersisted gate: CommitGate?, throttle: ReadThrottle? = nil, route: RouteCache? = nil) -> Int {
        // The dashboard's taps: each one relaxed atomic load while no dashboard is open.
        topicRates.record(message.topic)
        topicWatch.offer(message)
        if message.retain && configuration.retainAvailable {
            // `$SYS/...` is the gateway's own, republished every interval: not worth a write.
            let journal = message.topic.hasPrefix("$SYS/") ? nil : self.journal
            metrics.retained(retained.apply(message, journal: journal, onCommit: journal == nil ? nil : gate?.hold()))
        }
        // Read before the access control is (in `route(_:...)`): a replacement racing with this bumps it
        // afterwards, so a route worked out with a stale authorizer is not reused.
        let liveGeneration = route == nil ? 0 : self.liveGeneration
        let (targets, withheld) = state.withLock { state in
            if let route,
                route.holds(topic: message.topic, indexGeneration: state.index.generation, liveGeneration: liveGeneration)
            {
                return (route.targets, route.withheld)
            }
            let (targets, withheld, keepable) = self.route(message, index: &state.index)
            route?.keep(
                topic: message.topic,
                targets: targets,
                withheld: withheld,
                keepable: keepable,
                indexGeneration: state.index.generation,
                liveGeneration: liveGeneration
            )
            return (targets, withheld)
        }
        if withheld > 0 { metrics.messageDropped(.aclFiltered, count: withheld) }
        let overflow = self.overflow(throttle: throttle)
        func deliverToTargets(_ message: Message) {
            for target in targets {
                deliver(
                    QueuedMessage(
                        message: message,
                        qos: min(message.qos, target.subscriptionQoS),
                        retain: target.retainAsPublished && message.retain,
                        subscriptionIdentifiers: target.identifiers,
                        sharedGroup: target.sharedGroup
                    ),
                    to: target.session,
                    onPersisted: gate,
                    overflow: overflow
                )
            }
        }
        if targets.count > 1 {
            // Encoded once per wire form for all of them (SharedPublishEncoding).
            var shared = message
            shared.sharedEncoding = SharedPublishEncoding()
            deliverToTargets(shared)
        } else {
            deliverToTargets(message)
        }
        return targets.count
    }

    /// The subscribers `message` goes to, one target per client however many of its subscriptions match;
    /// how many matching subscriptions the ACL read check withheld it from; and whether the result may be
    /// reused for the next message on the same topic (not when a shared group chose a member). Called
    /// under the routing lock.
    private func route(
        _ message: Message,
        index: inout SubscriptionIndex
    ) -> (targets: [RouteTarget], withheld: Int, keepable: Bool) {
        // Usually one subscriber or a few: kept in order in an array (no hashing, one allocation at
        // most), deduplicated by client id with a look along it, or through an index once it is long.
        var targets: [RouteTarget] = []
        var positions: [String: Int]?
        func position(of id: String) -> Int? {
            if let positions { return positions[id] }
            return targets.firstIndex { $0.session.clientID == id }
        }
        let size = message.queuedByteCount
        // Read once, and only when a subscription that a deny rule overlaps matches (ACL read checks).
        var readChecks: (any Authorizer)?
        var withheld = 0
        var keepable = true
        func readable(_ entry: SubscriptionEntry) -> Bool {
            guard entry.filtered else { return true }
            let authorizer = readChecks ?? self.authorizer
            readChecks = authorizer
            return Self.mayRead(message.topic, entry, authorizer)
        }
        index.forEachMatch(topic: message.topic) { entry in
            if entry.options.noLocal && entry.session.clientID == message.publisherClientID { return }
            guard readable(entry) else {
                withheld += 1
                return
            }
            let qos = entry.options.qos
            let id = entry.session.clientID
            if let index = position(of: id) {
                // Overlapping subscriptions: deliver once, at the highest QoS (MQTT-3.3.5-1).
                targets[index].subscriptionQoS = max(targets[index].subscriptionQoS, qos)
                targets[index].retainAsPublished = targets[index].retainAsPublished || entry.options.retainAsPublished
                if let sid = entry.subscriptionIdentifier { targets[index].identifiers.append(sid) }
            } else {
                targets.append(
                    RouteTarget(
                        session: entry.session,
                        subscriptionQoS: qos,
                        retainAsPublished: entry.options.retainAsPublished,
                        identifiers: entry.subscriptionIdentifier.map { [$0] } ?? [],
                        sharedGroup: entry.sharedGroup
                    )
                )
                if positions != nil {
                    positions?[id] = targets.count - 1
                } else if targets.count == 16 {
                    positions = Dictionary(uniqueKeysWithValues: targets.enumerated().map { ($1.session.clientID, $0) })
                }
            }
        } pickShared: { group in
            // A member is picked per message: this route is not reused.
            keepable = false
            // Only members that may read the message are candidates (ACL read checks).
            return Self.pickMember(of: &group, size: size, readable: readable)
        }
        return (targets, withheld, keepable)
    }

    /// Chooses the next member of a shared group in round-robin order among those that may read the
    /// message, skipping members that are offline or whose queue is full; if all are, the next readable
    /// one in turn gets it (and its policy applies). Nil when no member may read it.
    private static func pickMember(
        of group: inout SubscriptionIndex.SharedGroup,
        size: Int,
        readable: (SubscriptionEntry) -> Bool
    ) -> SubscriptionEntry? {
        guard !group.order.isEmpty else { return nil }
        let count = group.order.count
        var fallback: Int?
        for step in 0..<count {
            let index = (group.cursor + step) % count
            guard let entry = group.members[group.order[index]], readable(entry) else { continue }
            if entry.session.hasRoom(for: size) {
                group.cursor = (index + 1) % count
                return entry
            }
            if fallback == nil { fallback = index }
        }
        guard let fallback else { return nil }
        group.cursor = (fallback + 1) % count
        return group.members[group.order[fallback]]
    }

    private func deliver(_ queued: consuming QueuedMessage, to session: Session, onPersisted gate: CommitGate? = nil, overflow: Session.Overflow? = nil) {
        let qos = queued.qos
        let (result, startedDropping) = session.enqueue(consume queued, onPersisted: gate, overflow: overflow ?? self.overflow(throttle: nil))
        switch result {
        case .queued, .notQueuedOffline:
            break
        case .dropped(let reason):
            if startedDropping {
                logger.notice(
                    "outbound queue full, dropping messages",
                    metadata: ["mqtt.client.id": "\(session.clientID)", "iotgw.drop.reason": "\(reason.rawValue)"]
                )
            }
        case .slowConsumer:
            logger.notice(
                "outbound queue full with QoS \(qos.rawValue) messages, disconnecting slow consumer",
                metadata: ["mqtt.client.id": "\(session.clientID)"]
            )
            session.handle?.close(reason: .quotaExceeded)
        }
    }

    /// The overflow rules in effect, for a message from the publisher behind `throttle`. Without one (the
    /// gateway's own deliveries: Wills, retained messages on subscribe, shared-group hand-overs) there is
    /// nobody to hold back, so a QoS 1/2 message that does not fit disconnects the subscriber unless
    /// `limits.slow_consumer` is `drop`.
    private func overflow(throttle: ReadThrottle?) -> Session.Overflow {
        let limits = OverflowLimits(packed: overflowLimits.load(ordering: .relaxed))
        return Session.Overflow(
            policy: limits.policy,
            qos0WhenFull: limits.qos0WhenFull,
            timeout: .milliseconds(limits.timeoutMilliseconds),
            throttle: throttle
        )
    }

    /// `limits.slow_consumer`, `limits.qos0_when_full` and `limits.slow_consumer_timeout` in one word.
    private struct OverflowLimits {
        var policy: SlowConsumerPolicy
        var qos0WhenFull: QoS0WhenFullPolicy
        var timeoutMilliseconds: Int64

        init(_ configuration: BrokerConfiguration) {
            policy = configuration.slowConsumer
            qos0WhenFull = configuration.qos0WhenFull
            timeoutMilliseconds = Int64((configuration.slowConsumerTimeout * 1000).rounded())
        }

        init(packed: UInt64) {
            switch packed & 0x3 {
            case 0: policy = .backpressure
            case 1: policy = .disconnect
            default: policy = .drop
            }
            qos0WhenFull = packed >> 2 & 0x1 == 0 ? .drop : .backpressure
            timeoutMilliseconds = Int64(packed >> 3)
        }

        var packed: UInt64 {
            let policyBits: UInt64
            switch policy {
            case .backpressure: policyBits = 0
            case .disconnect: policyBits = 1
            case .drop: policyBits = 2
            }
            let qos0Bit: UInt64 = qos0WhenFull == .drop ? 0 : 1
            return policyBits | qos0Bit << 2 | UInt64(max(0, timeoutMilliseconds)) << 3
        }
    }

    /// Whether `entry`'s subscriber may read a message on `topic`: always, unless its subscription is
    /// one a rule decides only in part (``SubscriptionEntry/filtered``); then the ACL says.
    private static func mayRead(_ topic: String, _ entry: SubscriptionEntry, _ authorizer: any Authorizer) -> Bool {
        !entry.filtered
            || authorizer.isAllowed(.subscribe, topic: topic, clientID: entry.session.clientID, username: entry.session.username)
    }

    /// Applies `limits.slow_consumer_timeout`: a subscriber whose full queue has held its publishers
    /// back for longer is disconnected (0x97); its session and queue stay, and the publishers read
    /// again as soon as its connection is gone. Called by housekeeping every second (a message routed
    /// to such a subscriber applies the timeout at once). Returns how many were disconnected.
    @discardableResult
    public func enforceSlowConsumerTimeout() -> Int {
        let timeout = Duration.seconds(configuration.slowConsumerTimeout)
        let now = self.now
        var disconnected = 0
        for session in congestion.all where session.isCongested(longerThan: timeout, now: now) {
            guard let handle = session.handle else { continue }
            logger.notice(
                "outbound queue full for longer than limits.slow_consumer_timeout, disconnecting slow consumer",
                metadata: ["mqtt.client.id": "\(session.clientID)", "iotgw.publishers.held": "\(session.heldBackPublishers)"]
            )
            handle.close(reason: .quotaExceeded)
            disconnected += 1
        }
        return disconnected
    }

    /// Logs one per-connection error through the flood limiter: `line` runs for the first few of its kind
    /// per interval; the rest are summarised later (``flushLogSummaries()``).
    public func logLimited(_ kind: LogRateLimiter.Kind, address: String?, _ line: () -> Void) {
        let (log, summary) = logLimiter.admit(kind, address: address)
        if let summary { LogRateLimiter.log(summary, to: logger) }
        if log { line() }
    }

    /// Logs the summaries of flood-limited log windows that ended. Called by housekeeping every second.
    public func flushLogSummaries() {
        for summary in logLimiter.flush() { LogRateLimiter.log(summary, to: logger) }
    }

    /// Subscribers whose full queues hold publishers back now.
    public var congestedSessionCount: Int { congestion.count }

    // MARK: Subscriptions

    /// A subscription request that passed validation, to be applied by ``subscribe(_:to:)``.
    struct SubscribeResult {
        var reasonCodes: [MQTTReasonCode]
        /// Retained messages to deliver once SUBACK has been sent.
        var retained: [QueuedMessage]
    }

    /// Applies a SUBSCRIBE for `session`.
    func subscribe(
        _ packet: MQTTSubscribePacket,
        session: Session,
        username: String?,
        version: MQTTProtocolVersion
    ) -> SubscribeResult {
        var codes: [MQTTReasonCode] = []
        var retainedMessages: [QueuedMessage] = []
        let now = self.now
        let identifier = packet.properties.subscriptionIdentifiers.first
        let (authorizer, generation) = currentAuthorizer
        defer {
            // A reload that replaced the authorizer while this SUBSCRIBE was being applied may have
            // re-checked the session before these subscriptions existed: check them against it now.
            if currentAuthorizer.generation != generation { revokeSubscriptionsNotAllowed(of: session) }
        }
        for var request in packet.subscriptions {
            let key = request.topicFilter
            var group: String?
            switch MQTTTopic.parseShared(request.topicFilter) {
            case .shared(let name, let inner)?:
                group = name
                request.topicFilter = inner
            case .invalid?:
                codes.append(version == .v5 ? .topicFilterInvalid : .unspecifiedError)
                continue
            case nil:
                guard MQTTTopic.isValidFilter(request.topicFilter) else {
                    codes.append(version == .v5 ? .topicFilterInvalid : .unspecifiedError)
                    continue
                }
            }
            // Internal clients (bridges) are configured by the operator, not subject to client ACLs.
            let grant: SubscriptionGrant =
                session.isInternal
                ? .allowed : authorizer.subscriptionGrant(filter: request.topicFilter, clientID: session.clientID, username: username)
            guard grant != .denied else {
                codes.append(version == .v5 ? .notAuthorized : .unspecifiedError)
                continue
            }
            request.qos = min(request.qos, MQTTQoS(rawValue: UInt8(configuration.maxQoS)) ?? .exactlyOnce)
            let stored = Session.StoredSubscription(options: request, subscriptionIdentifier: identifier, group: group)
            let existed = session.storeSubscription(key: key, stored)
            state.withLock { state in
                _ = state.index.insert(
                    filter: request.topicFilter,
                    group: group,
                    entry: SubscriptionEntry(
                        session: session,
                        options: request,
                        subscriptionIdentifier: identifier,
                        sharedGroup: group.map { SharedGroupKey(group: $0, filter: request.topicFilter) },
                        filtered: grant == .filtered
                    )
                )
            }
            codes.append(MQTTReasonCode(request.qos.rawValue))
            // Retained messages are not sent for shared subscriptions (MQTT 5 section 4.8.2).
            let sendRetained: Bool
            switch request.retainHandling {
            case .sendOnSubscribe: sendRetained = group == nil
            case .sendIfNewSubscription: sendRetained = group == nil && !existed
            case .doNotSend: sendRetained = false
            }
            if sendRetained && configuration.retainAvailable {
                for message in retained.matching(request.topicFilter, now: now) {
                    if grant == .filtered
                        && !authorizer.isAllowed(.subscribe, topic: message.topic, clientID: session.clientID, username: username)
                    {
                        metrics.messageDropped(.aclFiltered)
                        continue
                    }
                    retainedMessages.append(
                        QueuedMessage(
                            message: message,
                            qos: min(message.qos, request.qos),
                            retain: true,
                            subscriptionIdentifiers: identifier.map { [$0] } ?? []
                        )
                    )
                }
            }
        }
        return SubscribeResult(reasonCodes: codes, retained: retainedMessages)
    }

    /// Queues retained messages for a session after its SUBACK went out.
    func deliverRetained(_ messages: [QueuedMessage], to session: Session) {
        for message in messages { deliver(message, to: session) }
    }

    /// Applies an UNSUBSCRIBE; returns one reason code per filter.
    func unsubscribe(_ filters: [String], session: Session) -> [MQTTReasonCode] {
        filters.map { key in
            // Under the broker's lock, so a discard of the session cannot interleave: a session no longer
            // registered (discarded by a clean-start takeover, or by an ACL revocation racing one) has
            // no index entries left, and those under its client id belong to its successor.
            state.withLock { state -> MQTTReasonCode in
                guard let stored = session.removeSubscription(key: key) else { return .noSubscriptionExisted }
                if state.sessions[session.clientID] === session {
                    _ = state.index.remove(filter: stored.options.topicFilter, group: stored.group, clientID: session.clientID)
                }
                return .success
            }
        }
    }

    /// Runs `body` on the subscription index under the broker's lock.
    func withIndex(_ body: (inout SubscriptionIndex) -> Void) {
        state.withLock { body(&$0.index) }
    }

    /// The number of subscriptions in the index.
    public var subscriptionCount: Int { state.withLock { $0.index.count } }

    /// Adds a session restored from the store, with its subscriptions, to the session map and index.
    func insertRestored(_ session: Session, subscriptions: [(key: String, Session.StoredSubscription)]) {
        state.withLock { state in
            state.sessions[session.clientID] = session
            // Restored sessions are offline until their client reconnects.
            state.markOffline(session)
            for (_, subscription) in subscriptions {
                let filter = subscription.options.topicFilter
                _ = state.index.insert(
                    filter: filter,
                    group: subscription.group,
                    entry: SubscriptionEntry(
                        session: session,
                        options: subscription.options,
                        subscriptionIdentifier: subscription.subscriptionIdentifier,
                        sharedGroup: subscription.group.map { SharedGroupKey(group: $0, filter: filter) }
                    )
                )
            }
        }
    }

    // MARK: Shutdown

    /// Starts a graceful drain: no new connections or sessions are accepted and clients' new PUBLISHes
    /// are no longer taken in, while queued messages keep flowing to connected subscribers.
    public func beginDrain() {
        state.withLock { $0.draining = true }
        draining.store(true, ordering: .releasing)
    }

    /// Whether ``beginDrain()`` was called.
    public var isDraining: Bool { draining.load(ordering: .acquiring) }

    /// Changes so far of ``configuration`` and of the access control (``authorizer``): a copy of either
    /// taken when this returned a value is current for as long as it returns the same value.
    var liveGeneration: UInt64 { liveChanges.load(ordering: .acquiring) }

    /// True when every connected session has nothing queued or in flight, and nothing waits to be
    /// stored (so every acknowledgement that depends on a commit has been sent).
    public var connectedSessionsIdle: Bool {
        if let ingest, !ingest.isEmpty { return false }
        if let journal, !journal.isEmpty { return false }
        let sessions = state.withLock { Array($0.sessions.values) }
        return sessions.allSatisfy { !$0.isConnected || $0.isIdle }
    }

    /// Messages queued or in flight for connected sessions (what a forced shutdown abandons).
    public var undeliveredToConnected: Int {
        let sessions = state.withLock { Array($0.sessions.values) }
        return sessions.reduce(0) { $0 + ($1.isConnected ? $1.queuedCount : 0) }
    }

    /// Tells every connected client to go away with `reason`.
    public func closeAllConnections(reason: ServerDisconnectReason) {
        let handles = state.withLock { state in state.sessions.values.compactMap(\.handle) }
        for handle in handles { handle.close(reason: reason) }
    }

    /// Disconnects `clientID`, if connected (the admin API). Returns whether it was.
    @discardableResult
    public func disconnect(clientID: String, reason: ServerDisconnectReason = .administrativeAction) -> Bool {
        guard let handle = session(clientID: clientID)?.handle else { return false }
        handle.close(reason: reason)
        return true
    }

    // MARK: Operations (live configuration, admin API)

    /// Applies the fields of `new` that may change while clients are connected (see
    /// ``BrokerConfiguration/applyingLiveChanges(from:)``); the rest stay as they are. Connections stay
    /// up. Returns the configuration now in effect.
    @discardableResult
    public func reconfigure(_ new: BrokerConfiguration) -> BrokerConfiguration {
        live.withLock { current in
            current = current.applyingLiveChanges(from: new)
            overflowLimits.store(OverflowLimits(current).packed, ordering: .relaxed)
            liveChanges.add(1, ordering: .releasing)
            return current
        }
    }

    /// Replaces the authenticator and the authorizer (a SIGHUP reload of `auth`, and once at start-up
    /// after ``restore(from:internalClients:)``). Connected clients keep their sessions; their next
    /// PUBLISH and SUBSCRIBE, and every later CONNECT, are decided by the new ones, and every existing
    /// subscription that the new authorizer no longer allows is removed at once (see
    /// ``revokeSubscriptionsNotAllowed()``).
    /// - Parameters:
    ///   - authenticator: decides CONNECTs; nil means anonymous access per the live `allowAnonymous`.
    ///   - authorizer: decides topic access.
    /// - Returns: the number of subscriptions revoked.
    @discardableResult
    public func replaceAccessControl(authenticator: (any Authenticator)?, authorizer: any Authorizer) -> Int {
        accessControl.withLock { current in
            current = AccessControl(authenticator: authenticator, authorizer: authorizer, generation: current.generation &+ 1)
            liveChanges.add(1, ordering: .releasing)
        }
        return revokeSubscriptionsNotAllowed()
    }

    /// Open network connections by transport (transports without connections are absent).
    public var connectionsByTransport: [GatewayMetrics.Transport: Int] {
        state.withLock { $0.connections.filter { $0.value > 0 } }
    }

    /// The number of retained messages.
    public var retainedCount: Int { retained.count }

    /// One session as the admin API lists it.
    public struct ClientSummary: Sendable, Hashable {
        public var clientID: String
        /// Whether a connection owns the session now.
        public var connected: Bool
        /// Whether the session outlives its connection.
        public var persistent: Bool
        /// Subscriptions the session holds.
        public var subscriptions: Int
        /// Messages queued or in flight for the session.
        public var queuedMessages: Int
        /// The username its (last) connection authenticated as; nil when anonymous.
        public var username: String? = nil
        /// Where its (last) connection came from; nil when none connected since start-up.
        public var connection: ConnectionInfo? = nil
    }

    /// A page of sessions whose client id starts with `prefix`, in client-id order, starting after the
    /// client id `after` (a cursor: pass the last id of the previous page).
    /// - Parameters:
    ///   - prefix: the client-id prefix; empty matches every session.
    ///   - after: return only ids greater than this; nil starts at the beginning.
    ///   - limit: the most summaries returned.
    /// - Returns: the page and how many sessions match `prefix` in all.
    public func clients(prefix: String, after: String?, limit: Int) -> (page: [ClientSummary], total: Int) {
        // Only references are copied under the lock; sorting and per-session reads happen outside it.
        let matching = state.withLock { state in
            state.sessions.values.filter { prefix.isEmpty || $0.clientID.hasPrefix(prefix) }
        }
        let ordered = matching.sorted { $0.clientID < $1.clientID }
        let start = after.map { cursor in ordered.firstIndex { $0.clientID > cursor } ?? ordered.endIndex } ?? ordered.startIndex
        let page = ordered[start...].prefix(max(0, limit)).map { session in
            ClientSummary(
                clientID: session.clientID,
                connected: session.isConnected,
                persistent: session.isPersistent,
                subscriptions: session.subscriptions.count,
                queuedMessages: session.queuedCount,
                username: session.username,
                connection: session.connectionInfo
            )
        }
        return (page, ordered.count)
    }

    /// Connected network clients by protocol (``ConnectionInfo/protocolName``). Walks every session:
    /// for the dashboard, once a second while one is open.
    public var connectedClientsByProtocol: [String: Int] {
        let sessions = state.withLock { Array($0.sessions.values) }
        var counts: [String: Int] = [:]
        for session in sessions where session.isConnected {
            guard let info = session.connectionInfo, info.transport != nil else { continue }
            counts[info.protocolName, default: 0] += 1
        }
        return counts
    }

    /// Bytes and messages queued across all sessions.
    public var queuedBytes: Int { budget.usedBytes }
    public var queuedMessages: Int { budget.queuedMessages }

    /// Publishes queue levels to the metrics (called periodically).
    public func recordQueueLevels() {
        metrics.queueLevels(messages: budget.queuedMessages, bytes: budget.usedBytes)
        metrics.congestedSessions(congestion.count)
    }

    // MARK: Internal clients

    /// Registers `session` under its client id unless a session with that id exists, and returns the
    /// one now registered (see ``attachInternalClient(clientID:subscriptions:limits:)``).
    func installInternalSession(_ session: Session) -> Session {
        let installed = state.withLock { state -> Session in
            if let existing = state.sessions[session.clientID] { return existing }
            state.sessions[session.clientID] = session
            return session
        }
        metrics.sessions(sessionCount)
        return installed
    }
}

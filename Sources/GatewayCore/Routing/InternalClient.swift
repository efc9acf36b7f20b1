public import MQTTCodec
import Synchronization

/// A client of the broker that lives inside the gateway (the upstream bridge), not behind a socket.
///
/// It owns a persistent session under a client id starting with ``reservedPrefix`` (network clients
/// may not use those ids), so it gets what a connection gets: subscriptions in the index, a bounded
/// queue with the usual overflow policy, an in-flight window, redelivery of unacknowledged messages
/// after a reconnect, and No Local. The owner takes deliveries with ``nextDelivery()`` and completes
/// QoS 1/2 ones with ``acknowledge(packetID:)``; a message leaves the session only then.
///
/// While ``connect(handle:)`` is in effect the session counts as connected; between
/// ``disconnect()`` and the next connect it is an offline persistent session: QoS 1/2 messages queue
/// (up to its limits), QoS 0 messages are not kept. A full queue drops the new message and counts it
/// (`iotgw_messages_dropped_total{reason="queue_full_qos12"}`); it never disconnects anything.
public final class InternalClient: Sendable {
    /// The client-id prefix reserved for internal clients; CONNECTs using it are refused (0x85 / rc 2).
    public static let reservedPrefix = "$bridge/"

    /// One subscription of an internal client.
    public struct Subscription: Sendable, Hashable {
        /// The topic filter (no `$share/`).
        public var filter: String
        /// The maximum QoS delivered.
        public var qos: MQTTQoS
        /// Whether messages this client publishes itself are not delivered back to it (No Local).
        public var noLocal: Bool

        public init(filter: String, qos: MQTTQoS, noLocal: Bool = true) {
            self.filter = filter
            self.qos = qos
            self.noLocal = noLocal
        }
    }

    /// The bounds of the internal client's queue.
    public struct Limits: Sendable, Hashable {
        /// Messages queued or in flight. Default 10,000.
        public var maxQueuedMessages: Int
        /// Bytes queued or in flight. Default 16 MiB.
        public var maxQueuedBytes: Int
        /// Unacknowledged QoS 1/2 deliveries at once. Default 32.
        public var maxInflight: Int

        public init(maxQueuedMessages: Int = 10_000, maxQueuedBytes: Int = 16 * 1_048_576, maxInflight: Int = 32) {
            self.maxQueuedMessages = maxQueuedMessages
            self.maxQueuedBytes = maxQueuedBytes
            self.maxInflight = maxInflight
        }
    }

    public let clientID: String
    let broker: Broker
    let session: Session
    /// The current owner id while connected. Internal owners count down from the top of the range, so
    /// they never equal an id the broker hands to a network connection.
    private let ownership = Mutex<(current: UInt64?, next: UInt64)>((nil, UInt64.max))
    private let clock = ContinuousClock()

    init(clientID: String, broker: Broker, session: Session) {
        self.clientID = clientID
        self.broker = broker
        self.session = session
    }

    /// Makes `handle` the session's owner: everything in flight is delivered again first (with DUP), in
    /// order, then the queue. `handle.deliveryAvailable()` is called when a message arrives after
    /// ``nextDelivery()`` returned nil.
    public func connect(handle: any ConnectionHandle) {
        let owner = ownership.withLock { state -> UInt64 in
            let owner = state.next
            state.next -= 1
            state.current = owner
            return owner
        }
        _ = session.attach(
            owner: owner,
            handle: handle,
            username: nil,
            persistent: true,
            expiryInterval: nil,
            clientReceiveMaximum: Int(UInt16.max)
        )
    }

    /// Releases the session: it keeps its subscriptions and QoS 1/2 messages (in flight ones are sent
    /// again after the next ``connect(handle:)``).
    public func disconnect() {
        guard let owner = ownership.withLock({ state -> UInt64? in
            defer { state.current = nil }
            return state.current
        }) else { return }
        if session.detach(owner: owner, now: clock.now) { broker.noteOffline(session) }
    }

    /// The next message to forward, or nil when there is none now (or the window is full, or the
    /// client is not connected). QoS 1/2 messages carry a packet identifier to pass to
    /// ``acknowledge(packetID:)``.
    public func nextDelivery() -> MQTTPublishPacket? {
        guard let owner = ownership.withLock({ $0.current }) else { return nil }
        while true {
            switch session.nextOutbound(owner: owner, now: clock.now) {
            case .wait, .finished:
                return nil
            case .item(.pubrel(let id)):
                // Internal clients complete QoS 2 in one step, so this only follows a PUBREC recorded by
                // an earlier owner of a restored session: the message was received, finish it.
                _ = session.acknowledge(pubcomp: id)
            case .item(.publish(let publish)):
                return publish
            }
        }
    }

    /// Completes the QoS 1 or 2 delivery `packetID` (the upstream acknowledged it): the message leaves
    /// the queue. Returns whether it was in flight.
    @discardableResult
    public func acknowledge(packetID: UInt16) -> Bool {
        if session.acknowledge(puback: packetID) { return true }
        _ = session.acknowledge(pubrec: packetID)
        return session.acknowledge(pubcomp: packetID)
    }

    /// Routes `message` into the broker as published by this client (No Local keeps it from this
    /// client's own subscriptions). Returns the number of subscribers it was queued for.
    @discardableResult
    public func publish(_ message: Message) -> Int {
        var message = message
        message.publisherClientID = clientID
        return broker.publish(message)
    }

    /// Messages queued or in flight.
    public var queuedCount: Int { session.queuedCount }

    /// Whether ``connect(handle:)`` is in effect.
    public var isConnected: Bool { ownership.withLock { $0.current != nil } }
}

extension Broker {
    /// Creates (or finds, when a session of that id already exists) the persistent session of an
    /// internal client, and makes its subscriptions exactly `subscriptions` (filters no longer listed
    /// are removed). The session starts disconnected: QoS 1/2 messages queue until
    /// ``InternalClient/connect(handle:)``.
    /// - Parameters:
    ///   - clientID: must start with ``InternalClient/reservedPrefix``.
    ///   - subscriptions: the filters and their QoS.
    ///   - limits: the queue bounds of a new session (an existing one keeps its own).
    public func attachInternalClient(clientID: String, subscriptions: [InternalClient.Subscription], limits: InternalClient.Limits) -> InternalClient {
        precondition(clientID.hasPrefix(InternalClient.reservedPrefix), "internal client ids start with \(InternalClient.reservedPrefix)")
        let session = installInternalSession(
            Session(
                clientID: clientID,
                persistent: true,
                expiryInterval: nil,
                limits: Session.Limits(
                    maxInflight: limits.maxInflight,
                    maxQueuedMessages: limits.maxQueuedMessages,
                    maxQueuedBytes: limits.maxQueuedBytes
                ),
                budget: budget,
                metrics: metrics,
                // With storage on, its subscriptions and QoS 1/2 queue are journalled like any
                // persistent session's, so the store-and-forward queue survives a restart.
                journal: journal,
                dropsWhenFull: true
            )
        )
        let wanted = Set(subscriptions.map(\.filter))
        let stale = session.subscriptions.keys.filter { !wanted.contains($0) }
        if !stale.isEmpty { _ = unsubscribe(Array(stale), session: session) }
        if !subscriptions.isEmpty {
            let packet = MQTTSubscribePacket(
                packetIdentifier: 1,
                subscriptions: subscriptions.map {
                    // Retain As Published: a retained message goes upstream as retained. No retained
                    // messages at subscribe time: they were forwarded when they were published.
                    MQTTSubscription(topicFilter: $0.filter, qos: $0.qos, noLocal: $0.noLocal, retainAsPublished: true, retainHandling: .doNotSend)
                }
            )
            _ = subscribe(packet, session: session, username: nil, version: .v5)
        }
        return InternalClient(clientID: clientID, broker: self, session: session)
    }
}

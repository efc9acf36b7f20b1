import DequeModule
public import MQTTCodec
import NIOCore
import Synchronization

/// A message waiting in a session's outbound queue, with what this subscriber's subscription adds.
struct QueuedMessage: Sendable {
    var message: Message
    /// min(published QoS, subscription QoS).
    var qos: MQTTQoS
    /// The RETAIN flag this subscriber sees.
    var retain: Bool
    var subscriptionIdentifiers: [UInt32]
    /// The shared subscription (`$share/group/filter`) this delivery was chosen through, if any: when
    /// the session ends with it undelivered, another member of the group gets it (MQTT 5 section 4.8.2).
    var sharedGroup: SharedGroupKey? = nil
    var byteCount: Int { message.queuedByteCount }
}

/// Identifies one shared subscription group: its name and its (inner) topic filter.
struct SharedGroupKey: Sendable, Hashable {
    var group: String
    var filter: String
}

/// What a session's writer sends next.
public enum OutboundItem: Sendable {
    /// A PUBLISH (packet identifier assigned for QoS > 0; `dup` set when it is a redelivery).
    case publish(MQTTPublishPacket)
    /// A PUBREL for an outbound QoS 2 message whose PUBREC arrived before the connection dropped.
    case pubrel(UInt16)
}

/// The state of one MQTT session: subscriptions, the outbound queue, QoS 1/2 in-flight state in both
/// directions, and which connection (if any) currently owns it.
///
/// A session outlives its connection when the client asked for that (clean session 0, or an MQTT 5
/// Session Expiry Interval). All state is behind one `Mutex`: every operation is short and synchronous,
/// and the only suspension (the writer waiting for work) registers its continuation under the same
/// lock, so no wake-up can be lost.
public final class Session: Sendable {
    public let clientID: String
    private let limits: Limits
    private let budget: QueueBudget
    private let metrics: GatewayMetrics
    private let state: Mutex<State>
    /// When true, a QoS 1/2 message that does not fit is dropped (and counted) even while connected,
    /// instead of disconnecting the owner as a slow consumer: internal clients (the bridge) have no
    /// socket to close, and their queue is the store-and-forward buffer.
    let dropsWhenFull: Bool

    struct Limits: Sendable {
        var maxInflight: Int
        var maxQueuedMessages: Int
        var maxQueuedBytes: Int
    }

    /// A subscription as the session remembers it (to re-create, list and remove it).
    struct StoredSubscription: Sendable {
        var options: MQTTSubscription
        var subscriptionIdentifier: UInt32?
        /// The shared group when the filter was `$share/GROUP/...`; `options.topicFilter` is then the inner filter.
        var group: String?
    }

    private struct Inflight: Sendable {
        enum Phase: Sendable { case awaitingPuback, awaitingPubrec, awaitingPubcomp }
        var packetID: UInt16
        var queued: QueuedMessage
        var phase: Phase
    }

    private struct State: Sendable {
        var subscriptions: [String: StoredSubscription] = [:]
        var pending: Deque<QueuedMessage> = []
        var pendingBytes = 0
        var inflight: Deque<Inflight> = []
        var inflightBytes = 0
        /// Packet ids of in-flight messages to send again after a reconnect, in order.
        var resend: Deque<UInt16> = []
        var nextPacketID: UInt16 = 1
        /// Inbound QoS 2 packet ids received (PUBREC sent) whose PUBREL has not arrived yet.
        var inboundQoS2: Set<UInt16> = []
        /// The connection that owns the session, by id, and how to end it.
        var owner: UInt64?
        var handle: (any ConnectionHandle)?
        /// The client's Receive Maximum (MQTT 5): the in-flight window is the smaller of this and ours.
        var clientReceiveMaximum = Int(UInt16.max)
        /// Set when the owner's last poll found nothing to send: the next message queued must wake it.
        var needsWake = false
        /// Whether the session is kept after its connection ends.
        var persistent: Bool
        /// Seconds the session outlives its connection; `nil` means never expires.
        var expiryInterval: Double?
        var disconnectedAt: ContinuousClock.Instant?
        /// Whether we are in a dropping episode (log once per episode, as mosquitto does).
        var dropping = false
    }

    init(
        clientID: String,
        persistent: Bool,
        expiryInterval: Double?,
        limits: Limits,
        budget: QueueBudget,
        metrics: GatewayMetrics,
        dropsWhenFull: Bool = false
    ) {
        self.clientID = clientID
        self.dropsWhenFull = dropsWhenFull
        self.limits = limits
        self.budget = budget
        self.metrics = metrics
        self.state = Mutex(State(persistent: persistent, expiryInterval: expiryInterval))
    }

    // MARK: Ownership

    /// Makes `owner` the connection of this session and schedules redelivery of everything in flight
    /// (PUBLISH with DUP, or PUBREL), in the original order (MQTT-4.4.0-1).
    /// - Returns: the previous owner's handle, which the caller must close (session takeover).
    func attach(
        owner: UInt64,
        handle: any ConnectionHandle,
        persistent: Bool,
        expiryInterval: Double?,
        clientReceiveMaximum: Int
    ) -> (any ConnectionHandle)? {
        state.withLock { state -> (any ConnectionHandle)? in
            let previous = state.handle
            state.owner = owner
            state.handle = handle
            state.persistent = persistent
            state.expiryInterval = expiryInterval
            state.clientReceiveMaximum = clientReceiveMaximum
            state.disconnectedAt = nil
            state.resend = Deque(state.inflight.map(\.packetID))
            state.needsWake = false
            return previous
        }
    }

    /// Releases the session from `owner`. Returns false when another connection owns it by now
    /// (it was taken over), in which case nothing changes.
    func detach(owner: UInt64, now: ContinuousClock.Instant) -> Bool {
        state.withLock { state -> Bool in
            guard state.owner == owner else { return false }
            state.owner = nil
            state.handle = nil
            state.disconnectedAt = now
            state.needsWake = false
            return true
        }
    }

    /// The handle of the connection that owns the session, if any.
    var handle: (any ConnectionHandle)? { state.withLock { $0.handle } }

    /// Whether a connection owns the session.
    public var isConnected: Bool { state.withLock { $0.owner != nil } }

    var isPersistent: Bool { state.withLock { $0.persistent } }

    /// Whether an offline session has outlived its expiry interval.
    func isExpired(now: ContinuousClock.Instant) -> Bool {
        state.withLock { state in
            guard state.owner == nil, let at = state.disconnectedAt else { return false }
            guard let interval = state.expiryInterval else { return false }
            return at.advanced(by: .seconds(interval)) <= now
        }
    }

    /// Empties the queue and the in-flight window, releasing their share of the global budget, and
    /// returns what was in them (in flight first, then pending, each in order). Called when the session
    /// is discarded, so shared-subscription deliveries can go to another member.
    func takeAllQueued() -> [QueuedMessage] {
        let (bytes, messages) = state.withLock { state -> (Int, [QueuedMessage]) in
            let bytes = state.pendingBytes + state.inflightBytes
            let messages = state.inflight.map(\.queued) + Array(state.pending)
            state.pending.removeAll()
            state.inflight.removeAll()
            state.resend.removeAll()
            state.pendingBytes = 0
            state.inflightBytes = 0
            return (bytes, messages)
        }
        budget.release(bytes, count: messages.count)
        return messages
    }

    // MARK: Subscriptions

    /// Records a subscription; returns whether it already existed.
    func storeSubscription(key: String, _ subscription: StoredSubscription) -> Bool {
        state.withLock { $0.subscriptions.updateValue(subscription, forKey: key) != nil }
    }

    func removeSubscription(key: String) -> StoredSubscription? {
        state.withLock { $0.subscriptions.removeValue(forKey: key) }
    }

    /// All subscriptions, keyed by the filter as the client sent it.
    var subscriptions: [String: StoredSubscription] { state.withLock { $0.subscriptions } }

    // MARK: Inbound QoS 2

    /// Records an inbound QoS 2 PUBLISH. Returns false when the packet id is already awaiting PUBREL,
    /// i.e. this PUBLISH is a retransmission that must not be routed again (MQTT-4.3.3-2).
    func receivedQoS2(packetID: UInt16) -> Bool {
        state.withLock { $0.inboundQoS2.insert(packetID).inserted }
    }

    /// Completes an inbound QoS 2 exchange on PUBREL. Returns whether the packet id was known.
    func releasedQoS2(packetID: UInt16) -> Bool {
        state.withLock { $0.inboundQoS2.remove(packetID) != nil }
    }

    /// The number of inbound QoS 2 exchanges awaiting PUBREL.
    var inboundQoS2Count: Int { state.withLock { $0.inboundQoS2.count } }

    // MARK: Outbound queue

    /// The result of offering a message to the session's queue.
    enum EnqueueResult: Sendable, Equatable {
        case queued
        /// Dropped: a QoS 0 message with no room, or any message for an offline session with no room.
        case dropped(GatewayMetrics.DropReason)
        /// A QoS 1/2 message did not fit while a connection owns the session: that consumer is too slow.
        case slowConsumer
        /// QoS 0 messages are not kept for offline sessions.
        case notQueuedOffline
    }

    /// Queues `queued` for delivery, applying the per-session and global caps.
    ///
    /// When there is no room, the oldest pending QoS 0 messages are dropped first (counted). If that is
    /// not enough, a QoS 0 message is dropped; a QoS 1/2 message is dropped for an offline session and
    /// reported as ``EnqueueResult/slowConsumer`` for a connected one, whose caller disconnects it
    /// (its session, and everything queued in it, stays). `startedDropping` is true for the first drop
    /// of an episode, so the caller logs once per episode rather than once per message.
    func enqueue(_ queued: QueuedMessage) -> (result: EnqueueResult, startedDropping: Bool) {
        let size = queued.byteCount
        var evicted = 0
        let (result, wake, logDrop) = state.withLock { state -> (EnqueueResult, (any ConnectionHandle)?, Bool) in
            if state.owner == nil && (queued.qos == .atMostOnce || !state.persistent) {
                return (.notQueuedOffline, nil, false)
            }
            var globalFull = false
            func fits(_ state: State) -> Bool {
                state.pending.count + state.inflight.count < limits.maxQueuedMessages
                    && state.pendingBytes + state.inflightBytes + size <= limits.maxQueuedBytes
            }
            while true {
                if fits(state) {
                    if budget.tryReserve(size) { break }
                    globalFull = true
                }
                // No room: drop the oldest pending QoS 0 message, if there is one, and try again.
                guard let index = state.pending.firstIndex(where: { $0.qos == .atMostOnce }) else {
                    let reason: GatewayMetrics.DropReason =
                        globalFull ? .globalCap : (queued.qos == .atMostOnce ? .queueFullQoS0 : .queueFullQoS12)
                    let firstOfEpisode = !state.dropping
                    state.dropping = true
                    if queued.qos != .atMostOnce && state.owner != nil && !dropsWhenFull {
                        return (.slowConsumer, nil, firstOfEpisode)
                    }
                    return (.dropped(reason), nil, firstOfEpisode)
                }
                let old = state.pending.remove(at: index)
                state.pendingBytes -= old.byteCount
                // Give its bytes back to the global budget now, so the retry sees the room it made.
                budget.release(old.byteCount)
                evicted += 1
                globalFull = false
            }
            state.dropping = false
            state.pending.append(queued)
            state.pendingBytes += size
            var wake: (any ConnectionHandle)?
            if state.needsWake && Self.hasWork(state, limits: limits) {
                state.needsWake = false
                wake = state.handle
            }
            return (.queued, wake, false)
        }
        if evicted > 0 {
            metrics.messageDropped(.queueFullQoS0, count: evicted)
        }
        switch result {
        case .dropped(let reason): metrics.messageDropped(reason)
        case .slowConsumer: metrics.messageDropped(.queueFullQoS12)
        default: break
        }
        wake?.deliveryAvailable()
        return (result, logDrop)
    }

    /// Whether the queue has room for one more message of `size` bytes (used to skip full members of
    /// shared subscription groups).
    func hasRoom(for size: Int) -> Bool {
        state.withLock { state in
            state.owner != nil
                && state.pending.count + state.inflight.count < limits.maxQueuedMessages
                && state.pendingBytes + state.inflightBytes + size <= limits.maxQueuedBytes
        }
    }

    /// The number of messages queued or in flight.
    public var queuedCount: Int { state.withLock { $0.pending.count + $0.inflight.count } }

    /// True when nothing is queued or in flight: used by graceful shutdown to know a connected
    /// subscriber has received everything acknowledged on its behalf.
    var isIdle: Bool { state.withLock { $0.pending.isEmpty && $0.inflight.isEmpty } }

    /// The next item to send on connection `owner`, or `nil` when there is nothing to send now. After a
    /// `nil` the session remembers to call the owner's ``ConnectionHandle/deliveryAvailable()`` when a
    /// message is next queued, so the connection task never polls in vain.
    ///
    /// - Returns: `.finished` once `owner` no longer owns the session.
    func nextOutbound(owner: UInt64, now: ContinuousClock.Instant) -> OutboundPoll {
        poll(owner: owner, now: now)
    }

    /// What ``nextOutbound(owner:now:)`` found.
    enum OutboundPoll {
        case item(OutboundItem)
        /// Nothing to send now; the owner will be woken.
        case wait
        /// The connection no longer owns the session.
        case finished
    }

    private static func hasWork(_ state: State, limits: Limits) -> Bool {
        if !state.resend.isEmpty { return true }
        guard let first = state.pending.first else { return false }
        return first.qos == .atMostOnce || state.inflight.count < min(limits.maxInflight, state.clientReceiveMaximum)
    }

    private func poll(owner: UInt64, now: ContinuousClock.Instant) -> OutboundPoll {
        var released = 0
        var releasedCount = 0
        var expired = 0
        let result = state.withLock { state -> OutboundPoll in
            guard state.owner == owner else { return .finished }
            // Redeliveries after a reconnect come first, in their original order.
            while let id = state.resend.popFirst() {
                guard let entry = state.inflight.first(where: { $0.packetID == id }) else { continue }
                if entry.phase == .awaitingPubcomp { return .item(.pubrel(id)) }
                return .item(.publish(Self.packet(for: entry.queued, packetID: id, dup: true, now: now)))
            }
            let window = min(limits.maxInflight, state.clientReceiveMaximum)
            while let first = state.pending.first {
                // A full window needs no wake-up: the acknowledgement that frees it arrives on the
                // owner's own task, which polls again after every packet.
                if first.qos != .atMostOnce && state.inflight.count >= window { return .wait }
                let queued = state.pending.removeFirst()
                state.pendingBytes -= queued.byteCount
                if let expiresAt = queued.message.expiresAt, expiresAt <= now {
                    released += queued.byteCount
                    releasedCount += 1
                    expired += 1
                    continue
                }
                if queued.qos == .atMostOnce {
                    released += queued.byteCount
                    releasedCount += 1
                    return .item(.publish(Self.packet(for: queued, packetID: nil, dup: false, now: now)))
                }
                let id = Self.allocatePacketID(&state)
                state.inflight.append(
                    Inflight(packetID: id, queued: queued, phase: queued.qos == .atLeastOnce ? .awaitingPuback : .awaitingPubrec)
                )
                state.inflightBytes += queued.byteCount
                return .item(.publish(Self.packet(for: queued, packetID: id, dup: false, now: now)))
            }
            state.needsWake = true
            return .wait
        }
        if releasedCount > 0 { budget.release(released, count: releasedCount) }
        if expired > 0 { metrics.messageDropped(.expired, count: expired) }
        return result
    }

    private static func allocatePacketID(_ state: inout State) -> UInt16 {
        // The window is far below 65,535, so a free id is always found within a few steps.
        while true {
            let id = state.nextPacketID
            state.nextPacketID = id == UInt16.max ? 1 : id + 1
            if !state.inflight.contains(where: { $0.packetID == id }) { return id }
        }
    }

    private static func packet(for queued: QueuedMessage, packetID: UInt16?, dup: Bool, now: ContinuousClock.Instant) -> MQTTPublishPacket {
        var properties = queued.message.properties
        properties.subscriptionIdentifiers = queued.subscriptionIdentifiers
        if let expiresAt = queued.message.expiresAt {
            // Forward the remaining lifetime, not the original interval (MQTT-3.3.2-6).
            let remaining = now.duration(to: expiresAt).components.seconds
            properties.messageExpiryInterval = UInt32(clamping: max(remaining, 0))
        }
        return MQTTPublishPacket(
            topic: queued.message.topic,
            payload: queued.message.payload,
            qos: queued.qos,
            retain: queued.retain,
            dup: dup,
            packetIdentifier: packetID,
            properties: properties
        )
    }

    /// Handles PUBACK: the QoS 1 message is delivered. Returns whether the packet id was in flight.
    func acknowledge(puback packetID: UInt16) -> Bool {
        complete(packetID: packetID, phase: .awaitingPuback)
    }

    /// Handles PUBCOMP: the QoS 2 exchange is complete.
    func acknowledge(pubcomp packetID: UInt16) -> Bool {
        complete(packetID: packetID, phase: .awaitingPubcomp)
    }

    /// Handles PUBREC: the message moves to "awaiting PUBCOMP" (the caller sends PUBREL). Returns
    /// whether the packet id was awaiting PUBREC.
    func acknowledge(pubrec packetID: UInt16) -> Bool {
        state.withLock { state in
            guard let index = state.inflight.firstIndex(where: { $0.packetID == packetID && $0.phase == .awaitingPubrec }) else {
                return state.inflight.contains(where: { $0.packetID == packetID && $0.phase == .awaitingPubcomp })
            }
            state.inflight[index].phase = .awaitingPubcomp
            return true
        }
    }

    private func complete(packetID: UInt16, phase: Inflight.Phase) -> Bool {
        let bytes = state.withLock { state -> Int? in
            guard let index = state.inflight.firstIndex(where: { $0.packetID == packetID && $0.phase == phase }) else {
                return nil
            }
            let entry = state.inflight.remove(at: index)
            state.inflightBytes -= entry.queued.byteCount
            return entry.queued.byteCount
        }
        guard let bytes else { return false }
        budget.release(bytes)
        return true
    }
}

extension Session {
    /// Changes whether (and how long) the session outlives its connection (MQTT 5 DISCONNECT).
    func setExpiry(persistent: Bool, interval: Double?) {
        state.withLock { state in
            state.persistent = persistent
            state.expiryInterval = interval
        }
    }
}

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
    /// The row of this copy in the session store (its journal sequence number), when it is persisted:
    /// a QoS 1/2 copy queued for a persistent session while storage is on.
    var seq: Int64? = nil
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
    /// Where changes are mirrored for recovery (nil: storage off). Used only while `State.journaling`.
    private let journal: StateJournal?
    /// Where the session registers while its publishers are held back (nil: no back-pressure, as for
    /// sessions made directly in tests).
    private let congestion: CongestedSessions?
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

    fileprivate struct Inflight: Sendable {
        enum Phase: Sendable { case awaitingPuback, awaitingPubrec, awaitingPubcomp }
        var packetID: UInt16
        var queued: QueuedMessage
        var phase: Phase
    }

    private struct State: Sendable {
        var subscriptions: [String: StoredSubscription] = [:]
        var pending: Deque<QueuedMessage> = []
        var pendingBytes = 0
        /// How many of `pending` are QoS 0: a full queue looks for one to evict only when there is one
        /// (the search copies each message it passes; on a full queue of QoS 1 messages that was most of
        /// the CPU of routing to it).
        var pendingQoS0 = 0
        /// Changed only through ``appendInflight(_:)``, ``removeInflight(at:)`` and ``removeAllInflight()``,
        /// which keep ``inflightIDs`` in step.
        private(set) var inflight: Deque<Inflight> = []
        /// The packet ids of ``inflight``. Reading an entry of a `Deque` copies it (its topic, payload and
        /// properties retained and released), so asking whether an id is taken — every packet id allocated
        /// asks it — is answered here instead of by looking at every entry.
        private(set) var inflightIDs: Set<UInt16> = []
        var inflightBytes = 0

        /// The QoS of the first pending message, read in place (`pending.first` copies the whole message:
        /// its topic, payload and properties retained and released).
        var firstPendingQoS: MQTTQoS? {
            pending.isEmpty ? nil : pending[0].qos
        }

        mutating func appendInflight(_ entry: Inflight) {
            inflight.append(entry)
            inflightIDs.insert(entry.packetID)
        }

        mutating func removeInflight(at index: Int) -> Inflight {
            let entry = inflight.remove(at: index)
            inflightIDs.remove(entry.packetID)
            return entry
        }

        mutating func removeAllInflight() {
            inflight.removeAll()
            inflightIDs = []
        }

        mutating func setInflightPhase(at index: Int, _ phase: Inflight.Phase) {
            inflight[index].phase = phase
        }

        /// The index of the in-flight entry with `packetID` (in `phase`, if given). Acknowledgements come
        /// mostly in order, so the look along the queue usually stops at its first entry.
        func inflightIndex(of packetID: UInt16, phase: Inflight.Phase? = nil) -> Int? {
            guard inflightIDs.contains(packetID) else { return nil }
            var index = 0
            while index < inflight.count {
                let entry = inflight[index]  // one copy, not one per field read
                if entry.packetID == packetID, phase == nil || entry.phase == phase { return index }
                index += 1
            }
            return nil
        }
        /// Packet ids of in-flight messages to send again after a reconnect, in order.
        var resend: Deque<UInt16> = []
        var nextPacketID: UInt16 = 1
        /// Inbound QoS 2 packet ids received (PUBREC sent) whose PUBREL has not arrived yet.
        var inboundQoS2: Set<UInt16> = []
        /// Those of them with a row in the store (journalled, or restored at start-up).
        var storedInboundQoS2: Set<UInt16> = []
        /// Those restored at start-up and not seen since: their PUBREL may have been lost with the
        /// process after PUBCOMP went out, so the client may already reuse the id (see ``receivedQoS2``).
        var restoredInboundQoS2: Set<UInt16> = []
        /// The connection that owns the session, by id, and how to end it.
        var owner: UInt64?
        var handle: (any ConnectionHandle)?
        /// The client's Receive Maximum (MQTT 5): the in-flight window is the smaller of this and ours.
        var clientReceiveMaximum = Int(UInt16.max)
        /// Set when the owner's last poll found nothing to send: the next message queued must wake it.
        var needsWake = false
        /// Whether the session is kept after its connection ends.
        var persistent: Bool
        /// The username its (last) connection authenticated as: ACL rules are re-checked against it when
        /// the authorizer changes, also while the session is offline.
        var username: String?
        /// Where the (last) connection came from, for the admin API; nil for sessions never connected.
        var connectionInfo: ConnectionInfo?
        /// Seconds the session outlives its connection; `nil` means never expires.
        var expiryInterval: Double?
        var disconnectedAt: ContinuousClock.Instant?
        /// Whether we are in a dropping episode (log once per episode, as mosquitto does).
        var dropping = false
        /// Publishers whose reading is paused because this queue went over its cap (back-pressure), and
        /// since when the queue has been over it. Cleared when it drains to half its cap or the owner goes.
        var throttles: [ReadThrottle] = []
        var congestedSince: ContinuousClock.Instant?
        /// Whether changes go to the journal: the session is persistent, storage is on, and the session
        /// was not retired. Journal operations are appended under this lock, so the store sees each
        /// session's changes in the order they happened.
        var journaling = false
    }

    init(
        clientID: String,
        persistent: Bool,
        expiryInterval: Double?,
        limits: Limits,
        budget: QueueBudget,
        metrics: GatewayMetrics,
        journal: StateJournal? = nil,
        dropsWhenFull: Bool = false,
        username: String? = nil,
        congestion: CongestedSessions? = nil
    ) {
        self.clientID = clientID
        self.congestion = congestion
        self.dropsWhenFull = dropsWhenFull
        self.limits = limits
        self.budget = budget
        self.metrics = metrics
        self.journal = journal
        var initial = State(persistent: persistent, username: username, expiryInterval: expiryInterval)
        initial.journaling = persistent && journal != nil
        self.state = Mutex(initial)
    }

    // MARK: Ownership

    /// Makes `owner` the connection of this session and schedules redelivery of everything in flight
    /// (PUBLISH with DUP, or PUBREL), in the original order (MQTT-4.4.0-1).
    /// - Returns: the previous owner's handle, which the caller must close (session takeover).
    func attach(
        owner: UInt64,
        handle: any ConnectionHandle,
        username: String?,
        persistent: Bool,
        expiryInterval: Double?,
        clientReceiveMaximum: Int,
        connectionInfo: ConnectionInfo? = nil
    ) -> (any ConnectionHandle)? {
        state.withLock { state -> (any ConnectionHandle)? in
            let previous = state.handle
            state.owner = owner
            state.handle = handle
            state.username = username
            state.connectionInfo = connectionInfo
            state.persistent = persistent
            state.expiryInterval = expiryInterval
            state.clientReceiveMaximum = clientReceiveMaximum
            state.disconnectedAt = nil
            state.resend = Deque(state.inflight.map(\.packetID))
            state.needsWake = false
            // A new owner gets the whole slow-consumer timeout (a takeover leaves the old clock behind).
            if state.congestedSince != nil { state.congestedSince = ContinuousClock.now }
            journalSessionRow(&state, disconnectedAt: nil)
            return previous
        }
    }

    /// Mirrors the session row (or its removal, once it is no longer persistent) into the journal.
    private func journalSessionRow(_ state: inout State, disconnectedAt: Int64?) {
        guard let journal, state.journaling else { return }
        if state.persistent {
            journal.append(
                .upsertSession(
                    StoredSessionRecord(
                        clientID: clientID,
                        expiryInterval: state.expiryInterval,
                        disconnectedAt: disconnectedAt,
                        username: state.username
                    )
                )
            )
        } else {
            // No longer persistent (MQTT 5 expiry 0): the stored session goes now, not at disconnect.
            state.journaling = false
            journal.append(.deleteSession(clientID: clientID))
        }
    }

    /// Ends the session's presence in the store: deletes its rows and stops mirroring its changes.
    /// The broker calls it (under its own lock) before anything can create a new session with the same
    /// client id, so the delete is journalled before the new session's rows.
    func retire() {
        state.withLock { state in
            guard let journal, state.journaling else { return }
            state.journaling = false
            journal.append(.deleteSession(clientID: clientID))
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
            // Nobody reads this queue now: its publishers go on (what they send next is queued or
            // dropped by the offline rules).
            releaseThrottles(&state, drained: true)
            if state.persistent {
                journalSessionRow(&state, disconnectedAt: WallClock.millisecondsSinceEpoch())
            }
            return true
        }
    }

    /// The handle of the connection that owns the session, if any.
    var handle: (any ConnectionHandle)? { state.withLock { $0.handle } }

    /// Whether a connection owns the session.
    public var isConnected: Bool { state.withLock { $0.owner != nil } }

    var isPersistent: Bool { state.withLock { $0.persistent } }

    /// The username the session's (last) connection authenticated as; nil when anonymous.
    var username: String? { state.withLock { $0.username } }

    /// Where the session's (last) connection came from; nil when none connected since start-up.
    var connectionInfo: ConnectionInfo? { state.withLock { $0.connectionInfo } }

    /// Whether the session belongs to an internal client (a bridge, ``InternalClient``): its client id
    /// has the reserved prefix network clients may not use. Client ACLs do not apply to it.
    var isInternal: Bool { clientID.hasPrefix(InternalClient.reservedPrefix) }

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
            let messages = (state.inflight.map(\.queued) + Array(state.pending)).map { queued in
                var queued = queued
                queued.seq = nil
                return queued
            }
            state.pending.removeAll()
            state.pendingQoS0 = 0
            state.removeAllInflight()
            state.resend.removeAll()
            state.pendingBytes = 0
            state.inflightBytes = 0
            releaseThrottles(&state, drained: true)
            return (bytes, messages)
        }
        budget.release(bytes, count: messages.count)
        return messages
    }

    // MARK: Subscriptions

    /// Records a subscription; returns whether it already existed.
    func storeSubscription(key: String, _ subscription: StoredSubscription) -> Bool {
        state.withLock { state in
            if state.journaling, let journal {
                journal.append(
                    .upsertSubscription(
                        StoredSubscriptionRecord(
                            clientID: clientID,
                            key: key,
                            options: subscription.options,
                            group: subscription.group,
                            subscriptionIdentifier: subscription.subscriptionIdentifier
                        )
                    )
                )
            }
            return state.subscriptions.updateValue(subscription, forKey: key) != nil
        }
    }

    func removeSubscription(key: String) -> StoredSubscription? {
        state.withLock { state in
            let removed = state.subscriptions.removeValue(forKey: key)
            if removed != nil, state.journaling, let journal {
                journal.append(.deleteSubscription(clientID: clientID, key: key))
            }
            return removed
        }
    }

    /// All subscriptions, keyed by the filter as the client sent it.
    var subscriptions: [String: StoredSubscription] { state.withLock { $0.subscriptions } }

    /// Takes out of the queue the messages that none of the session's remaining subscriptions accounts
    /// for (after subscriptions were revoked): a shared-subscription delivery whose group and filter the
    /// session no longer holds, or another message whose topic no remaining non-shared filter matches.
    /// Their stored rows are deleted and their bytes released. Messages already in flight stay: the
    /// client has received them, and the QoS 1/2 exchange must complete (MQTT-4.4.0-1).
    /// - Returns: the messages taken out, in queue order (without their stored row).
    func takeQueuedWithoutSubscription() -> [QueuedMessage] {
        let (bytes, taken) = state.withLock { state -> (Int, [QueuedMessage]) in
            let shared = Set(state.subscriptions.values.compactMap { s in s.group.map { SharedGroupKey(group: $0, filter: s.options.topicFilter) } })
            let filters = state.subscriptions.values.filter { $0.group == nil }.map(\.options.topicFilter)
            var bytes = 0
            var taken: [QueuedMessage] = []
            var kept: Deque<QueuedMessage> = []
            for queued in state.pending {
                let covered =
                    queued.sharedGroup.map(shared.contains) == true
                    || filters.contains { MQTTTopic.matches(filter: $0, topic: queued.message.topic) }
                if covered {
                    kept.append(queued)
                    continue
                }
                journalDelete(queued, &state)
                bytes += queued.byteCount
                var out = queued
                out.seq = nil
                taken.append(out)
            }
            guard !taken.isEmpty else { return (0, []) }
            state.pending = kept
            state.pendingQoS0 = kept.reduce(0) { $0 + ($1.qos == .atMostOnce ? 1 : 0) }
            state.pendingBytes -= bytes
            releaseThrottles(&state)
            return (bytes, taken)
        }
        if !taken.isEmpty { budget.release(bytes, count: taken.count) }
        return taken
    }

    // MARK: Inbound QoS 2

    /// Records an inbound QoS 2 PUBLISH. Returns false when the packet id is already awaiting PUBREL,
    /// i.e. this PUBLISH is a retransmission that must not be routed again (MQTT-4.3.3-2).
    ///
    /// One exception: an id restored from the store that arrives with DUP 0. A retransmission carries
    /// DUP 1 (MQTT-3.3.1-1), and a client reuses an id only after PUBCOMP; so this is a new message
    /// whose id's PUBREL (and PUBCOMP) happened before a crash that lost the row's deletion.
    func receivedQoS2(packetID: UInt16, dup: Bool) -> Bool {
        state.withLock { state in
            if state.inboundQoS2.insert(packetID).inserted { return true }
            return !dup && state.restoredInboundQoS2.remove(packetID) != nil
        }
    }

    /// Stores an inbound QoS 2 packet id once everything its message caused is committed, so that after
    /// a restart a retransmission is still recognised and a PUBREL still known; `onCommit` runs when it
    /// is stored (at once when there is nothing to store: storage off, the session not persistent, or
    /// the exchange already over).
    func storeInboundQoS2(packetID: UInt16, onCommit: @escaping @Sendable () -> Void) {
        let stored = state.withLock { state -> Bool in
            guard state.journaling, let journal, state.inboundQoS2.contains(packetID) else { return false }
            state.storedInboundQoS2.insert(packetID)
            journal.append(.insertInboundQoS2(clientID: clientID, packetID: packetID), onCommit: onCommit)
            return true
        }
        if !stored { onCommit() }
    }

    /// Completes an inbound QoS 2 exchange on PUBREL. Returns whether the packet id was known.
    func releasedQoS2(packetID: UInt16) -> Bool {
        state.withLock { state in
            state.restoredInboundQoS2.remove(packetID)
            if state.storedInboundQoS2.remove(packetID) != nil, state.journaling, let journal {
                journal.append(.deleteInboundQoS2(clientID: clientID, packetID: packetID))
            }
            return state.inboundQoS2.remove(packetID) != nil
        }
    }

    /// Puts back the inbound QoS 2 exchanges stored before a restart (``Broker/restore(from:)``).
    func restoreInboundQoS2(_ packetIDs: [UInt16]) {
        state.withLock { state in
            state.inboundQoS2.formUnion(packetIDs)
            state.storedInboundQoS2.formUnion(packetIDs)
            state.restoredInboundQoS2.formUnion(packetIDs)
        }
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
    /// - Parameter onPersisted: when the copy is persisted, a gate whose hold is released once it has
    ///   committed (`ack: persisted` holds the publisher's acknowledgement on it).
    /// - Parameter overflow: what to do with a message that does not fit once QoS 0 messages were
    ///   evicted; nil applies `disconnect` (QoS 1/2) and `drop` (QoS 0).
    func enqueue(
        _ queued: consuming QueuedMessage,
        onPersisted gate: CommitGate? = nil,
        overflow: Overflow? = nil
    ) -> (result: EnqueueResult, startedDropping: Bool) {
        let size = queued.byteCount
        let qos = queued.qos
        // Moved into the queue with `take()`: a captured variable appended as it is would be copied (its
        // topic, payload and properties retained, then released when this returns).
        var message = Optional(consume queued)
        var evicted = 0
        let (result, wake, logDrop) = state.withLock { state -> (EnqueueResult, (any ConnectionHandle)?, Bool) in
            if state.owner == nil && (qos == .atMostOnce || !state.persistent) {
                return (.notQueuedOffline, nil, false)
            }
            var globalFull = false
            while true {
                if state.pending.count + state.inflight.count < limits.maxQueuedMessages
                    && state.pendingBytes + state.inflightBytes + size <= limits.maxQueuedBytes
                {
                    if budget.tryReserve(size) { break }
                    globalFull = true
                }
                // No room: drop the oldest pending QoS 0 message, if there is one, and try again (a QoS 0
                // message held back by `qos0_when_full: backpressure` evicts nothing).
                let evicts = qos != .atMostOnce || overflow?.qos0WhenFull != .backpressure
                guard evicts, state.pendingQoS0 > 0, let index = state.pending.firstIndex(where: { $0.qos == .atMostOnce }) else {
                    if let overflow, let throttle = holdsBack(overflow, qos: qos, state) {
                        // Back-pressure: taken over the cap, and the publisher stops being read.
                        budget.forceReserve(size)
                        if state.congestedSince == nil {
                            state.congestedSince = overflow.now
                            congestion?.insert(self)
                        }
                        if !state.throttles.contains(where: { $0 === throttle }) {
                            state.throttles.append(throttle)
                            throttle.block(on: self)
                        }
                        break
                    }
                    let reason: GatewayMetrics.DropReason =
                        globalFull ? .globalCap : (qos == .atMostOnce ? .queueFullQoS0 : .queueFullQoS12)
                    let firstOfEpisode = !state.dropping
                    state.dropping = true
                    if qos != .atMostOnce && state.owner != nil && !dropsWhenFull && overflow?.policy != .drop {
                        return (.slowConsumer, nil, firstOfEpisode)
                    }
                    return (.dropped(reason), nil, firstOfEpisode)
                }
                let old = state.pending.remove(at: index)
                state.pendingQoS0 -= 1
                state.pendingBytes -= old.byteCount
                // Give its bytes back to the global budget now, so the retry sees the room it made.
                budget.release(old.byteCount)
                evicted += 1
                globalFull = false
            }
            state.dropping = false
            if state.journaling, qos != .atMostOnce, let journal {
                let seq = journal.nextSequence()
                message!.seq = seq
                journal.append(
                    .insertMessage(Self.stored(message!, seq: seq, clientID: clientID, state: .queued, packetID: nil)),
                    onCommit: gate?.hold()
                )
            }
            if qos == .atMostOnce { state.pendingQoS0 += 1 }
            state.pending.append(message.take()!)
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

    /// How a full queue treats a message that does not fit (after QoS 0 messages were evicted), per
    /// `limits.slow_consumer`, `limits.qos0_when_full` and `limits.slow_consumer_timeout`.
    struct Overflow {
        var policy: SlowConsumerPolicy
        var qos0WhenFull: QoS0WhenFullPolicy
        /// How long a queue may hold its publishers back before `disconnect` applies.
        var timeout: Duration
        /// The publisher's throttle; nil for the gateway's own messages (Wills, retained deliveries,
        /// bridges), which cannot be held back: `disconnect` applies to them.
        var throttle: ReadThrottle?
        /// Read only when a full queue needs it (most messages fit and never look at the clock).
        var now: ContinuousClock.Instant { ContinuousClock.now }
    }

    /// The throttle to hold back when `overflow` asks for back-pressure and it can apply: the session is
    /// connected, the message's QoS is covered, the publisher is not this session's own connection (it
    /// could not read the acknowledgements that drain the queue), and the queue has not been over its
    /// cap for longer than the timeout.
    private func holdsBack(_ overflow: Overflow, qos: MQTTQoS, _ state: State) -> ReadThrottle? {
        guard overflow.policy == .backpressure, !dropsWhenFull, let handle = state.handle,
            let throttle = overflow.throttle, throttle.handle !== handle,
            qos != .atMostOnce || overflow.qos0WhenFull == .backpressure
        else { return nil }
        if let since = state.congestedSince, since.advanced(by: overflow.timeout) <= overflow.now { return nil }
        return throttle
    }

    /// Lets the held-back publishers read again once the queue has drained to half its caps (or at once
    /// with `drained`: the owner went away or the queue was emptied).
    private func releaseThrottles(_ state: inout State, drained: Bool = false) {
        guard state.congestedSince != nil else { return }
        if !drained {
            let count = state.pending.count + state.inflight.count
            let bytes = state.pendingBytes + state.inflightBytes
            guard count * 2 <= limits.maxQueuedMessages && bytes * 2 <= limits.maxQueuedBytes else { return }
        }
        for throttle in state.throttles { throttle.unblock(self) }
        state.throttles.removeAll()
        state.congestedSince = nil
        congestion?.remove(self)
    }

    /// Whether the queue has held its publishers back for `timeout` or longer.
    func isCongested(longerThan timeout: Duration, now: ContinuousClock.Instant) -> Bool {
        state.withLock { state in
            state.congestedSince.map { $0.advanced(by: timeout) <= now } ?? false
        }
    }

    /// Publishers held back by this session now.
    var heldBackPublishers: Int { state.withLock { $0.throttles.count } }

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
    /// - Parameter now: read only for a message with an expiry (most have none).
    func nextOutbound(owner: UInt64, now: @autoclosure () -> ContinuousClock.Instant) -> OutboundPoll {
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
        guard let qos = state.firstPendingQoS else { return false }
        return qos == .atMostOnce || state.inflight.count < min(limits.maxInflight, state.clientReceiveMaximum)
    }

    private func poll(owner: UInt64, now: () -> ContinuousClock.Instant) -> OutboundPoll {
        var released = 0
        var releasedCount = 0
        var expired = 0
        let result = state.withLock { state -> OutboundPoll in
            guard state.owner == owner else { return .finished }
            // Redeliveries after a reconnect come first, in their original order.
            while let id = state.resend.popFirst() {
                guard let index = state.inflightIndex(of: id) else { continue }
                let entry = state.inflight[index]
                if entry.phase == .awaitingPubcomp { return .item(.pubrel(id)) }
                return .item(.publish(Self.packet(for: entry.queued, packetID: id, dup: true, now: now)))
            }
            let window = min(limits.maxInflight, state.clientReceiveMaximum)
            while let qos = state.firstPendingQoS {
                // A full window needs no wake-up: the acknowledgement that frees it arrives on the
                // owner's own task, which polls again after every packet.
                if qos != .atMostOnce && state.inflight.count >= window { return .wait }
                let queued = state.pending.removeFirst()
                if queued.qos == .atMostOnce { state.pendingQoS0 -= 1 }
                state.pendingBytes -= queued.byteCount
                if let expiresAt = queued.message.expiresAt, expiresAt <= now() {
                    released += queued.byteCount
                    releasedCount += 1
                    expired += 1
                    journalDelete(queued, &state)
                    continue
                }
                if queued.qos == .atMostOnce {
                    released += queued.byteCount
                    releasedCount += 1
                    releaseThrottles(&state)
                    return .item(.publish(Self.packet(for: queued, packetID: nil, dup: false, now: now)))
                }
                let id = Self.allocatePacketID(&state)
                let phase: Inflight.Phase = queued.qos == .atLeastOnce ? .awaitingPuback : .awaitingPubrec
                state.appendInflight(Inflight(packetID: id, queued: queued, phase: phase))
                if state.journaling, let seq = queued.seq, let journal {
                    journal.append(.updateMessage(seq: seq, state: phase.stored, packetID: id))
                }
                state.inflightBytes += queued.byteCount
                return .item(.publish(Self.packet(for: queued, packetID: id, dup: false, now: now)))
            }
            releaseThrottles(&state)
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
            if !state.inflightIDs.contains(id) { return id }
        }
    }

    private static func packet(for queued: QueuedMessage, packetID: UInt16?, dup: Bool, now: () -> ContinuousClock.Instant) -> MQTTPublishPacket {
        var properties = queued.message.properties
        // Each assignment rebuilds the list: not when both are empty (the common case).
        if !(queued.subscriptionIdentifiers.isEmpty && properties.subscriptionIdentifiers.isEmpty) {
            properties.subscriptionIdentifiers = queued.subscriptionIdentifiers
        }
        if let expiresAt = queued.message.expiresAt {
            // Forward the remaining lifetime, not the original interval (MQTT-3.3.2-6).
            let remaining = now().duration(to: expiresAt).components.seconds
            properties.messageExpiryInterval = UInt32(clamping: max(remaining, 0))
        }
        // The shared bytes fit only the form every receiver gets: no DUP, no subscription identifiers,
        // no remaining expiry of this delivery's own.
        let shareable = !dup && queued.subscriptionIdentifiers.isEmpty && queued.message.expiresAt == nil
        return MQTTPublishPacket(
            topic: queued.message.topic,
            payload: queued.message.payload,
            qos: queued.qos,
            retain: queued.retain,
            dup: dup,
            packetIdentifier: packetID,
            properties: properties,
            sharedEncoding: shareable ? queued.message.sharedEncoding : nil
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
            guard let index = state.inflightIndex(of: packetID, phase: .awaitingPubrec) else {
                return state.inflightIndex(of: packetID, phase: .awaitingPubcomp) != nil
            }
            state.setInflightPhase(at: index, .awaitingPubcomp)
            if state.journaling, let seq = state.inflight[index].queued.seq, let journal {
                journal.append(.updateMessage(seq: seq, state: .awaitingPubcomp, packetID: packetID))
            }
            return true
        }
    }

    private func complete(packetID: UInt16, phase: Inflight.Phase) -> Bool {
        let bytes = state.withLock { state -> Int? in
            guard let index = state.inflightIndex(of: packetID, phase: phase) else {
                return nil
            }
            let entry = state.removeInflight(at: index)
            state.inflightBytes -= entry.queued.byteCount
            journalDelete(entry.queued, &state)
            releaseThrottles(&state)
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
            journalSessionRow(&state, disconnectedAt: nil)
        }
    }

    private func journalDelete(_ queued: QueuedMessage, _ state: inout State) {
        if state.journaling, let seq = queued.seq, let journal {
            journal.append(.deleteMessage(seq: seq))
        }
    }

    /// The store's form of a queued copy. Expiry moves from the continuous clock to wall-clock time.
    static func stored(
        _ queued: QueuedMessage,
        seq: Int64,
        clientID: String,
        state: StoredSessionMessage.State,
        packetID: UInt16?
    ) -> StoredSessionMessage {
        StoredSessionMessage(
            seq: seq,
            clientID: clientID,
            state: state,
            packetID: packetID,
            qos: queued.qos,
            retain: queued.retain,
            topic: queued.message.topic,
            payload: queued.message.payload,
            messageQoS: queued.message.qos,
            messageRetain: queued.message.retain,
            properties: StoredForm.properties(queued.message.properties),
            publisherClientID: queued.message.publisherClientID,
            expiresAt: StoredForm.wallClock(queued.message.expiresAt),
            subscriptionIdentifiers: queued.subscriptionIdentifiers,
            sharedGroup: queued.sharedGroup?.group,
            sharedFilter: queued.sharedGroup?.filter
        )
    }

    /// A stored delivery state as the session tracks it (nil: still queued).
    fileprivate static func phase(_ stored: StoredSessionMessage.State) -> Inflight.Phase? {
        switch stored {
        case .queued: nil
        case .awaitingPuback: .awaitingPuback
        case .awaitingPubrec: .awaitingPubrec
        case .awaitingPubcomp: .awaitingPubcomp
        }
    }

    /// What ``restore(subscriptions:messages:disconnectedAt:)`` loaded.
    struct RestoreCount {
        var queued = 0
        var inflight = 0
        /// Stored messages over the session's (or the global) queue caps, dropped at load.
        var dropped: [Int64] = []
    }

    /// Fills a session being restored from the store (before any connection can see it): its
    /// subscriptions, and its messages in order — in-flight ones keep their packet ids and are sent
    /// again with DUP (or PUBREL) on the next connection. Messages over the queue caps are dropped
    /// (the offline overflow policy: the oldest are kept, later ones dropped) and returned so their
    /// rows can be deleted.
    func restore(
        subscriptions: [(key: String, StoredSubscription)],
        messages: [(QueuedMessage, StoredSessionMessage.State, UInt16?)],
        disconnectedAt: ContinuousClock.Instant
    ) -> RestoreCount {
        var count = RestoreCount()
        state.withLock { state in
            state.disconnectedAt = disconnectedAt
            for (key, subscription) in subscriptions { state.subscriptions[key] = subscription }
            for (queued, stored, packetID) in messages {
                let size = queued.byteCount
                let fits = state.pending.count + state.inflight.count < limits.maxQueuedMessages
                    && state.pendingBytes + state.inflightBytes + size <= limits.maxQueuedBytes
                guard fits, budget.tryReserve(size) else {
                    if let seq = queued.seq { count.dropped.append(seq) }
                    continue
                }
                if let phase = Self.phase(stored), let packetID,
                    !state.inflightIDs.contains(packetID)
                {
                    state.appendInflight(Inflight(packetID: packetID, queued: queued, phase: phase))
                    state.inflightBytes += size
                    state.nextPacketID = packetID == UInt16.max ? 1 : packetID + 1
                    count.inflight += 1
                } else {
                    if queued.qos == .atMostOnce { state.pendingQoS0 += 1 }
                    state.pending.append(queued)
                    state.pendingBytes += size
                    count.queued += 1
                }
            }
        }
        return count
    }
}

extension Session.Inflight.Phase {
    var stored: StoredSessionMessage.State {
        switch self {
        case .awaitingPuback: .awaitingPuback
        case .awaitingPubrec: .awaitingPubrec
        case .awaitingPubcomp: .awaitingPubcomp
        }
    }
}

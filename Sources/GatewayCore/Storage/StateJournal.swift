import DequeModule
public import Logging
import Metrics
import Synchronization

/// The bounded write-behind queue between the broker's in-memory state and its ``BrokerStateStore``,
/// with the batch writer that empties it (group commit, as ``IngestQueue`` does for telemetry).
///
/// Sessions and the retained store ``append(_:onCommit:)`` operations synchronously, under their own
/// locks, so the journal sees every row's changes in the order they happened; appending never waits
/// for the database. One writer task (``run()``) applies them in transactions of up to
/// `batchMaxOperations`, waiting at most `batchMaxDelay` for a batch to fill.
///
/// Coalescing: a message delivered to a connected subscriber is usually inserted, sent (packet id) and
/// acknowledged within one batch window; while its insert still waits in the queue, the update is folded
/// into it and the delete cancels it, so such a message costs the database nothing. Its `onCommit`
/// (a held PUBACK) still runs when the batch it was in commits.
///
/// Bounds: the queue holds at most `maxPendingOperations` operations and `maxPendingBytes` bytes in the
/// sense that publishers wait in ``waitForRoom()`` (back-pressure, counted in
/// `iotgw_state_journal_backpressure_waits_total`) before routing a message while it is over either cap.
/// Operations that mirror state already in memory (acknowledgements, subscriptions, session changes)
/// are always taken: they are bounded by that state, which the queue limits of each session bound.
/// When the store fails the writer keeps its batch and retries with backoff; publishers then meet a full
/// queue — nothing is dropped silently.
public final class StateJournal: Sendable {
    /// Caps and batching.
    public struct Configuration: Sendable, Hashable {
        /// Operations queued (and being written) before publishers wait. Default 10,000.
        public var maxPendingOperations = 10_000
        /// Bytes queued (and being written) before publishers wait. Default 16 MiB.
        public var maxPendingBytes = 16 * 1_048_576
        /// The most operations one transaction applies. Default 500.
        public var batchMaxOperations = 500
        /// The longest an operation waits for its batch to fill, in seconds. Default 0.01.
        public var batchMaxDelay = 0.01

        public init() {}
    }

    public let configuration: Configuration
    let store: any BrokerStateStore
    let logger: Logger
    private let state = Mutex(State())
    private let sequence = Atomic<Int64>(1)
    private let onAvailabilityChange: (@Sendable (Bool) -> Void)?

    private let depthGauge = Gauge(label: "iotgw_state_journal_operations")
    private let batchSize = Recorder(label: "iotgw_state_journal_batch_operations")
    private let commitLatency = Timer(label: "iotgw_state_journal_commit_seconds", preferredDisplayUnit: .seconds)
    private let committed = Counter(label: "iotgw_state_journal_committed_total")
    private let coalesced = Counter(label: "iotgw_state_journal_coalesced_total")
    private let backpressureWaits = Counter(label: "iotgw_state_journal_backpressure_waits_total")
    private let commitFailures = Counter(label: "iotgw_state_journal_commit_failures_total")
    private let discardedAfterClose = Counter(label: "iotgw_state_journal_discarded_total")

    private struct Entry: Sendable {
        /// nil once cancelled by coalescing (its callback still runs at commit).
        var operation: BrokerStateOperation?
        var onCommit: (@Sendable () -> Void)?
        var bytes: Int
    }

    private struct State: Sendable {
        var pending: [Entry] = []
        var pendingBytes = 0
        /// Operations handed to the writer and not yet committed (still counted against the caps).
        var writing = 0
        var writingBytes = 0
        /// Where each pending (not yet taken) message insert is in `pending`, by seq.
        var inserts: [Int64: Int] = [:]
        var spaceWaiters: Deque<CheckedContinuation<Void, Never>> = []
        var writerWaiter: CheckedContinuation<Void, Never>?
        var fillWaiter: CheckedContinuation<Void, Never>?
        var closed = false
        var storeDown = false
    }

    /// - Parameters:
    ///   - configuration: caps and batching.
    ///   - store: where batches are applied.
    ///   - logger: the gateway's logger.
    ///   - onAvailabilityChange: called with false when commits start failing, true when they succeed again.
    public init(
        configuration: Configuration = Configuration(),
        store: any BrokerStateStore,
        logger: Logger,
        onAvailabilityChange: (@Sendable (Bool) -> Void)? = nil
    ) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.onAvailabilityChange = onAvailabilityChange
    }

    /// A new broker-wide message sequence number (row key and delivery order of session messages).
    func nextSequence() -> Int64 {
        sequence.add(1, ordering: .relaxed).oldValue
    }

    /// Makes the next sequence number at least `value` (after loading stored rows).
    func advanceSequence(past value: Int64) {
        var current = sequence.load(ordering: .relaxed)
        while current <= value {
            let (exchanged, original) = sequence.compareExchange(expected: current, desired: value + 1, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    /// Queues `operation`; `onCommit` runs once it (or what it was folded into) has committed. Never
    /// waits. After ``close()`` the operation is discarded and counted (nothing is connected by then).
    func append(_ operation: BrokerStateOperation, onCommit: (@Sendable () -> Void)? = nil) {
        enum Outcome { case closed, done, wake(CheckedContinuation<Void, Never>) }
        let outcome = state.withLock { state -> Outcome in
            if state.closed { return .closed }
            switch operation {
            case .updateMessage(let seq, let newState, let packetID):
                if let index = state.inserts[seq], case .insertMessage(var message)? = state.pending[index].operation {
                    message.state = newState
                    message.packetID = packetID
                    state.pending[index].operation = .insertMessage(message)
                    state.pending[index].onCommit = Self.chain(state.pending[index].onCommit, onCommit)
                    coalesced.increment()
                    return .done
                }
            case .deleteMessage(let seq):
                if let index = state.inserts.removeValue(forKey: seq) {
                    state.pending[index].operation = nil
                    state.pendingBytes -= state.pending[index].bytes
                    state.pending[index].bytes = 0
                    state.pending[index].onCommit = Self.chain(state.pending[index].onCommit, onCommit)
                    coalesced.increment()
                    return .done
                }
            default:
                break
            }
            let bytes = operation.byteCount
            if case .insertMessage(let message) = operation {
                state.inserts[message.seq] = state.pending.count
            }
            state.pending.append(Entry(operation: operation, onCommit: onCommit, bytes: bytes))
            state.pendingBytes += bytes
            var writer = state.writerWaiter
            state.writerWaiter = nil
            if writer == nil && state.pending.count >= configuration.batchMaxOperations {
                writer = state.fillWaiter
                state.fillWaiter = nil
            }
            return writer.map { .wake($0) } ?? .done
        }
        switch outcome {
        case .closed: discardedAfterClose.increment()
        case .wake(let continuation): continuation.resume()
        case .done: break
        }
    }

    /// `first`, then `second`: the callbacks of an entry and of an operation folded into it.
    private static func chain(
        _ first: (@Sendable () -> Void)?,
        _ second: (@Sendable () -> Void)?
    ) -> (@Sendable () -> Void)? {
        guard let second else { return first }
        guard let first else { return second }
        return {
            first()
            second()
        }
    }

    /// Waits while the queue is over its caps (publishers call this before routing a message).
    public func waitForRoom() async {
        var waited = false
        while true {
            let full = state.withLock { state -> Bool in
                !state.closed && !Self.hasRoom(state, configuration)
            }
            guard full else { return }
            if !waited {
                backpressureWaits.increment()
                waited = true
            }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.closed || Self.hasRoom(state, configuration) { return true }
                    state.spaceWaiters.append(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    private static func hasRoom(_ state: State, _ configuration: Configuration) -> Bool {
        state.pending.count + state.writing < configuration.maxPendingOperations
            && state.pendingBytes + state.writingBytes < configuration.maxPendingBytes
    }

    /// Operations queued or being written.
    public var depth: Int { state.withLock { $0.pending.count + $0.writing } }

    /// Publishers waiting in ``waitForRoom()`` now.
    var waitingPublishers: Int { state.withLock { $0.spaceWaiters.count } }

    /// True when nothing is queued or being written.
    public var isEmpty: Bool { depth == 0 }

    /// True while commits fail.
    public var isDegraded: Bool { state.withLock { $0.storeDown } }

    /// Stops accepting operations; ``run()`` returns once everything queued is committed.
    public func close() {
        let (writer, filler, waiters) = state.withLock { state -> (CheckedContinuation<Void, Never>?, CheckedContinuation<Void, Never>?, Deque<CheckedContinuation<Void, Never>>) in
            state.closed = true
            let writer = state.writerWaiter
            state.writerWaiter = nil
            let filler = state.fillWaiter
            state.fillWaiter = nil
            let waiters = state.spaceWaiters
            state.spaceWaiters.removeAll()
            return (writer, filler, waiters)
        }
        writer?.resume()
        filler?.resume()
        for waiter in waiters { waiter.resume() }
    }

    /// The batch writer. Runs until ``close()`` was called and the queue is empty; cancellation closes
    /// the queue too.
    public func run() async {
        await withTaskCancellationHandler {
            await write()
        } onCancel: {
            close()
        }
    }

    private func write() async {
        var backoff = Duration.milliseconds(100)
        while true {
            guard await waitForWork() else { return }
            if configuration.batchMaxDelay > 0 {
                await waitForBatchToFill()
            }
            let batch = state.withLock { state -> [Entry] in
                let n = min(configuration.batchMaxOperations, state.pending.count)
                let batch = Array(state.pending.prefix(n))
                state.pending.removeFirst(n)
                let bytes = batch.reduce(0) { $0 + $1.bytes }
                state.pendingBytes -= bytes
                state.writing = n
                state.writingBytes = bytes
                // Taken inserts can no longer absorb updates or deletes; the rest move up by n.
                if state.pending.isEmpty {
                    state.inserts.removeAll(keepingCapacity: true)
                } else {
                    var moved: [Int64: Int] = [:]
                    for (seq, index) in state.inserts where index >= n { moved[seq] = index - n }
                    state.inserts = moved
                }
                return batch
            }
            if batch.isEmpty { continue }
            let operations = batch.compactMap(\.operation)
            while !operations.isEmpty {
                let started = ContinuousClock.now
                do {
                    try await store.apply(operations)
                    let elapsed = started.duration(to: .now).components
                    commitLatency.recordNanoseconds(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
                    break
                } catch {
                    commitFailures.increment()
                    let wasDown = state.withLock { state -> Bool in
                        let was = state.storeDown
                        state.storeDown = true
                        return was
                    }
                    if !wasDown {
                        logger.warning("session store unavailable; retrying with backoff", metadata: ["error": "\(String(reflecting: error))"])
                        onAvailabilityChange?(false)
                    }
                    if Task.isCancelled {
                        let abandoned = batch.count + state.withLock { $0.pending.count }
                        logger.error("session store unavailable at cancellation; abandoning queued changes", metadata: ["iotgw.journal.abandoned": "\(abandoned)"])
                        return
                    }
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(5))
                }
            }
            backoff = .milliseconds(100)
            let (waiters, recovered, depth) = state.withLock { state -> (Deque<CheckedContinuation<Void, Never>>, Bool, Int) in
                state.writing = 0
                state.writingBytes = 0
                let recovered = state.storeDown
                state.storeDown = false
                let waiters = state.spaceWaiters
                state.spaceWaiters.removeAll()
                return (waiters, recovered, state.pending.count)
            }
            if recovered {
                logger.notice("session store available again")
                onAvailabilityChange?(true)
            }
            batchSize.record(operations.count)
            committed.increment(by: operations.count)
            for entry in batch { entry.onCommit?() }
            for waiter in waiters { waiter.resume() }
            depthGauge.record(depth)
        }
    }

    private func waitForBatchToFill() async {
        let delay = Duration.seconds(configuration.batchMaxDelay)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: delay) }
            group.addTask { await self.waitUntilFullOrClosed() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitUntilFullOrClosed() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.closed || state.pending.count >= configuration.batchMaxOperations || Task.isCancelled { return true }
                    state.fillWaiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                let waiter = state.fillWaiter
                state.fillWaiter = nil
                return waiter
            }
            waiter?.resume()
        }
    }

    private func waitForWork() async -> Bool {
        while true {
            let ready = state.withLock { state -> Bool? in
                if !state.pending.isEmpty { return true }
                if state.closed { return false }
                return nil
            }
            if let ready { return ready }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if !state.pending.isEmpty || state.closed { return true }
                    state.writerWaiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }
}

/// Holds an acknowledgement until every commit it depends on has happened (`ack: persisted`): the
/// telemetry row and each copy stored for a persistent session. Starts with one hold for its creator,
/// released by ``release()`` once everything was registered, so it cannot open half-way.
final class CommitGate: Sendable {
    private let holds = Mutex(1)
    private let onOpen: @Sendable () -> Void

    init(onOpen: @escaping @Sendable () -> Void) {
        self.onOpen = onOpen
    }

    /// Registers one more commit to wait for; returns the callback that marks it done.
    func hold() -> @Sendable () -> Void {
        holds.withLock { $0 += 1 }
        return { self.release() }
    }

    /// Releases one hold; the last one opens the gate.
    func release() {
        let open = holds.withLock { holds -> Bool in
            holds -= 1
            return holds == 0
        }
        if open { onOpen() }
    }
}

public import Logging
import Metrics
import Synchronization

/// The bounded write-behind queue between the broker's in-memory state and its ``BrokerStateStore``,
/// with the batch writer that empties it (group commit in a ``GroupCommitWriter``, as ``IngestQueue``
/// does for telemetry).
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
    private let writer: GroupCommitWriter<Pending>
    private let sequence = Atomic<Int64>(1)

    private let coalesced = Counter(label: "iotgw_state_journal_coalesced_total")
    private let backpressureWaits = Counter(label: "iotgw_state_journal_backpressure_waits_total")
    private let discardedAfterClose = Counter(label: "iotgw_state_journal_discarded_total")

    private struct Entry: GroupCommitEntry {
        /// nil once cancelled by coalescing (its callback still runs at commit).
        var operation: BrokerStateOperation?
        var onCommit: (@Sendable () -> Void)?
        var bytes: Int
    }

    /// The operations waiting for the writer, in order, with where each message insert among them is,
    /// so that a later update folds into it and a later delete cancels it.
    private struct Pending: GroupCommitBuffer {
        typealias Entry = StateJournal.Entry

        private var entries: [Entry] = []
        private(set) var bytes = 0
        /// Where each pending (not yet taken) message insert is in `entries`, by seq.
        private var inserts: [Int64: Int] = [:]

        var count: Int { entries.count }

        /// Queues `operation`, or folds it into the pending insert of its message (an update changes
        /// the insert, a delete cancels it); the folded operation's `onCommit` then runs after the
        /// insert's. Returns true when folded.
        mutating func append(_ operation: BrokerStateOperation, onCommit: (@Sendable () -> Void)?) -> Bool {
            switch operation {
            case .updateMessage(let seq, let newState, let packetID):
                if let index = inserts[seq], case .insertMessage(var message)? = entries[index].operation {
                    message.state = newState
                    message.packetID = packetID
                    entries[index].operation = .insertMessage(message)
                    entries[index].onCommit = Self.chain(entries[index].onCommit, onCommit)
                    return true
                }
            case .deleteMessage(let seq):
                if let index = inserts.removeValue(forKey: seq) {
                    entries[index].operation = nil
                    bytes -= entries[index].bytes
                    entries[index].bytes = 0
                    entries[index].onCommit = Self.chain(entries[index].onCommit, onCommit)
                    return true
                }
            default:
                break
            }
            if case .insertMessage(let message) = operation {
                inserts[message.seq] = entries.count
            }
            let size = operation.byteCount
            entries.append(Entry(operation: operation, onCommit: onCommit, bytes: size))
            bytes += size
            return false
        }

        mutating func removeFirst(_ count: Int) -> (entries: [Entry], bytes: Int) {
            let taken = Array(entries.prefix(count))
            entries.removeFirst(count)
            let takenBytes = taken.reduce(0) { $0 + $1.bytes }
            bytes -= takenBytes
            // Taken inserts can no longer absorb updates or deletes; the rest move up by count.
            if entries.isEmpty {
                inserts.removeAll(keepingCapacity: true)
            } else {
                var moved: [Int64: Int] = [:]
                for (seq, index) in inserts where index >= count { moved[seq] = index - count }
                inserts = moved
            }
            return (taken, takenBytes)
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
        writer = GroupCommitWriter(
            batchMaxEntries: configuration.batchMaxOperations, batchMaxDelay: configuration.batchMaxDelay, names: Self.names,
            buffer: Pending(), logger: logger, onAvailabilityChange: onAvailabilityChange
        ) { batch in
            // Operations cancelled by coalescing are not sent; a batch of nothing else skips the store
            // (its callbacks still run).
            let operations = batch.compactMap(\.operation)
            if !operations.isEmpty { try await store.apply(operations) }
            return operations.count
        }
    }

    /// The writer's log lines and metrics (no bytes gauge).
    private static let names = GroupCommitWriter<Pending>.Names(
        store: "session store",
        abandoned: ("queued changes", countKey: "iotgw.journal.abandoned"),
        metrics: (
            depth: "iotgw_state_journal_operations", bytes: nil, batchSize: "iotgw_state_journal_batch_operations",
            commitLatency: "iotgw_state_journal_commit_seconds", committed: "iotgw_state_journal_committed_total",
            commitFailures: "iotgw_state_journal_commit_failures_total"
        )
    )

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
        switch writer.enqueue({ pending, _ in pending.append(operation, onCommit: onCommit) }) {
        case nil: discardedAfterClose.increment()
        case true?: coalesced.increment()
        case false?: break
        }
    }

    /// Waits while the queue is over its caps (publishers call this before routing a message).
    public func waitForRoom() async {
        await writer.waitForRoom(until: isUnderCaps, willWait: { backpressureWaits.increment() })
    }

    /// Whether ``waitForRoom()`` would return at once: a publisher that finds room routes without suspending.
    public var hasRoom: Bool { writer.hasRoomNow(isUnderCaps) }

    private func isUnderCaps(_ occupancy: GroupCommitWriter<Pending>.Occupancy) -> Bool {
        occupancy.count < configuration.maxPendingOperations && occupancy.bytes < configuration.maxPendingBytes
    }

    /// Operations queued or being written.
    public var depth: Int { writer.depth }

    /// Publishers waiting in ``waitForRoom()`` now.
    var waitingPublishers: Int { writer.waitingForRoom }

    /// True when nothing is queued or being written.
    public var isEmpty: Bool { depth == 0 }

    /// True while commits fail.
    public var isDegraded: Bool { writer.isDegraded }

    /// Stops accepting operations; ``run()`` returns once everything queued is committed.
    public func close() {
        writer.close()
    }

    /// The batch writer. Runs until ``close()`` was called and the queue is empty; cancellation closes
    /// the queue too.
    public func run() async {
        await writer.run()
    }
}

/// Holds an acknowledgement until every commit it depends on has happened (`ack: persisted`): the
/// telemetry row and each copy stored for a persistent session. Starts with one hold for its creator,
/// released by ``release()`` once everything was registered, so it cannot open half-way.
final class CommitGate: Sendable {
    private let holds = Mutex(1)
    private let onOpen: @Sendable () -> Void
    /// Run instead of `onOpen` when the holds are gone; it calls `onOpen` when it is done (set by
    /// ``release(then:)``).
    private let lastStage = Mutex<(@Sendable (_ open: @escaping @Sendable () -> Void) -> Void)?>(nil)

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
        guard open else { return }
        if let stage = lastStage.withLock({ $0 }) {
            stage(onOpen)
        } else {
            onOpen()
        }
    }

    /// Releases the creator's hold, with one more step between the last commit and opening: `stage`
    /// runs once every held commit is done and opens the gate by calling its argument.
    func release(then stage: @escaping @Sendable (_ open: @escaping @Sendable () -> Void) -> Void) {
        lastStage.withLock { $0 = stage }
        release()
    }
}

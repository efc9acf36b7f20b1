public import Logging
import Metrics
import Synchronization

/// The bounded queue between publishers and the telemetry store, and the batch writer that empties it.
///
/// Publishers ``submit(_:onCommit:)`` records; one writer task (``run()``) commits them in transactions
/// of up to `batchMaxRows`, waiting at most `batchMaxDelay` for a batch to fill (group commit, in a
/// ``GroupCommitWriter``). A record counts against the queue's caps until its batch has committed, so
/// the bound covers the batch being written too. When the store is unreachable the writer keeps its
/// batch and retries with backoff; publishers then meet a full queue and the overflow policy applies —
/// nothing is dropped silently.
public final class IngestQueue: Sendable {
    public let configuration: IngestConfiguration
    let store: any TelemetryStore
    let logger: Logger
    private let writer: GroupCommitWriter<GroupCommitFIFO<Entry>>
    /// `storage.topics`: live, so SIGHUP can change what is stored.
    private let filters: Mutex<[String]>
    /// Whether `#` is among the filters (kept with them under the lock, read without it).
    private let storesEverything: Atomic<Bool>
    /// Set while intake is paused (free disk space under `storage.min_free_bytes`): new records are
    /// treated as not fitting, so the overflow policy applies; what is queued is still written.
    private let intakePaused = Atomic<Bool>(false)

    private let rejected = Counter(label: "iotgw_ingest_rejected_total")
    private let backpressureWaits = Counter(label: "iotgw_ingest_backpressure_waits_total")

    private struct Entry: GroupCommitEntry {
        var record: TelemetryRecord
        var onCommit: (@Sendable () -> Void)?
    }

    /// - Parameters:
    ///   - configuration: caps, batching, policies and the stored topic filters.
    ///   - store: where batches are committed.
    ///   - logger: the gateway's logger.
    ///   - onAvailabilityChange: called with false when commits start failing and true when they
    ///     succeed again (readiness).
    public init(
        configuration: IngestConfiguration,
        store: any TelemetryStore,
        logger: Logger,
        onAvailabilityChange: (@Sendable (Bool) -> Void)? = nil
    ) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.filters = Mutex(configuration.topics)
        self.storesEverything = Atomic(configuration.topics.contains("#"))
        writer = GroupCommitWriter(
            batchMaxEntries: configuration.batchMaxRows, batchMaxDelay: configuration.batchMaxDelay, names: Self.names,
            buffer: GroupCommitFIFO(), logger: logger, onAvailabilityChange: onAvailabilityChange
        ) { batch in
            try await store.insert(batch.map(\.record))
            return batch.count
        }
    }

    /// The writer's log lines and metrics.
    private static let names = GroupCommitWriter<GroupCommitFIFO<Entry>>.Names(
        store: "telemetry store",
        abandoned: ("queued records", countKey: "iotgw.ingest.abandoned"),
        metrics: (
            depth: "iotgw_ingest_queue_messages", bytes: "iotgw_ingest_queue_bytes", batchSize: "iotgw_ingest_batch_rows",
            commitLatency: "iotgw_ingest_commit_seconds", committed: "iotgw_ingest_committed_total",
            commitFailures: "iotgw_ingest_commit_failures_total"
        )
    )

    /// Whether messages on `topic` are stored.
    public func stores(topic: String) -> Bool {
        // The default (`#`, every topic) answers without taking the lock publishers would contend on.
        if storesEverything.load(ordering: .relaxed) && !topic.utf8.starts(with: [UInt8(ascii: "$")]) { return true }
        return filters.withLock { filters in filters.contains { SubscriptionIndex.matches(filter: $0, topic: topic) } }
    }

    /// The stored topic filters now in effect.
    public var topics: [String] { filters.withLock { $0 } }

    /// Replaces the stored topic filters (SIGHUP). Messages published from now on are selected by them.
    public func setTopics(_ topics: [String]) {
        filters.withLock {
            $0 = topics
            storesEverything.store(topics.contains("#"), ordering: .relaxed)
        }
    }

    /// What ``submit(_:onCommit:)`` did with a record.
    public enum SubmitResult: Sendable, Equatable {
        /// Queued; `onCommit` runs once its batch has committed.
        case accepted
        /// The queue was full and the overflow policy is `reject`, or the gateway is shutting down.
        case rejected
    }

    /// Queues `record` for the store. With `overflow: backpressure` a full queue suspends the caller
    /// (its connection stops being read) until there is room.
    public func submit(_ record: TelemetryRecord, onCommit: (@Sendable () -> Void)?) async -> SubmitResult {
        var waited = false
        while true {
            if let result = admit(record, onCommit: { onCommit }) { return result }
            if !waited {
                backpressureWaits.increment()
                waited = true
            }
            let size = record.byteCount
            await writer.waitForRoom(until: { occupancy in
                !self.intakePaused.load(ordering: .relaxed) && Self.fits(size, in: occupancy, configuration)
            })
        }
    }

    /// Queues `record` when that needs no wait: what ``submit(_:onCommit:)`` returns, or nil when the queue
    /// is full and the overflow policy is `backpressure` (nothing was queued and `onCommit` was not called;
    /// ``submit(_:onCommit:)`` then waits for room). `onCommit` is called only for a record that is queued,
    /// so a commit gate's hold is never taken for one that is not.
    public func trySubmit(_ record: TelemetryRecord, onCommit: () -> (@Sendable () -> Void)?) -> SubmitResult? {
        admit(record, onCommit: onCommit)
    }

    /// One attempt to queue `record`: accepted, rejected (shutting down, or full with `overflow: reject`),
    /// or nil (full, to wait for room).
    private func admit(_ record: TelemetryRecord, onCommit: () -> (@Sendable () -> Void)?) -> SubmitResult? {
        enum Admission: Sendable { case accepted, full }
        let size = record.byteCount
        let paused = intakePaused.load(ordering: .relaxed)
        let admission = writer.enqueue { pending, occupancy -> Admission in
            guard !paused, Self.fits(size, in: occupancy, configuration) else { return .full }
            pending.append(Entry(record: record, onCommit: onCommit()), bytes: size)
            return .accepted
        }
        switch admission {
        case .accepted?:
            return .accepted
        case nil:
            // Closed: the gateway is shutting down.
            rejected.increment()
            return .rejected
        case .full?:
            guard configuration.overflow == .reject else { return nil }
            rejected.increment()
            return .rejected
        }
    }

    /// Whether a record of `size` bytes may join the queue. A record larger than `maxQueuedBytes` is
    /// taken once the queue is empty: refusing it there would stall its publisher for good (backpressure)
    /// or refuse it on every retry (reject), and the queue then holds that one record alone.
    private static func fits(
        _ size: Int,
        in occupancy: GroupCommitWriter<GroupCommitFIFO<Entry>>.Occupancy,
        _ configuration: IngestConfiguration
    ) -> Bool {
        if occupancy.count == 0 { return true }
        return occupancy.count < configuration.maxQueuedMessages && occupancy.bytes + size <= configuration.maxQueuedBytes
    }

    /// Pauses or resumes intake. While paused, ``submit(_:onCommit:)`` finds the queue full: with
    /// `overflow: backpressure` publishers wait (their connections are no longer read), with `reject`
    /// their messages are refused; records already queued are still committed.
    public func setIntakePaused(_ paused: Bool) {
        intakePaused.store(paused, ordering: .relaxed)
        if !paused { writer.recheckRoom() }
    }

    /// Whether intake is paused (``setIntakePaused(_:)``).
    public var isIntakePaused: Bool { intakePaused.load(ordering: .relaxed) }

    /// Records queued or being written.
    public var depth: Int { writer.depth }

    /// True when nothing is queued or being written.
    public var isEmpty: Bool { depth == 0 }

    /// True while commits fail (the store is unreachable); readiness reports it.
    public var isDegraded: Bool { writer.isDegraded }

    /// Stops accepting records; ``run()`` returns once everything queued is committed.
    public func close() {
        writer.close()
    }

    /// The batch writer. Runs until ``close()`` was called and the queue is empty. Cancellation closes
    /// the queue too (what is queued is still written, unless the store is failing).
    public func run() async {
        await writer.run()
    }
}

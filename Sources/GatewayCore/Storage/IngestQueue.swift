import DequeModule
public import Logging
import Metrics
import Synchronization

/// The bounded queue between publishers and the telemetry store, and the batch writer that empties it.
///
/// Publishers ``submit(_:onCommit:)`` records; one writer task (``run()``) commits them in transactions
/// of up to `batchMaxRows`, waiting at most `batchMaxDelay` for a batch to fill (group commit). A record
/// counts against the queue's caps until its batch has committed, so the bound covers the batch being
/// written too. When the store is unreachable the writer keeps its batch and retries with backoff;
/// publishers then meet a full queue and the overflow policy applies — nothing is dropped silently.
public final class IngestQueue: Sendable {
    public let configuration: IngestConfiguration
    let store: any TelemetryStore
    let logger: Logger
    private let state = Mutex(State())
    /// `storage.topics`: live, so SIGHUP can change what is stored.
    private let filters: Mutex<[String]>
    private let onAvailabilityChange: (@Sendable (Bool) -> Void)?

    private let depthGauge = Gauge(label: "iotgw_ingest_queue_messages")
    private let bytesGauge = Gauge(label: "iotgw_ingest_queue_bytes")
    private let batchSize = Recorder(label: "iotgw_ingest_batch_rows")
    private let commitLatency = Timer(label: "iotgw_ingest_commit_seconds", preferredDisplayUnit: .seconds)
    private let committed = Counter(label: "iotgw_ingest_committed_total")
    private let rejected = Counter(label: "iotgw_ingest_rejected_total")
    private let backpressureWaits = Counter(label: "iotgw_ingest_backpressure_waits_total")
    private let commitFailures = Counter(label: "iotgw_ingest_commit_failures_total")

    private struct Entry: Sendable {
        var record: TelemetryRecord
        var onCommit: (@Sendable () -> Void)?
    }

    private struct State: Sendable {
        var pending: Deque<Entry> = []
        /// Records handed to the writer and not yet committed (still counted against the caps).
        var writing = 0
        var writingBytes = 0
        var pendingBytes = 0
        var spaceWaiters: Deque<CheckedContinuation<Void, Never>> = []
        var writerWaiter: CheckedContinuation<Void, Never>?
        /// The writer waiting (at most batchMaxDelay) for its batch to fill.
        var fillWaiter: CheckedContinuation<Void, Never>?
        var closed = false
        var storeDown = false
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
        self.onAvailabilityChange = onAvailabilityChange
    }

    /// Whether messages on `topic` are stored.
    public func stores(topic: String) -> Bool {
        filters.withLock { filters in filters.contains { SubscriptionIndex.matches(filter: $0, topic: topic) } }
    }

    /// The stored topic filters now in effect.
    public var topics: [String] { filters.withLock { $0 } }

    /// Replaces the stored topic filters (SIGHUP). Messages published from now on are selected by them.
    public func setTopics(_ topics: [String]) {
        filters.withLock { $0 = topics }
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
        let size = record.byteCount
        var waited = false
        while true {
            enum Step { case accepted(CheckedContinuation<Void, Never>?), rejected, wait }
            let step = state.withLock { state -> Step in
                if state.closed { return .rejected }
                if Self.fits(size, in: state, configuration) {
                    state.pending.append(Entry(record: record, onCommit: onCommit))
                    state.pendingBytes += size
                    var writer = state.writerWaiter
                    state.writerWaiter = nil
                    if writer == nil && state.pending.count >= configuration.batchMaxRows {
                        // The batch is full: no need to wait out batchMaxDelay.
                        writer = state.fillWaiter
                        state.fillWaiter = nil
                    }
                    return .accepted(writer)
                }
                return configuration.overflow == .reject ? .rejected : .wait
            }
            switch step {
            case .accepted(let writer):
                writer?.resume()
                return .accepted
            case .rejected:
                rejected.increment()
                return .rejected
            case .wait:
                if !waited {
                    backpressureWaits.increment()
                    waited = true
                }
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        if state.closed || Self.fits(size, in: state, configuration) {
                            return true
                        }
                        state.spaceWaiters.append(continuation)
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
        }
    }

    /// Whether a record of `size` bytes may join the queue. A record larger than `maxQueuedBytes` is
    /// taken once the queue is empty: refusing it there would stall its publisher for good (backpressure)
    /// or refuse it on every retry (reject), and the queue then holds that one record alone.
    private static func fits(_ size: Int, in state: State, _ configuration: IngestConfiguration) -> Bool {
        let count = state.pending.count + state.writing
        if count == 0 { return true }
        let bytes = state.pendingBytes + state.writingBytes
        return count < configuration.maxQueuedMessages && bytes + size <= configuration.maxQueuedBytes
    }

    /// Records queued or being written.
    public var depth: Int { state.withLock { $0.pending.count + $0.writing } }

    /// True when nothing is queued or being written.
    public var isEmpty: Bool { depth == 0 }

    /// True while commits fail (the store is unreachable); readiness reports it.
    public var isDegraded: Bool { state.withLock { $0.storeDown } }

    /// Stops accepting records; ``run()`` returns once everything queued is committed.
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

    /// The batch writer. Runs until ``close()`` was called and the queue is empty. Cancellation closes
    /// the queue too (what is queued is still written, unless the store is failing).
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
            // Wait for the first record (or the end).
            let hasWork = await waitForWork()
            guard hasWork else { return }
            // Group commit: give the batch up to batchMaxDelay to fill, unless it is full already.
            if configuration.batchMaxDelay > 0 {
                await waitForBatchToFill()
            }
            let batch = state.withLock { state -> [Entry] in
                let n = min(configuration.batchMaxRows, state.pending.count)
                let batch = Array(state.pending.prefix(n))
                state.pending.removeFirst(n)
                let bytes = batch.reduce(0) { $0 + $1.record.byteCount }
                state.pendingBytes -= bytes
                state.writing = n
                state.writingBytes = bytes
                return batch
            }
            if batch.isEmpty { continue }
            // Retry this batch until it commits: an outage back-pressures publishers instead of losing
            // what may already have been promised to them.
            while true {
                let started = ContinuousClock.now
                do {
                    try await store.insert(batch.map(\.record))
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
                        logger.warning("telemetry store unavailable; retrying with backoff", metadata: ["error": "\(String(reflecting: error))"])
                        onAvailabilityChange?(false)
                    }
                    if Task.isCancelled {
                        // The process is going down hard (cancelled, not a graceful shutdown): retrying
                        // would hang it. Say what is abandoned.
                        let abandoned = batch.count + state.withLock { $0.pending.count }
                        logger.error("telemetry store unavailable at cancellation; abandoning queued records", metadata: ["iotgw.ingest.abandoned": "\(abandoned)"])
                        return
                    }
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(5))
                }
            }
            backoff = .milliseconds(100)
            let (waiters, recovered) = state.withLock { state -> (Deque<CheckedContinuation<Void, Never>>, Bool) in
                state.writing = 0
                state.writingBytes = 0
                let recovered = state.storeDown
                state.storeDown = false
                let waiters = state.spaceWaiters
                state.spaceWaiters.removeAll()
                return (waiters, recovered)
            }
            if recovered {
                logger.notice("telemetry store available again")
                onAvailabilityChange?(true)
            }
            batchSize.record(batch.count)
            committed.increment(by: batch.count)
            for entry in batch { entry.onCommit?() }
            for waiter in waiters { waiter.resume() }
            let (depth, bytes) = state.withLock { ($0.pending.count, $0.pendingBytes) }
            depthGauge.record(depth)
            bytesGauge.record(bytes)
        }
    }

    /// Waits until the batch is full, the queue is closed, or batchMaxDelay has passed.
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
                    if state.closed || state.pending.count >= configuration.batchMaxRows || Task.isCancelled { return true }
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

    /// Suspends until a record is queued; returns false once closed and empty.
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

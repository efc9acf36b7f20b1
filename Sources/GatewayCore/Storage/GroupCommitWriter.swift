import DequeModule
import Logging
import Metrics
import Synchronization

/// The entries a ``GroupCommitWriter`` holds until its writer takes them. The owner decides what an
/// entry is and how one is added (in order, or folded into one already waiting); the writer only counts
/// them and takes them from the front.
protocol GroupCommitBuffer: Sendable {
    associatedtype Entry: GroupCommitEntry
    /// Entries waiting to be taken.
    var count: Int { get }
    /// Their size in bytes, for the byte cap.
    var bytes: Int { get }
    /// Removes the first `count` entries (never more than ``count``); returns them and their bytes.
    mutating func removeFirst(_ count: Int) -> (entries: [Entry], bytes: Int)
}

/// What a ``GroupCommitWriter`` commits: the owner's data and what to do once it has committed.
protocol GroupCommitEntry: Sendable {
    /// Runs once the entry's batch has committed (acknowledge after commit); nil if nothing waits for it.
    var onCommit: (@Sendable () -> Void)? { get }
}

/// A first-in, first-out ``GroupCommitBuffer``.
struct GroupCommitFIFO<Entry: GroupCommitEntry>: GroupCommitBuffer {
    private var entries: Deque<(entry: Entry, bytes: Int)> = []
    private(set) var bytes = 0

    var count: Int { entries.count }

    mutating func append(_ entry: Entry, bytes: Int) {
        entries.append((entry, bytes))
        self.bytes += bytes
    }

    mutating func removeFirst(_ count: Int) -> (entries: [Entry], bytes: Int) {
        var taken: [Entry] = []
        taken.reserveCapacity(count)
        var takenBytes = 0
        for _ in 0..<count {
            let first = entries.removeFirst()
            taken.append(first.entry)
            takenBytes += first.bytes
        }
        bytes -= takenBytes
        return (taken, takenBytes)
    }
}

/// A bounded queue with one writer task that empties it by group commit: the machinery shared by
/// ``IngestQueue`` (telemetry rows) and ``StateJournal`` (broker state).
///
/// The owner adds entries with ``enqueue(_:)`` and applies its own admission policy there (it sees how
/// full the queue is); callers that must wait for room use ``waitForRoom(until:willWait:)``. One writer
/// (``run()``) takes up to `batchMaxEntries` entries, waiting at most `batchMaxDelay` for a batch to
/// fill (less once it stops growing; not at all when entries arrived during the previous commit), and
/// hands them to `commit`; once that returns, each entry's `onCommit` runs (acknowledge after commit).
/// An entry counts against the caps until its batch has committed, so the bound covers the batch being
/// written too. When `commit` throws, the writer keeps the batch and retries it with
/// exponential backoff (100 ms doubling to 5 s), logs once that the store is down and once that it is
/// available again, and reports both through `onAvailabilityChange`; those waiting for room keep
/// waiting, so nothing is dropped silently. ``close()`` (or cancelling ``run()``) stops intake; ``run()``
/// returns once everything queued has committed, or, if the store is failing when the task is
/// cancelled, after logging what it abandons. Metrics: queue depth (and bytes) after each commit, items
/// per commit, commit latency, items committed and failed attempts, under the labels the owner gives.
final class GroupCommitWriter<Buffer: GroupCommitBuffer>: Sendable {
    typealias Entry = Buffer.Entry

    /// What the writer's log lines call things, and the labels of its metrics.
    struct Names: Sendable {
        /// The store, e.g. "telemetry store".
        var store: String
        /// What the line logged when the writer gives up at cancellation abandons (e.g. "queued records"),
        /// and the metadata key of their count (e.g. "iotgw.ingest.abandoned").
        var abandoned: (what: String, countKey: String)
        /// Metric labels: gauges of the entries waiting after each commit (`depth`) and of their bytes
        /// (`bytes`; nil records none), a recorder of the items each commit wrote (`batchSize`), a timer of
        /// each commit that wrote something (`commitLatency`), and counters of the items written
        /// (`committed`) and of the commit attempts that threw (`commitFailures`).
        var metrics: (
            depth: String, bytes: String?, batchSize: String, commitLatency: String, committed: String, commitFailures: String
        )
    }

    /// How full the queue is: entries (and bytes) waiting plus those being committed.
    struct Occupancy: Sendable {
        var count: Int
        var bytes: Int
    }

    /// The most entries one commit takes.
    let batchMaxEntries: Int
    /// The longest the first entry of a batch waits for the batch to fill, in seconds; 0 commits at once.
    let batchMaxDelay: Double
    let names: Names
    private let logger: Logger
    private let commit: @Sendable ([Entry]) async throws -> Int
    private let onAvailabilityChange: (@Sendable (Bool) -> Void)?
    private let depthGauge: Gauge
    private let bytesGauge: Gauge?
    private let batchSize: Recorder
    private let commitLatency: Timer
    private let committed: Counter
    private let commitFailures: Counter
    private let state: Mutex<State>

    private struct State: Sendable {
        var buffer: Buffer
        /// Entries handed to the writer and not yet committed (still counted against the caps).
        var writing = 0
        var writingBytes = 0
        var spaceWaiters: Deque<CheckedContinuation<Void, Never>> = []
        /// The writer waiting for a first entry.
        var writerWaiter: CheckedContinuation<Void, Never>?
        /// The writer waiting (at most batchMaxDelay) for its batch to fill.
        var fillWaiter: CheckedContinuation<Void, Never>?
        var closed = false
        var storeDown = false

        var occupancy: Occupancy { Occupancy(count: buffer.count + writing, bytes: buffer.bytes + writingBytes) }
    }

    /// - Parameters:
    ///   - batchMaxEntries: the most entries one commit takes.
    ///   - batchMaxDelay: the longest the first entry of a batch waits for the batch to fill, in seconds.
    ///   - names: log names and metric labels.
    ///   - buffer: the empty buffer entries are added to.
    ///   - logger: the gateway's logger.
    ///   - onAvailabilityChange: called with false when commits start failing and true when they
    ///     succeed again (readiness).
    ///   - commit: writes one batch and returns how many items it wrote (rows, operations): all of them
    ///     have committed when it returns, or it throws and none have.
    init(
        batchMaxEntries: Int,
        batchMaxDelay: Double,
        names: Names,
        buffer: Buffer,
        logger: Logger,
        onAvailabilityChange: (@Sendable (Bool) -> Void)?,
        commit: @escaping @Sendable ([Entry]) async throws -> Int
    ) {
        self.batchMaxEntries = batchMaxEntries
        self.batchMaxDelay = batchMaxDelay
        self.names = names
        self.state = Mutex(State(buffer: buffer))
        self.logger = logger
        self.onAvailabilityChange = onAvailabilityChange
        self.commit = commit
        let labels = names.metrics
        depthGauge = Gauge(label: labels.depth)
        bytesGauge = labels.bytes.map { Gauge(label: $0) }
        batchSize = Recorder(label: labels.batchSize)
        commitLatency = Timer(label: labels.commitLatency, preferredDisplayUnit: .seconds)
        committed = Counter(label: labels.committed)
        commitFailures = Counter(label: labels.commitFailures)
    }

    /// Runs `body` on the buffer under the queue's lock, with how full the queue is, and wakes the writer
    /// if entries are waiting now. Returns nil without running `body` once the queue is closed.
    func enqueue<Result: Sendable>(_ body: (inout Buffer, Occupancy) -> Result) -> Result? {
        let (result, writer) = state.withLock { state -> (Result?, CheckedContinuation<Void, Never>?) in
            if state.closed { return (nil, nil) }
            let result = body(&state.buffer, state.occupancy)
            var writer: CheckedContinuation<Void, Never>?
            if state.buffer.count > 0, let waiting = state.writerWaiter {
                writer = waiting
                state.writerWaiter = nil
            } else if state.buffer.count >= batchMaxEntries, let filling = state.fillWaiter {
                // The batch is full: no need to wait out batchMaxDelay.
                writer = filling
                state.fillWaiter = nil
            }
            return (result, writer)
        }
        writer?.resume()
        return result
    }

    /// Whether `hasRoom` holds for the queue now, or the queue is closed (what ``waitForRoom(until:willWait:)``
    /// would return at once for).
    func hasRoomNow(_ hasRoom: (Occupancy) -> Bool) -> Bool {
        state.withLock { state in state.closed || hasRoom(state.occupancy) }
    }

    /// Returns once `hasRoom` holds for the queue or the queue is closed. Calls `willWait` once, before
    /// it first suspends. `hasRoom` runs under the queue's lock; a commit re-checks it.
    func waitForRoom(until hasRoom: (Occupancy) -> Bool, willWait: () -> Void = {}) async {
        var waited = false
        while true {
            let ready = state.withLock { state in state.closed || hasRoom(state.occupancy) }
            if ready { return }
            if !waited {
                willWait()
                waited = true
            }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.closed || hasRoom(state.occupancy) { return true }
                    state.spaceWaiters.append(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    /// Wakes everyone waiting for room, to re-check their condition (the owner changed what counts as
    /// room, e.g. intake resumed).
    func recheckRoom() {
        let waiters = state.withLock { state -> Deque<CheckedContinuation<Void, Never>> in
            let waiters = state.spaceWaiters
            state.spaceWaiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Entries queued or being written.
    var depth: Int { state.withLock { $0.buffer.count + $0.writing } }

    /// Callers suspended in ``waitForRoom(until:willWait:)`` now.
    var waitingForRoom: Int { state.withLock { $0.spaceWaiters.count } }

    /// True while commits fail.
    var isDegraded: Bool { state.withLock { $0.storeDown } }

    /// Stops intake (``enqueue(_:)`` returns nil, waiting for room ends); ``run()`` returns once
    /// everything queued is committed.
    func close() {
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

    /// The writer. Runs until ``close()`` was called and the queue is empty. Cancellation closes the
    /// queue too (what is queued is still written, unless the store is failing).
    func run() async {
        await withTaskCancellationHandler {
            await write()
        } onCancel: {
            close()
        }
    }

    private func write() async {
        var backoff = Duration.milliseconds(100)
        // Whether entries arrived while the last batch was being committed.
        var backlog = false
        while true {
            // Wait for the first entry (or the end).
            guard await waitForWork() else { return }
            // Group commit: give the batch up to batchMaxDelay to fill, unless it is full already, or
            // unless entries arrived while the last batch committed: then the commit was the wait, and
            // waiting again would only add batchMaxDelay to every cycle while publishers keep sending.
            // (Measured: QoS 1 publishers with 1,000 messages in flight fed 10 ms batches of ~530 rows
            // whose commits took 3.4 ms, so the writer sat idle 69 % of the time.)
            if batchMaxDelay > 0 && !backlog {
                await waitForBatchToFill()
            }
            let batch = state.withLock { state -> [Entry] in
                let (batch, bytes) = state.buffer.removeFirst(min(batchMaxEntries, state.buffer.count))
                state.writing = batch.count
                state.writingBytes = bytes
                return batch
            }
            if batch.isEmpty { continue }
            // Retry this batch until it commits: an outage back-pressures producers instead of losing
            // what may already have been promised to them.
            var written = 0
            while true {
                let started = ContinuousClock.now
                do {
                    written = try await commit(batch)
                    if written > 0 {
                        // A batch whose entries all cancelled out never reached the store.
                        let elapsed = started.duration(to: .now).components
                        commitLatency.recordNanoseconds(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
                    }
                    break
                } catch {
                    commitFailures.increment()
                    let wasDown = state.withLock { state -> Bool in
                        let was = state.storeDown
                        state.storeDown = true
                        return was
                    }
                    if !wasDown {
                        logger.warning(
                            "\(names.store) unavailable; retrying with backoff",
                            metadata: ["error": "\(String(reflecting: error))"]
                        )
                        onAvailabilityChange?(false)
                    }
                    if Task.isCancelled {
                        // The process is going down hard (cancelled, not a graceful shutdown): retrying
                        // would hang it. Say what is abandoned.
                        let abandoned = batch.count + state.withLock { $0.buffer.count }
                        logger.error(
                            "\(names.store) unavailable at cancellation; abandoning \(names.abandoned.what)",
                            metadata: [names.abandoned.countKey: "\(abandoned)"]
                        )
                        return
                    }
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(5))
                }
            }
            backoff = .milliseconds(100)
            let (waiters, recovered, level) = state.withLock { state -> (Deque<CheckedContinuation<Void, Never>>, Bool, (count: Int, bytes: Int)) in
                state.writing = 0
                state.writingBytes = 0
                let recovered = state.storeDown
                state.storeDown = false
                let waiters = state.spaceWaiters
                state.spaceWaiters.removeAll()
                return (waiters, recovered, (state.buffer.count, state.buffer.bytes))
            }
            if recovered {
                logger.notice("\(names.store) available again")
                onAvailabilityChange?(true)
            }
            batchSize.record(written)
            committed.increment(by: written)
            // Acknowledge after commit; the batch no longer counts against the caps.
            for entry in batch { entry.onCommit?() }
            for waiter in waiters { waiter.resume() }
            depthGauge.record(level.count)
            bytesGauge?.record(level.bytes)
            backlog = level.count > 0
        }
    }

    /// Waits until the batch is full, the queue is closed, batchMaxDelay has passed, or the batch stopped
    /// growing: nothing arrived for a tenth of batchMaxDelay (at least 0.5 ms). Publishers whose
    /// in-flight window is full send nothing more until this batch commits, so waiting out the whole
    /// delay for them would only add it to every acknowledgement.
    private func waitForBatchToFill() async {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(batchMaxDelay)
        let quiet = max(Duration.microseconds(500), .seconds(batchMaxDelay / 10))
        var seen = state.withLock { $0.buffer.count }
        while true {
            let now = clock.now
            if now >= deadline { return }
            let slice = min(quiet, now.duration(to: deadline))
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await Task.sleep(for: slice) }
                group.addTask { await self.waitUntilFullOrClosed() }
                await group.next()
                group.cancelAll()
            }
            let (count, done) = state.withLock { ($0.buffer.count, $0.closed || $0.buffer.count >= batchMaxEntries) }
            if done || count == seen { return }
            seen = count
        }
    }

    private func waitUntilFullOrClosed() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.closed || state.buffer.count >= batchMaxEntries || Task.isCancelled { return true }
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

    /// Suspends until an entry is queued; returns false once closed and empty.
    private func waitForWork() async -> Bool {
        while true {
            let ready = state.withLock { state -> Bool? in
                if state.buffer.count > 0 { return true }
                if state.closed { return false }
                return nil
            }
            if let ready { return ready }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.buffer.count > 0 || state.closed { return true }
                    state.writerWaiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }
}

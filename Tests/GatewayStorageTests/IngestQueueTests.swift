import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import Synchronization
import Testing

/// `IngestQueue` against ``FakeTelemetryStore``: batching, group commit, acknowledgement timing,
/// overflow policies, retries and shutdown. Each test starts the writer (`run()`) in a task and ends by
/// closing the queue and awaiting that task, so a writer that never returns fails the time limit.
@Suite("IngestQueue", .timeLimit(.minutes(1)))
struct IngestQueueTests {
    func makeQueue(
        _ store: FakeTelemetryStore,
        _ configure: (inout IngestConfiguration) -> Void = { _ in }
    ) -> IngestQueue {
        var configuration = IngestConfiguration()
        configuration.batchMaxDelay = 0.001
        configure(&configuration)
        return IngestQueue(configuration: configuration, store: store, logger: silentLogger)
    }

    @Test("23 records with max_rows 5 commit as 5, 5, 5, 5, 3, in order")
    func batchBoundaries() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) { $0.batchMaxRows = 5 }
        let commits = Recorder<Int>()
        for i in 0..<23 {
            #expect(await queue.submit(record(i), onCommit: { commits.append(i) }) == .accepted)
        }
        #expect(queue.depth == 23)
        let writer = Task { await queue.run() }
        await store.waitUntil("23 committed records") { $0.committedRecords.count == 23 }
        queue.close()
        await writer.value

        let batches = store.snapshot.committed
        #expect(batches.map(\.count) == [5, 5, 5, 5, 3])
        #expect(payloads(store.snapshot.committedRecords) == (0..<23).map { "m\($0)" })
        #expect(commits.all == Array(0..<23), "onCommit runs once per record, in order")
        #expect(queue.isEmpty)
    }

    @Test("Records arriving while a batch is being written share the next batch (group commit)")
    func groupCommit() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) { $0.batchMaxRows = 100 }
        let writer = Task { await queue.run() }
        store.hold()
        #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
        await store.waitUntil("the first insert to be held") { $0.held == 1 }
        for i in 1...7 {
            #expect(await queue.submit(record(i), onCommit: nil) == .accepted)
        }
        store.release()
        await store.waitUntil("8 committed records") { $0.committedRecords.count == 8 }
        queue.close()
        await writer.value
        #expect(store.snapshot.committed.map(payloads) == [["m0"], (1...7).map { "m\($0)" }])
        #expect(store.snapshot.attempts.count == 2, "two transactions for eight records")
    }

    @Test("A batch that fills up during max_delay commits at once, not when the delay ends")
    func fullBatchDoesNotWaitForDelay() async {
        let store = FakeTelemetryStore()
        // A long delay: the first record waits for company, but a full batch must not wait any longer.
        let queue = makeQueue(store) {
            $0.batchMaxRows = 5
            $0.batchMaxDelay = 10
        }
        let writer = Task { await queue.run() }
        #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
        // The lone record waits for its batch to fill (bounded negative check: the writer is now in its delay).
        #expect(await staysFalse(for: .milliseconds(300)) { !store.snapshot.attempts.isEmpty }, "a 1-row batch did not wait for max_delay")
        for i in 1..<5 {
            #expect(await queue.submit(record(i), onCommit: nil) == .accepted)
        }
        await store.waitUntil("the full batch of 5 committed well before max_delay (10 s) ends", timeout: .seconds(3)) {
            $0.committedRecords.count == 5
        }
        queue.close()
        await writer.value
        #expect(store.snapshot.committed.map(\.count) == [5])
    }

    @Test("close() during max_delay flushes at once instead of waiting the delay out")
    func closeDuringDelay() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) {
            $0.batchMaxRows = 5
            $0.batchMaxDelay = 10
        }
        let finished = Recorder<Bool>()
        let writer = Task {
            await queue.run()
            finished.append(true)
        }
        #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
        #expect(await staysFalse(for: .milliseconds(300)) { !store.snapshot.attempts.isEmpty })
        let closedAt = ContinuousClock.now
        queue.close()
        await poll("run() to return after close() (max_delay is 10 s)", timeout: .seconds(3)) { finished.count == 1 }
        await writer.value
        print("close() during max_delay: run() returned after \(ContinuousClock.now - closedAt)")
        #expect(payloads(store.snapshot.committedRecords) == ["m0"])
    }

    @Test("onCommit runs only after the batch's insert returned")
    func onCommitAfterInsert() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store)
        let writer = Task { await queue.run() }
        store.hold()
        let callbacks = Recorder<Int>()
        for i in 0..<3 {
            let accepted = await queue.submit(record(i)) {
                // By the time the callback runs, the store holds this record as committed.
                #expect(payloads(store.snapshot.committedRecords).contains("m\(i)"), "onCommit of m\(i) before its commit")
                callbacks.append(i)
            }
            #expect(accepted == .accepted)
        }
        await store.waitUntil("an insert to be held") { $0.held >= 1 }
        #expect(callbacks.count == 0, "no onCommit while the insert has not returned")
        #expect(store.snapshot.committed.isEmpty)
        store.release()
        await poll("3 onCommit callbacks") { callbacks.count == 3 }
        #expect(callbacks.all == [0, 1, 2])
        queue.close()
        await writer.value
    }

    @Test("backpressure: a full queue suspends submit until a commit frees room; nothing is lost")
    func backpressure() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) {
            $0.maxQueuedMessages = 3
            $0.batchMaxRows = 3
            $0.overflow = .backpressure
        }
        let writer = Task { await queue.run() }
        store.hold()
        #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
        await store.waitUntil("the first insert to be held") { $0.held == 1 }
        // The held record still counts against the cap: two more fit.
        #expect(await queue.submit(record(1), onCommit: nil) == .accepted)
        #expect(await queue.submit(record(2), onCommit: nil) == .accepted)
        #expect(queue.depth == 3)

        let returned = Recorder<Int>()
        let publisher = Task {
            for i in 3..<10 {
                let result = await queue.submit(record(i), onCommit: nil)
                #expect(result == .accepted)
                returned.append(i)
            }
        }
        #expect(
            await staysFalse(for: .milliseconds(300)) { returned.count > 0 },
            "submit returned although the queue was full"
        )
        #expect(queue.depth == 3, "the queue grew past max_messages")
        store.release()
        await publisher.value
        #expect(returned.all == Array(3..<10))
        await store.waitUntil("all 10 records committed") { $0.committedRecords.count == 10 }
        queue.close()
        await writer.value
        #expect(payloads(store.snapshot.committedRecords) == (0..<10).map { "m\($0)" })
        #expect(store.snapshot.committed.allSatisfy { $0.count <= 3 })
    }

    @Test("trySubmit: queues without waiting while there is room; a full backpressure queue returns nil and takes no hold")
    func trySubmitNeverWaits() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) {
            $0.maxQueuedMessages = 2
            $0.batchMaxRows = 2
            $0.overflow = .backpressure
        }
        let writer = Task { await queue.run() }
        store.hold()
        let holdsTaken = Recorder<Int>()
        let commits = Recorder<Int>()
        func hold(_ i: Int) -> (@Sendable () -> Void)? {
            holdsTaken.append(i)
            return { commits.append(i) }
        }
        #expect(queue.trySubmit(record(0), onCommit: { hold(0) }) == .accepted)
        await store.waitUntil("the first insert to be held") { $0.held == 1 }
        #expect(queue.trySubmit(record(1), onCommit: { hold(1) }) == .accepted)
        // Full: nothing queued, and the commit callback (a commit gate's hold) was never asked for.
        #expect(queue.trySubmit(record(2), onCommit: { hold(2) }) == nil)
        #expect(queue.depth == 2)
        #expect(holdsTaken.all == [0, 1])
        store.release()
        await store.waitUntil("2 committed records") { $0.committedRecords.count == 2 }
        await poll("the queue to empty") { queue.isEmpty }
        #expect(queue.trySubmit(record(3), onCommit: { hold(3) }) == .accepted)
        await store.waitUntil("3 committed records") { $0.committedRecords.count == 3 }
        queue.close()
        await writer.value
        #expect(payloads(store.snapshot.committedRecords) == ["m0", "m1", "m3"])
        #expect(commits.all == [0, 1, 3], "onCommit ran once for each queued record")
        // After close, a record is refused at once (not left waiting).
        #expect(queue.trySubmit(record(4), onCommit: { hold(4) }) == .rejected)
        #expect(holdsTaken.all == [0, 1, 3])
    }

    @Test("reject: a full queue (messages cap) returns .rejected at once")
    func rejectWhenFull() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) {
            $0.maxQueuedMessages = 2
            $0.overflow = .reject
        }
        let writer = Task { await queue.run() }
        store.hold()
        #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
        #expect(await queue.submit(record(1), onCommit: nil) == .accepted)
        #expect(await queue.submit(record(2), onCommit: nil) == .rejected)
        #expect(await queue.submit(record(3), onCommit: nil) == .rejected)
        store.release()
        await store.waitUntil("2 committed records") { $0.committedRecords.count == 2 }
        // Room again once committed.
        await poll("the queue to empty") { queue.isEmpty }
        #expect(await queue.submit(record(4), onCommit: nil) == .accepted)
        queue.close()
        await writer.value
        #expect(payloads(store.snapshot.committedRecords) == ["m0", "m1", "m4"])
    }

    @Test("reject: the byte cap counts too")
    func rejectOnBytes() async {
        let store = FakeTelemetryStore()
        let big = record(0, payloadBytes: 3_000)
        let queue = makeQueue(store) {
            $0.maxQueuedMessages = 1_000
            $0.maxQueuedBytes = 2 * big.byteCount
            $0.overflow = .reject
        }
        let writer = Task { await queue.run() }
        store.hold()
        #expect(await queue.submit(record(0, payloadBytes: 3_000), onCommit: nil) == .accepted)
        #expect(await queue.submit(record(1, payloadBytes: 3_000), onCommit: nil) == .accepted)
        #expect(await queue.submit(record(2, payloadBytes: 3_000), onCommit: nil) == .rejected)
        store.release()
        queue.close()
        await writer.value
        #expect(store.snapshot.committedRecords.count == 2)
    }

    @Test(
        "A record larger than max_bytes is taken into an empty queue and committed alone",
        arguments: IngestConfiguration.Overflow.allCases
    )
    func oversizeRecord(overflow: IngestConfiguration.Overflow) async {
        let store = FakeTelemetryStore()
        let big = record(0, payloadBytes: 4_000)
        let queue = makeQueue(store) {
            $0.maxQueuedBytes = big.byteCount / 2
            $0.overflow = overflow
        }
        let writer = Task { await queue.run() }
        store.hold()
        // Refusing it here would stall its publisher for good (backpressure) or refuse it on every retry (reject).
        #expect(await queue.submit(big, onCommit: nil) == .accepted)
        await store.waitUntil("the oversize record's insert to be held") { $0.held == 1 }
        // Nothing fits beside it.
        switch overflow {
        case .reject:
            #expect(await queue.submit(record(1), onCommit: nil) == .rejected)
            store.release()
        case .backpressure:
            let second = Task { await queue.submit(record(1), onCommit: nil) }
            #expect(await staysFalse(for: .milliseconds(300)) { queue.depth > 1 }, "a record joined the oversize one")
            store.release()
            #expect(await second.value == .accepted)
        }
        let expected = overflow == .reject ? 1 : 2
        await store.waitUntil("\(expected) committed records") { $0.committedRecords.count == expected }
        queue.close()
        await writer.value
        #expect(store.snapshot.committed.first?.map(\.payload.readableBytes) == [4_000], "the oversize record committed alone")
    }

    @Test("Store outage: logged once down, once available again; cancelled while down, run() ends and says what it abandons")
    func outageLogsAndCancellation() async {
        let store = FakeTelemetryStore()
        let lines = LogLines()
        let availability = Recorder<Bool>()
        var configuration = IngestConfiguration()
        configuration.batchMaxDelay = 0.001
        configuration.batchMaxRows = 2
        let queue = IngestQueue(
            configuration: configuration,
            store: store,
            logger: Logger(label: "iotgw.storage-tests", factory: { _ in lines }),
            onAvailabilityChange: { availability.append($0) }
        )
        let writer = Task { await queue.run() }
        store.fail(next: 2)
        #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
        await store.waitUntil("the record committed after two failures") { $0.committedRecords.count == 1 }
        await poll("availability back") { availability.count == 2 }
        #expect(availability.all == [false, true])
        #expect(lines.all.map(\.message) == ["telemetry store unavailable; retrying with backoff", "telemetry store available again"])
        #expect(lines.all.map(\.level) == [.warning, .notice])

        store.failUntilTold()
        for i in 1...5 {
            #expect(await queue.submit(record(i), onCommit: nil) == .accepted)
        }
        await store.waitUntil("a failed attempt") { $0.failures >= 3 }
        writer.cancel()
        await writer.value
        let last = lines.all.last
        #expect(last?.message == "telemetry store unavailable at cancellation; abandoning queued records")
        #expect(last?.level == .error)
        #expect(last?.metadata["iotgw.ingest.abandoned"] == "5", "the batch being retried and the records queued behind it")
        #expect(await queue.submit(record(9), onCommit: nil) == .rejected, "cancellation closes the queue")
        #expect(store.snapshot.committedRecords.count == 1)
    }

    @Test("A fixed number of failures (3) is retried through; nothing lost")
    func retryFixedFailures() async {
        let store = FakeTelemetryStore()
        store.fail(next: 3)
        let queue = makeQueue(store)
        let writer = Task { await queue.run() }
        for i in 0..<5 {
            #expect(await queue.submit(record(i), onCommit: nil) == .accepted)
        }
        await store.waitUntil("5 committed records") { $0.committedRecords.count == 5 }
        #expect(store.snapshot.failures == 3)
        await poll("degraded to clear") { !queue.isDegraded }
        queue.close()
        await writer.value
        #expect(payloads(store.snapshot.committedRecords) == (0..<5).map { "m\($0)" })
    }

    @Test("close() commits everything queued, then run() returns; later submits are rejected")
    func closeFlushes() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store) {
            $0.batchMaxRows = 5
        }
        let writer = Task { await queue.run() }
        store.hold()
        let commits = Recorder<Int>()
        for i in 0..<23 {
            #expect(await queue.submit(record(i), onCommit: { commits.append(i) }) == .accepted)
        }
        queue.close()
        #expect(await queue.submit(record(99), onCommit: nil) == .rejected, "accepted a record after close()")
        store.release()
        await writer.value
        #expect(payloads(store.snapshot.committedRecords) == (0..<23).map { "m\($0)" })
        #expect(commits.all == Array(0..<23))
        #expect(queue.isEmpty)
    }

    @Test("close() on an idle queue ends run() at once")
    func closeIdle() async {
        let store = FakeTelemetryStore()
        let queue = makeQueue(store)
        let writer = Task { await queue.run() }
        queue.close()
        await writer.value
        #expect(store.snapshot.attempts.isEmpty)
    }

    @Test("Topic filters: stores(topic:) follows storage.topics; $SYS is never matched by #")
    func topicFilters() {
        let store = FakeTelemetryStore()
        let all = makeQueue(store)
        #expect(all.stores(topic: "a/b"))
        #expect(!all.stores(topic: "$SYS/broker/uptime"))
        let some = makeQueue(store) { $0.topics = ["sensors/+/temp", "logs/#"] }
        #expect(some.stores(topic: "sensors/1/temp"))
        #expect(some.stores(topic: "logs"))
        #expect(some.stores(topic: "logs/x/y"))
        #expect(!some.stores(topic: "sensors/1/humidity"))
        #expect(!some.stores(topic: "other"))
    }
}

/// A log handler keeping every line it is given (level, message, metadata).
private final class LogLines: LogHandler, Sendable {
    struct Line: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }
    private let lines = Mutex<[Line]>([])

    var all: [Line] { lines.withLock { $0 } }

    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }
    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    subscript(metadataKey _: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        let line = Line(
            level: event.level,
            message: event.message.description,
            metadata: (event.metadata ?? [:]).mapValues(\.description)
        )
        lines.withLock { $0.append(line) }
    }
}

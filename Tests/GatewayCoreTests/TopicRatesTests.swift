@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

/// The dashboard's heavy-hitters sketch (exact with fewer topics than slots, within its error bound
/// otherwise), its window, and the watch box's bounds.
@Suite("Topic rates and watch")
struct TopicRatesTests {
    @Test("off until enabled, and forgets everything when turned off")
    func enabling() {
        let rates = TopicRates(slots: 4, windowSeconds: 60, stripes: 1)
        rates.record("a")
        rates.tick()
        #expect(rates.report(limit: 10).total == 0)
        rates.setEnabled(true)
        rates.record("a")
        rates.tick()
        #expect(rates.report(limit: 10).topics.map(\.topic) == ["a"])
        rates.setEnabled(false)
        #expect(rates.report(limit: 10) == TopicRates.Report(topics: [], total: 0, seconds: 0, maxError: 0))
    }

    @Test("exact counts while there are fewer topics than slots")
    func exact() {
        let rates = TopicRates(slots: 16, windowSeconds: 60, stripes: 4)
        rates.setEnabled(true)
        var truth: [String: Int] = [:]
        for second in 0..<3 {
            for index in 0..<200 {
                let topic = "t/\((index * 7 + second) % 10)"
                rates.record(topic)
                truth[topic, default: 0] += 1
            }
            rates.tick()
        }
        let report = rates.report(limit: 100)
        #expect(report.total == 600 && report.seconds == 3)
        #expect(Dictionary(uniqueKeysWithValues: report.topics.map { ($0.topic, $0.count) }) == truth)
        #expect(report.topics.first.map { $0.perSecond == Double($0.count) / 3 } == true)
    }

    @Test("within 2N/k with many more topics than slots, and the heavy hitters are found")
    func errorBound() {
        let slots = 32
        let rates = TopicRates(slots: slots, windowSeconds: 5, stripes: 1)
        rates.setEnabled(true)
        var truth: [String: Int] = [:]
        var generator = SplitMix(seed: 42)
        for _ in 0..<8 {  // more seconds than the window: the oldest fall out
            truth = [:]
            for _ in 0..<5 {
                for _ in 0..<2_000 {
                    // A skewed stream: 5 hot topics take about half the traffic, 5,000 cold ones the rest.
                    let hot = generator.next() % 2 == 0
                    let topic = hot ? "hot/\(generator.next() % 5)" : "cold/\(generator.next() % 5_000)"
                    rates.record(topic)
                    truth[topic, default: 0] += 1
                }
                rates.tick()
            }
        }
        let report = rates.report(limit: 1_000)
        let total = truth.values.reduce(0, +)
        #expect(report.total == total && report.seconds == 5)
        #expect(report.maxError == 2 * total / slots)
        let estimates = Dictionary(uniqueKeysWithValues: report.topics.map { ($0.topic, $0.count) })
        for (topic, count) in truth {
            #expect(abs((estimates[topic] ?? 0) - count) <= report.maxError, "\(topic): \(estimates[topic] ?? 0) vs \(count)")
        }
        #expect(Set(report.topics.prefix(5).map(\.topic)) == Set((0..<5).map { "hot/\($0)" }))
    }

    @Test("the Space-Saving table keeps its counts summing to the total and evicts the least counted")
    func spaceSaving() {
        var sketch = SpaceSaving(capacity: 3)
        for topic in ["a", "a", "a", "b", "b", "c", "d"] { sketch.add(topic) }
        let counts = Dictionary(uniqueKeysWithValues: sketch.entries.map { ($0.topic, $0.count) })
        // "c" (1) was the least counted when "d" came: d inherits 1 + 1.
        #expect(counts == ["a": 3, "b": 2, "d": 2])
        #expect(sketch.total == 7)
        let drained = sketch.drain()
        #expect(drained.total == 7 && sketch.total == 0 && sketch.entries.isEmpty)
    }

    @Test("Space-Saving invariants hold through many evictions (table deletions keep every topic findable)")
    func spaceSavingInvariants() {
        var generator = SplitMix(seed: 7)
        for capacity in [1, 3, 8, 33] {
            var sketch = SpaceSaving(capacity: capacity)
            var truth: [String: Int] = [:]
            for _ in 0..<5_000 {
                // Skewed: topic i with probability about 1/(i+1).
                let topic = "t/\(generator.next() % (1 + generator.next() % 200))"
                sketch.add(topic)
                truth[topic, default: 0] += 1
            }
            let entries = sketch.entries
            let counts = Dictionary(entries.map { ($0.topic, $0.count) }, uniquingKeysWith: { _, _ in -1 })
            #expect(counts.count == entries.count && counts.count == min(capacity, truth.count), "capacity \(capacity)")
            #expect(entries.map(\.count).reduce(0, +) == 5_000)
            let bound = 5_000 / capacity
            for (topic, count) in counts {
                let real = truth[topic] ?? 0
                #expect(count >= real && count - real <= bound, "\(topic): \(count) vs \(real)")
            }
            for (topic, real) in truth where real > bound {
                #expect(counts[topic] != nil, "\(topic) (\(real) > \(bound)) must be tracked")
            }
            // Still counting in place after all that: a tracked topic's next message finds its slot.
            if let (topic, count) = counts.first {
                sketch.add(topic)
                #expect(sketch.entries.first { $0.topic == topic }?.count == count + 1)
            }
        }
    }

    @Test("records from many threads at once")
    func concurrent() async {
        let rates = TopicRates(slots: 64, windowSeconds: 60)
        rates.setEnabled(true)
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for index in 0..<1_000 { rates.record("c/\((index + task) % 20)") }
                }
            }
        }
        rates.tick()
        let report = rates.report(limit: 100)
        #expect(report.total == 8_000 && report.topics.count == 20)
        #expect(report.topics.allSatisfy { $0.count == 400 })
    }

    @Test("the broker counts routed messages only while enabled")
    func brokerHook() async {
        let broker = makeBroker()
        let client = TestClient(broker)
        await client.connectAccepted("pub")
        await client.publish("x/1", "before")
        broker.topicRates.setEnabled(true)
        await client.publish("x/1", "a")
        await client.publish("x/2", "b")
        await client.publish("x/1", "c")
        broker.topicRates.tick()
        let report = broker.topicRates.report(limit: 10)
        #expect(report.topics.map(\.topic) == ["x/1", "x/2"] && report.topics.map(\.count) == [2, 1])
    }

    @Test("a watch sees matching messages, bounded in rate and payload size")
    func watch() {
        let watch = TopicWatch()
        #expect(watch.start(filter: "a/#/b") == nil)
        #expect(watch.start(filter: "$share/g/a") == nil)
        let watcher = watch.start(filter: "s/+")!
        #expect(watch.watcherCount == 1)
        let big = ByteBuffer(repeating: 0x41, count: 5_000)
        watch.offer(Message(topic: "s/1", payload: big, qos: .atLeastOnce, retain: true, publisherClientID: "p"))
        watch.offer(Message(topic: "other", payload: ByteBuffer(string: "no"), qos: .atMostOnce, retain: false))
        let (first, skipped) = watcher.take()
        #expect(skipped == 0 && first.count == 1)
        #expect(first[0].payload.count == TopicWatch.Watcher.maxPayloadBytes && first[0].payloadSize == 5_000)
        #expect(first[0].topic == "s/1" && first[0].qos == .atLeastOnce && first[0].retain && first[0].publisherClientID == "p")
        for index in 0..<100 {
            watch.offer(Message(topic: "s/\(index)", payload: ByteBuffer(string: "m"), qos: .atMostOnce, retain: false))
        }
        let (burst, dropped) = watcher.take()
        // At most maxPerSecond in one second; the rest are counted, not held. (A second boundary
        // in the middle of the burst allows one more second's worth.)
        #expect(burst.count <= 2 * TopicWatch.Watcher.maxPerSecond && burst.count >= TopicWatch.Watcher.maxPerSecond - 1)
        #expect(burst.count + dropped == 100)
        watch.stop(watcher)
        #expect(watch.watcherCount == 0)
    }
}

/// A small deterministic generator for test streams.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int(truncatingIfNeeded: (z ^ (z >> 31)) >> 1)
    }
}

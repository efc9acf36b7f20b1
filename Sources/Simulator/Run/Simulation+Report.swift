import Histogram

extension Simulation {
    /// Merges what the engines measured into a report and checks the scenario's tolerances.
    static func report(
        plan: SimulationPlan,
        results: [EngineResult],
        readySet: [Bool],
        streams expectedStreams: Int,
        connectSeconds: Double,
        publishStart: UInt64,
        publishSeconds: Double
    ) -> SimulationReport {
        var counters = LiveCounters()
        var latency = Ledger.makeHistogram()
        var roundTrips = Ledger.makeHistogram()
        var sent: [Int: UInt64] = [:]
        var received: [Int: [Int: SequenceTracker]] = [:]
        var lastDelivery: UInt64 = 0
        for result in results {
            lastDelivery = Swift.max(lastDelivery, result.lastDelivery)
            counters.add(result.counters)
            latency.add(result.latency)
            roundTrips.add(result.roundTrips)
            sent.merge(result.sent, uniquingKeysWith: +)
            received.merge(result.streams) { first, _ in first }  // each receiver lives on exactly one engine
        }

        // Walk the expected streams: every ready receiver of every ready publisher.
        var expected: UInt64 = 0
        var delivered: UInt64 = 0
        var duplicates: UInt64 = 0
        var unexpected = counters.unexpected
        var streams = 0
        var expectedPairs = Set<Int64>()
        for (publisher, receivers) in plan.receiversByPublisher where readySet[publisher] {
            let published = sent[publisher] ?? 0
            for receiver in receivers where readySet[receiver] {
                streams += 1
                expectedPairs.insert(Int64(receiver) << 32 | Int64(publisher))
                expected += published
                let tracker = received[receiver]?[publisher]
                let unique = tracker?.unique ?? 0
                // More distinct messages than were sent would be a stale or forged probe: count the excess apart.
                delivered += Swift.min(unique, published)
                unexpected += unique > published ? unique - published : 0
                duplicates += tracker?.duplicates ?? 0
            }
        }
        // Deliveries on streams nobody expected (a receiver that was not subscribed to that publisher).
        for (receiver, byPublisher) in received {
            for (publisher, tracker) in byPublisher where !expectedPairs.contains(Int64(receiver) << 32 | Int64(publisher)) {
                unexpected += tracker.unique
                duplicates += tracker.duplicates
            }
        }
        let lost = expected - delivered
        let lossRatio = expected > 0 ? Double(lost) / Double(expected) : 0
        let requestsLost = counters.requestsSent > counters.repliesReceived ? counters.requestsSent - counters.repliesReceived : 0
        let readyCount = readySet.reduce(0) { $0 + ($1 ? 1 : 0) }
        let planned = plan.clients.count
        let notReady = planned - readyCount

        var failures: [String] = []
        let tolerance = plan.scenario.lossTolerance
        if lossRatio > tolerance {
            failures.append("lost \(lost) of \(expected) expected deliveries (\(percent(lossRatio))), tolerance \(percent(tolerance))")
        }
        if counters.requestsSent > 0, Double(requestsLost) / Double(counters.requestsSent) > tolerance {
            failures.append("\(requestsLost) of \(counters.requestsSent) requests unanswered, tolerance \(percent(tolerance))")
        }
        let failed = notReady + counters.disconnects
        if Double(failed) / Double(Swift.max(planned, 1)) > plan.scenario.connect.failureTolerance {
            failures.append("\(notReady) of \(planned) clients not ready and \(counters.disconnects) dropped, tolerance \(percent(plan.scenario.connect.failureTolerance))")
        }
        if expectedStreams != streams {
            failures.append("internal: \(expectedStreams) streams planned but \(streams) counted")
        }

        // From the first publish to the last delivery: with the drain, how long the deliveries really took.
        let deliverySeconds = lastDelivery > publishStart ? Double(lastDelivery - publishStart) / 1e9 : 0
        var byTransport: [String: Int] = [:]
        for client in plan.clients { byTransport[client.transport.rawValue, default: 0] += 1 }
        return SimulationReport(
            scenario: plan.scenario.name,
            protocolVersion: plan.scenario.protocolVersion.rawValue,
            passed: failures.isEmpty,
            failures: failures,
            clients: .init(
                planned: planned, byTransport: byTransport, ready: readyCount,
                connectFailures: notReady, disconnects: counters.disconnects,
                connectSeconds: connectSeconds, connectRate: connectSeconds > 0 ? Double(readyCount) / connectSeconds : 0
            ),
            messages: .init(
                published: counters.published, publishErrors: counters.publishErrors, heldBack: counters.heldBack, acknowledged: counters.acknowledged,
                streams: streams, expected: expected, delivered: delivered, lost: lost, duplicates: duplicates,
                unexpected: unexpected, retainedIgnored: counters.retainedIgnored, lossRatio: lossRatio,
                publishSeconds: publishSeconds,
                publishRate: publishSeconds > 0 ? Double(counters.published) / publishSeconds : 0,
                deliveryRate: publishSeconds > 0 ? Double(delivered) / publishSeconds : 0,
                deliverySeconds: deliverySeconds,
                sustainedDeliveryRate: deliverySeconds > 0 ? Double(delivered) / deliverySeconds : 0
            ),
            latency: summary(latency),
            requests: .init(sent: counters.requestsSent, answered: counters.repliesReceived, lost: requestsLost, roundTrip: summary(roundTrips))
        )
    }

    private static func percent(_ ratio: Double) -> String {
        "\((ratio * 100_000).rounded() / 1000)%"
    }

    /// Milliseconds from a nanosecond histogram.
    static func summary(_ histogram: Histogram<UInt64>) -> SimulationReport.Latency {
        let count = histogram.totalCount
        guard count > 0 else { return .init(count: 0, min: 0, mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0) }
        func ms(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1e6 }
        return .init(
            count: count, min: ms(histogram.min), mean: histogram.mean / 1e6,
            p50: ms(histogram.valueAtPercentile(50)), p90: ms(histogram.valueAtPercentile(90)),
            p99: ms(histogram.valueAtPercentile(99)), p999: ms(histogram.valueAtPercentile(99.9)),
            max: ms(histogram.max)
        )
    }
}

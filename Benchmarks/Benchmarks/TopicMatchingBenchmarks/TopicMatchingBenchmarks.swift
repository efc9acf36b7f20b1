import Benchmark
import GatewayCore

/// Topic matching in GatewayCore's subscription index with 100,000 subscriptions, as routing does it.
///
/// The subscriptions look like a fleet: 90,000 devices each subscribed to their exact command topic
/// (`devices/d{n}/commands`), 9,000 per-site wildcards (`sites/s{n}/+/telemetry`) and 1,000 multi-level
/// wildcards (`fleet/f{n}/#`), plus 10 consumers of `devices/+/telemetry`. Each operation matches one topic;
/// throughput is matches (topic lookups) per second. 1,000 lookups per iteration (`scalingFactor: .kilo`).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 10_000
    )

    var subscriptions: [(clientID: String, filter: String)] = []
    subscriptions.reserveCapacity(100_010)
    for n in 0..<90_000 { subscriptions.append(("d\(n)", "devices/d\(n)/commands")) }
    for n in 0..<9_000 { subscriptions.append(("site\(n)", "sites/s\(n)/+/telemetry")) }
    for n in 0..<1_000 { subscriptions.append(("fleet\(n)", "fleet/f\(n)/#")) }
    for n in 0..<10 { subscriptions.append(("consumer\(n)", "devices/+/telemetry")) }
    let index = SubscriptionIndexBenchmark(subscriptions: subscriptions)
    precondition(index.count == 100_010)

    // Topics cycled through so the lookups do not all hit the same path.
    let commands = (0..<1_000).map { "devices/d\($0 * 89)/commands" }
    let telemetry = (0..<1_000).map { "devices/d\($0 * 89)/telemetry" }
    let sites = (0..<1_000).map { "sites/s\($0 * 9)/room\($0 % 7)/telemetry" }
    let deep = (0..<1_000).map { "fleet/f\($0)/truck/\($0 % 13)/gps" }
    let misses = (0..<1_000).map { "unknown/t\($0)/x" }

    let cases: [(name: String, topics: [String], expected: Int)] = [
        ("exact topic, 1 match", commands, 1),
        ("single-level wildcard, 10 matches", telemetry, 10),
        ("+ in the middle, 1 match", sites, 1),
        ("# at depth 2, 1 match", deep, 1),
        ("no match", misses, 0),
    ]
    for (name, topics, expected) in cases {
        var probe = index
        precondition(topics.allSatisfy { probe.matchCount(topic: $0) == expected }, "\(name): unexpected match count")
        Benchmark("match 100k subscriptions: \(name)") { benchmark in
            var index = index
            for iteration in benchmark.scaledIterations {
                blackHole(index.matchCount(topic: topics[iteration]))
            }
        }
    }
}

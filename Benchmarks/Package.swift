// swift-tools-version: 6.1
import PackageDescription

/// Micro-benchmarks of the MQTT codec and the subscription index, in their own package so that
/// ordo-one/benchmark (and its malloc interposer) never reach the daemon's dependency graph.
///
///     cd Benchmarks && swift package benchmark            # or: make microbench (from the root)
///
/// The root package exposes `MQTTCodec` and `GatewayCore` as library products for this package only.
let package = Package(
    name: "iotgw-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "iotgw", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        // Encode and decode of CONNECT, PUBLISH (QoS 0 and 1, 64-byte payload), SUBSCRIBE and PUBACK.
        .executableTarget(
            name: "CodecBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MQTTCodec", package: "iotgw"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/CodecBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Topic matching against 100,000 subscriptions in GatewayCore's subscription index.
        .executableTarget(
            name: "TopicMatchingBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "GatewayCore", package: "iotgw"),
            ],
            path: "Benchmarks/TopicMatchingBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)

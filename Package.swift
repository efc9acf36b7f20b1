// swift-tools-version: 6.1
import PackageDescription

/// Settings every target of ours shares: Swift 6 language mode plus the upcoming features
/// STYLE.md asks for (explicit `any`, internal imports by default, member import visibility).
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "iotgw",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "iotgw", targets: ["iotgw"]),
        // For the micro-benchmarks in Benchmarks/ (a separate package, so its dependencies never reach the daemon).
        .library(name: "MQTTCodec", targets: ["MQTTCodec"]),
        .library(name: "GatewayCore", targets: ["GatewayCore"]),
        // For the fuzz targets in Fuzz/ (a separate package built with -sanitize=fuzzer,address).
        .library(name: "GatewayConfig", targets: ["GatewayConfig"]),
        .library(name: "GatewayTransport", targets: ["GatewayTransport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
    ],
    targets: [
        // Wire format: MQTT 3.1.1 and 5.0 packets as value types. NIOCore only, no I/O.
        .target(
            name: "MQTTCodec",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio")
            ],
            swiftSettings: swiftSettings
        ),
        // Broker semantics: sessions, subscription index, retained store, QoS, bounded queues, router.
        .target(
            name: "GatewayCore",
            dependencies: [
                "MQTTCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // Telemetry storage: SQLite (embedded default) or PostgreSQL behind a small connection pool, migrations.
        .target(
            name: "GatewayStorage",
            dependencies: [
                "GatewayCore",
                "MQTTCodec",
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The configuration file model (YAML or JSON) and its validation.
        .target(
            name: "GatewayConfig",
            dependencies: [
                "GatewayCore",
                "MQTTCodec",
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        // NIO listeners: MQTT over TCP and TLS, MQTT over WebSocket and the JSON WebSocket API; one
        // task per connection.
        .target(
            name: "GatewayTransport",
            dependencies: [
                "GatewayCore",
                "MQTTCodec",
                "CZlib",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["Admin/Dashboard/dashboard.html"],
            swiftSettings: swiftSettings
        ),
        // The upstream bridge: libmosquitto on a thread of its own per bridge, feeding the broker.
        .target(
            name: "GatewayBridge",
            dependencies: [
                "GatewayCore",
                "MQTTCodec",
                "CMosquitto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The system zlib, for permessage-deflate (RFC 7692) on the WebSocket endpoints.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // glibc's malloc.h (malloc_trim), for returning memory after waves of disconnects.
        .systemLibrary(name: "CMalloc"),
        // libmosquitto and libwebsockets, used by the simulator (and the bridge) only.
        .systemLibrary(name: "CMosquitto", pkgConfig: "libmosquitto", providers: [.apt(["libmosquitto-dev"])]),
        .systemLibrary(name: "CWebSockets", pkgConfig: "libwebsockets", providers: [.apt(["libwebsockets-dev"])]),
        // Simulated devices. Never imports our codec or core: every simulation is an interoperability test.
        .target(
            name: "Simulator",
            dependencies: [
                "CMosquitto",
                "CWebSockets",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "iotgw",
            dependencies: [
                "GatewayCore",
                "GatewayConfig",
                "GatewayTransport",
                "GatewayStorage",
                "GatewayBridge",
                "MQTTCodec",
                "CMalloc",
                "Simulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MQTTCodecTests",
            dependencies: [
                "MQTTCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayCoreTests",
            dependencies: [
                "GatewayCore",
                "MQTTCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SimulatorTests",
            dependencies: ["Simulator"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayTransportTests",
            dependencies: [
                "GatewayTransport",
                "GatewayCore",
                "MQTTCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayStorageTests",
            dependencies: [
                "GatewayStorage",
                "GatewayCore",
                "MQTTCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayBridgeTests",
            dependencies: [
                "CMosquitto",
                "GatewayBridge",
                "GatewayCore",
                "MQTTCodec",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayConfigTests",
            dependencies: ["GatewayConfig", "GatewayCore"],
            swiftSettings: swiftSettings
        ),
    ]
)

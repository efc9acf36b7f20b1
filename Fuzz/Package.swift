// swift-tools-version: 6.1
import PackageDescription

/// libFuzzer targets for the parsers a peer or an operator feeds: the MQTT decoder, the WebSocket
/// handshake and frame handling, the JSON API, and the configuration loader. A separate package so the
/// sanitizer build never touches the daemon's; `make fuzz` and `make fuzz-smoke` build it with
/// `-sanitize=fuzzer,address` and `-DFUZZING` (see README.md, "Fuzzing"). Built without those flags,
/// each target replays the files it is given (for a debugger).
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "iotgw-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "iotgw", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(name: "FuzzSupport", swiftSettings: swiftSettings),
        .executableTarget(
            name: "FuzzMQTT",
            dependencies: [
                "FuzzSupport",
                .product(name: "MQTTCodec", package: "iotgw"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "FuzzWebSocket",
            dependencies: [
                "FuzzSupport",
                .product(name: "GatewayTransport", package: "iotgw"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "FuzzJSONAPI",
            dependencies: [
                "FuzzSupport",
                .product(name: "GatewayTransport", package: "iotgw"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "FuzzConfig",
            dependencies: [
                "FuzzSupport",
                .product(name: "GatewayConfig", package: "iotgw"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

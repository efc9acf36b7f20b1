import Benchmark
import MQTTCodec
import NIOCore

/// Encode and decode of the packets a gateway handles most, MQTT 3.1.1, one packet per operation.
///
/// Each benchmark runs 1,000 operations per iteration (`scalingFactor: .kilo`), so wall-clock figures are per
/// packet and throughput is packets per second. Decoding goes through `MQTTPacketParser` exactly as a connection
/// does (fixed-header checks, the remaining-length limit, then the body).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 10_000
    )

    let allocator = ByteBufferAllocator()
    let payload = ByteBuffer(bytes: Array(repeating: UInt8(ascii: "x"), count: 64))
    let packets: [(name: String, packet: MQTTPacket)] = [
        ("CONNECT", .connect(MQTTConnectPacket(
            version: .v3_1_1, cleanStart: true, keepAlive: 60, clientIdentifier: "device-000123",
            username: "device", password: ByteBuffer(string: "secret")
        ))),
        ("PUBLISH QoS 0 64 B", .publish(MQTTPublishPacket(topic: "devices/device-000123/telemetry", payload: payload, qos: .atMostOnce))),
        ("PUBLISH QoS 1 64 B", .publish(MQTTPublishPacket(
            topic: "devices/device-000123/telemetry", payload: payload, qos: .atLeastOnce, packetIdentifier: 42
        ))),
        ("SUBSCRIBE", .subscribe(MQTTSubscribePacket(
            packetIdentifier: 7, subscriptions: [MQTTSubscription(topicFilter: "devices/+/telemetry", qos: .atLeastOnce)]
        ))),
        ("PUBACK", .puback(MQTTAckPacket(packetIdentifier: 42))),
    ]

    for (name, packet) in packets {
        Benchmark("encode \(name)") { benchmark in
            var out = allocator.buffer(capacity: 256)
            for _ in benchmark.scaledIterations {
                out.clear()
                packet.write(version: .v3_1_1, to: &out)
                blackHole(out.readableBytes)
            }
        }

        let encoded = packet.encode(version: .v3_1_1, allocator: allocator)
        let isConnect = if case .connect = packet { true } else { false }
        Benchmark("decode \(name)") { benchmark in
            // A server-side parser that has seen CONNECT already (a fresh one for CONNECT itself).
            let established = MQTTPacketParser(isServer: true, version: .v3_1_1)
            for _ in benchmark.scaledIterations {
                var parser = isConnect ? MQTTPacketParser(isServer: true) : established
                var input = encoded
                blackHole(try parser.next(&input))
            }
        }
    }
}

import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import NIOEmbedded
import Testing

@testable import GatewayTransport

/// `ConnectionWriter` coalesces a loop job's packets into one buffer, handed to the channel and flushed
/// once behind the job; past its threshold it flushes at once, and a server close sends what was written
/// before it first.
@Suite("ConnectionWriter coalescing")
struct ConnectionWriterTests {
    private final class Handle: ConnectionHandle {
        func close(reason: ServerDisconnectReason) {}
        func deliveryAvailable() {}
        func setReadPaused(_ paused: Bool) {}
    }

    private static func makeWriter() throws -> (EmbeddedChannel, ConnectionWriter) {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883)).wait()
        let broker = Broker(configuration: BrokerConfiguration(), logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let connection = ClientConnection(broker: broker, handle: Handle(), peer: nil, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        return (channel, ConnectionWriter(channel: channel, connection: connection, metrics: broker.metrics))
    }

    private static func encoded(_ packets: [MQTTPacket]) -> [UInt8] {
        packets.flatMap { Array($0.encode(version: .v3_1_1, allocator: ByteBufferAllocator()).readableBytesView) }
    }

    /// Every buffer written to the channel so far, each as its bytes.
    private static func written(_ channel: EmbeddedChannel) throws -> [[UInt8]] {
        var buffers: [[UInt8]] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { buffers.append(Array(buffer.readableBytesView)) }
        return buffers
    }

    @Test("a job's packets leave as one buffer, flushed once the job ends, in the order written")
    func oneBufferPerJob() throws {
        let (channel, writer) = try Self.makeWriter()
        let packets: [MQTTPacket] = [
            .puback(MQTTAckPacket(packetIdentifier: 1)),
            .publish(MQTTPublishPacket(topic: "a/b", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetIdentifier: 7)),
            .puback(MQTTAckPacket(packetIdentifier: 2)),
            .pingresp,
        ]
        for packet in packets { writer.send(packet) }
        #expect(try Self.written(channel).isEmpty)
        channel.embeddedEventLoop.run()
        #expect(try Self.written(channel) == [Self.encoded(packets)])
        // The next job starts a buffer of its own.
        writer.send(.pingresp)
        channel.embeddedEventLoop.run()
        #expect(try Self.written(channel) == [Self.encoded([.pingresp])])
    }

    @Test("past 64 KiB a buffer is flushed at once, without waiting for the job to end")
    func flushesPastThreshold() throws {
        let (channel, writer) = try Self.makeWriter()
        let publish = MQTTPacket.publish(MQTTPublishPacket(topic: "t", payload: ByteBuffer(repeating: 0x41, count: 1000)))
        for _ in 0..<70 { writer.send(publish) }
        let early = try Self.written(channel)
        #expect(early.count == 1)
        #expect(early.first.map { $0.count >= 64 * 1024 } == true)
        channel.embeddedEventLoop.run()
        let all = early + (try Self.written(channel))
        #expect(all.flatMap { $0 } == Self.encoded(Array(repeating: publish, count: 70)))
    }

    @Test("stop() sends what was written before it, so a DISCONNECT written next goes last")
    func stopFlushesFirst() throws {
        let (channel, writer) = try Self.makeWriter()
        writer.send(.puback(MQTTAckPacket(packetIdentifier: 3)))
        writer.stop()
        channel.writeAndFlush(MQTTPacket.disconnect(MQTTReasonPacket(reasonCode: .serverShuttingDown)).encode(version: .v5, allocator: channel.allocator), promise: nil)
        let buffers = try Self.written(channel)
        #expect(buffers.count == 2)
        #expect(buffers.first == Self.encoded([.puback(MQTTAckPacket(packetIdentifier: 3))]))
        #expect(buffers.last?.first == 0xE0)
    }
}

import MQTTCodec
import NIOCore
import NIOEmbedded
import Testing

@testable import GatewayTransport

/// `ConnectionInbound` decodes the client's byte stream itself (no `ByteToMessageHandler` in front): on an
/// `EmbeddedChannel`, packets come out whole and in order however the bytes are cut, an error reaches the
/// task after the packets before it, and nothing after the error is read as a packet.
@Suite("ConnectionInbound decoding")
struct ConnectionInboundTests {
    private static func bytes(_ packets: [MQTTPacket], version: MQTTProtocolVersion = .v3_1_1) -> [UInt8] {
        var buffer = ByteBuffer()
        for packet in packets { packet.write(version: version, to: &buffer) }
        return Array(buffer.readableBytesView)
    }

    private static let stream: [MQTTPacket] = [
        .connect(MQTTConnectPacket(version: .v3_1_1, cleanStart: true, keepAlive: 60, clientIdentifier: "dev-1")),
        .publish(MQTTPublishPacket(topic: "a/b", payload: ByteBuffer(string: "one"), qos: .atLeastOnce, packetIdentifier: 1)),
        .publish(MQTTPublishPacket(topic: "a/c", payload: ByteBuffer(string: String(repeating: "x", count: 300)))),
        .pingreq,
        .disconnect(MQTTReasonPacket(reasonCode: .success)),
    ]

    private static func makeChannel(maximumPacketSize: Int = 4096) throws -> (EmbeddedChannel, ConnectionInbound) {
        let channel = EmbeddedChannel()
        let inbound = ConnectionInbound(eventLoop: channel.eventLoop, parser: MQTTPacketParser(maximumPacketSize: maximumPacketSize))
        try channel.pipeline.syncOperations.addHandler(inbound)
        return (channel, inbound)
    }

    private static func packets(_ inbound: ConnectionInbound) -> [MQTTPacket] {
        var packets: [MQTTPacket] = []
        while let input = inbound.nextBuffered() {
            if case .packet(let packet) = input { packets.append(packet) }
        }
        return packets
    }

    @Test("packets come out whole and in order however the stream is cut", arguments: [1, 2, 3, 7, 64, 100_000])
    func cutStream(chunkSize: Int) throws {
        let (channel, inbound) = try Self.makeChannel()
        let bytes = Self.bytes(Self.stream)
        var received: [MQTTPacket] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + chunkSize, bytes.count)
            try channel.writeInbound(ByteBuffer(bytes: bytes[offset..<end]))
            received += Self.packets(inbound)
            offset = end
        }
        #expect(received == Self.stream)
        _ = try channel.finish()
    }

    @Test("the bytes held between reads stay within a packet and a read; none once a packet boundary is reached")
    func heldBytesStayBounded() throws {
        let (channel, inbound) = try Self.makeChannel(maximumPacketSize: 64 * 1024)
        let publish = MQTTPacket.publish(MQTTPublishPacket(topic: "t", payload: ByteBuffer(repeating: 0xAB, count: 10_000)))
        let bytes = Self.bytes([Self.stream[0]] + Array(repeating: publish, count: 300))
        var largest = 0
        var received = 0
        for start in stride(from: 0, to: bytes.count, by: 4096) {
            try channel.writeInbound(ByteBuffer(bytes: bytes[start..<min(start + 4096, bytes.count)]))
            received += Self.packets(inbound).count
            largest = max(largest, inbound.partialCapacity)
        }
        #expect(received == 301)
        // A buffer appended to at the back and read at the front grew to megabytes before.
        #expect(largest < 32 * 1024)
        #expect(inbound.partialCapacity == 0)
        _ = try channel.finish()
    }

    @Test("an error reaches the task after the packets before it; nothing after it is read")
    func errorAfterPackets() async throws {
        let (channel, inbound) = try Self.makeChannel()
        // CONNECT, PINGREQ, a packet of the reserved type 0, then a PINGREQ that must not be read.
        let bytes = Self.bytes([Self.stream[0], .pingreq]) + [0x00, 0x00] + Self.bytes([.pingreq])
        try channel.writeInbound(ByteBuffer(bytes: bytes))
        #expect(try await inbound.wait())
        #expect(Self.packets(inbound) == [Self.stream[0], .pingreq])
        await #expect(throws: MQTTCodecError.self) { try await inbound.wait() }
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([.pingreq])))
        #expect(try await inbound.wait() == false)
        #expect(inbound.nextBuffered() == nil)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("a packet announced above the maximum is refused on its fixed header")
    func announcedTooLarge() async throws {
        let (channel, inbound) = try Self.makeChannel(maximumPacketSize: 1024)
        // CONNECT, then a PUBLISH header announcing 2,000 bytes, of which only the header arrives.
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([Self.stream[0]]) + [0x30, 0xD0, 0x0F]))
        #expect(Self.packets(inbound) == [Self.stream[0]])
        await #expect {
            try await inbound.wait()
        } throws: { error in
            (error as? MQTTCodecError)?.code == .packetTooLarge
        }
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("the first packet must be CONNECT")
    func firstPacketNotConnect() async throws {
        let (channel, inbound) = try Self.makeChannel()
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([.pingreq])))
        #expect(Self.packets(inbound).isEmpty)
        await #expect {
            try await inbound.wait()
        } throws: { error in
            (error as? MQTTCodecError)?.code == .protocolError
        }
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}

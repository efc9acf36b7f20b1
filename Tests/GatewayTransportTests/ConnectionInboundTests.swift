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

    private static func makeChannel(maximumPacketSize: Int = 4096, reads: ReadCounter? = nil) throws -> (EmbeddedChannel, ConnectionInbound) {
        let channel = EmbeddedChannel()
        let inbound = ConnectionInbound(
            eventLoop: channel.eventLoop,
            parser: MQTTPacketParser(maximumPacketSize: maximumPacketSize),
            connectTimeout: .seconds(5)
        )
        if let reads { try channel.pipeline.syncOperations.addHandler(reads) }
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

    /// Reading is held while 16 inputs wait for the task or back-pressure pauses the publisher, and
    /// resumes only once neither holds it.
    @Test func readsAreHeldByTheWatermarkAndByBackPressure() throws {
        let reads = ReadCounter()
        let (channel, inbound) = try Self.makeChannel(reads: reads)
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40000), promise: nil)
        channel.read()
        #expect(reads.count == 1)

        channel.triggerUserOutboundEvent(ConnectionInbound.SetReadPaused(paused: true), promise: nil)
        channel.read()
        #expect(reads.count == 1)
        channel.triggerUserOutboundEvent(ConnectionInbound.SetReadPaused(paused: false), promise: nil)
        #expect(reads.count == 2)

        // 16 inputs waiting, and paused: taking one does not resume reading while paused.
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([Self.stream[0]] + Array(repeating: .pingreq, count: 15))))
        channel.triggerUserOutboundEvent(ConnectionInbound.SetReadPaused(paused: true), promise: nil)
        channel.read()
        #expect(reads.count == 2)
        _ = inbound.nextBuffered()
        #expect(reads.count == 2)
        // Resumed, but 15 still waiting: the held read goes out now (below the watermark).
        channel.triggerUserOutboundEvent(ConnectionInbound.SetReadPaused(paused: false), promise: nil)
        #expect(reads.count == 3)
        // Back at the watermark: held until the task takes one.
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([.pingreq])))
        channel.read()
        #expect(reads.count == 3)
        _ = inbound.nextBuffered()
        #expect(reads.count == 4)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// Once CONNECT was accepted, a packet read while the task waits with nothing buffered is handled on the
    /// loop (``ConnectionInbound/inlineHandler``); what the handler hands back, and every packet read after
    /// it, is buffered for the task in the order read, and never handled ahead of what waits.
    @Test func packetsAreHandledInlineOnlyWhileTheTaskWaitsWithNothingBuffered() async throws {
        let (channel, inbound) = try Self.makeChannel()
        let publish = MQTTPacket.publish(MQTTPublishPacket(topic: "a/b", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetIdentifier: 7))
        var handled: [MQTTPacket] = []
        inbound.inlineHandler = { packet in
            handled.append(packet)
            // A PINGREQ is answered here; the PUBLISH goes to the task (as one that must wait would).
            return packet == .pingreq ? nil : .packet(packet)
        }
        // The task is busy (not waiting): nothing is handled inline.
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([Self.stream[0], .pingreq])))
        #expect(handled.isEmpty)
        #expect(Self.packets(inbound) == [Self.stream[0], .pingreq])

        let waiter = Task { try await inbound.wait() }
        await pollUntil("the task waits") { inbound.isTaskWaiting }
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([.pingreq, .pingreq, publish, .pingreq])))
        #expect(try await waiter.value)
        // Two PINGREQs on the loop, then the PUBLISH handed to the task; the PINGREQ after it waits behind it.
        #expect(handled == [.pingreq, .pingreq, publish])
        #expect(Self.packets(inbound) == [publish, .pingreq])
        inbound.inlineHandler = nil
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// Without CONNECT the socket is closed after the connect timeout; after CONNECT, 1.5 × the keep alive
    /// of silence ends the input with `KeepAliveExpired`, and a read in between pushes the deadline on.
    @Test func keepAliveAndConnectTimeout() async throws {
        let (silent, _) = try Self.makeChannel()
        silent.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40000), promise: nil)
        silent.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(silent.isActive)
        silent.embeddedEventLoop.advanceTime(by: .seconds(3))  // the wheel fires up to a second late
        #expect(!silent.isActive)

        let (channel, inbound) = try Self.makeChannel()
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40001), promise: nil)
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([Self.stream[0]])))
        #expect(Self.packets(inbound) == [Self.stream[0]])
        channel.triggerUserOutboundEvent(ConnectionInbound.SetKeepAlive(seconds: 2), promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes([.pingreq])))
        #expect(Self.packets(inbound) == [.pingreq])
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(inbound.failure == nil && channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        await #expect(throws: ConnectionInbound.KeepAliveExpired.self) { try await inbound.wait() }
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}

/// Counts the reads that reach the socket.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var count = 0

    func read(context: ChannelHandlerContext) {
        count += 1
        context.read()
    }
}

/// Polls `condition` every millisecond until it holds; fails the test after 5 s.
func pollUntil(_ what: String, _ condition: () -> Bool) async {
    let deadline = ContinuousClock.now + .seconds(5)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out waiting for \(what)")
            return
        }
        try? await Task.sleep(for: .milliseconds(1))
    }
}

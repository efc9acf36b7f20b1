import MQTTCodec
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

@testable import GatewayTransport

/// RFC 6455 frames as ``WebSocketProtocolHandler`` reads and writes them itself (no NIO frame decoder or
/// encoder in the pipeline).
@Suite("WebSocket frame codec")
struct WebSocketFrameCodecTests {
    static let key = WebSocketMaskingKey([0x11, 0x22, 0x33, 0x44])!

    /// A frame as a client sends it: masked.
    static func clientFrame(fin: Bool = true, opcode: UInt8, payload: [UInt8], mask: Bool = true) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger((fin ? 0x80 : 0) | opcode)
        let maskBit: UInt8 = mask ? 0x80 : 0
        switch payload.count {
        case ..<126: buffer.writeInteger(maskBit | UInt8(payload.count))
        case ...65535: buffer.writeMultipleIntegers(maskBit | 126, UInt16(payload.count))
        default: buffer.writeMultipleIntegers(maskBit | 127, UInt64(payload.count))
        }
        var data = ByteBuffer(bytes: payload)
        if mask {
            buffer.writeBytes(key)
            data.webSocketMask(key)
        }
        buffer.writeBuffer(&data)
        return buffer
    }

    @Test(arguments: [0, 1, 125, 126, 127, 65535, 65536, 70000])
    func everyLengthEncodingIsRead(length: Int) throws {
        let payload = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var buffer = Self.clientFrame(opcode: 0x2, payload: payload)
        buffer.writeString("next")  // the start of what follows stays unread
        let frame = try #require(try WebSocketFrameCodec.next(&buffer, maxFrameSize: 1 << 20))
        #expect(frame.fin && frame.opcode == .binary && !frame.rsv1)
        #expect(frame.maskKey == Self.key)
        #expect(Array(frame.unmaskedData.readableBytesView) == payload)
        #expect(buffer.readableBytes == 4)
    }

    @Test func aFrameNotYetWholeIsLeftUnread() throws {
        let whole = Self.clientFrame(opcode: 0x1, payload: Array(repeating: 0x61, count: 300))
        for cut in 0..<whole.readableBytes {
            var part = whole.getSlice(at: 0, length: cut)!
            #expect(try WebSocketFrameCodec.next(&part, maxFrameSize: 4096) == nil)
            #expect(part.readerIndex == 0)
        }
    }

    @Test func reservedBitsAndOpcodeArePassedOn() throws {
        var buffer = ByteBuffer(bytes: [0x80 | 0x40 | 0x20 | 0x10 | 0x3, 0x00])
        let frame = try #require(try WebSocketFrameCodec.next(&buffer, maxFrameSize: 10))
        #expect(frame.rsv1 && frame.rsv2 && frame.rsv3)
        #expect(frame.opcode == WebSocketOpcode(encodedWebSocketOpcode: 0x3))
        #expect(frame.maskKey == nil)
    }

    /// Too long for the limit: refused from the header alone, before any payload is buffered.
    @Test(arguments: [4097, 70000, Int(Int64.max)])
    func anOversizedFrameIsRefusedFromItsHeader(length: Int) {
        var buffer = ByteBuffer()
        if length <= 65535 {
            buffer.writeMultipleIntegers(UInt8(0x82), UInt8(0x80 | 126), UInt16(length))
        } else {
            buffer.writeMultipleIntegers(UInt8(0x82), UInt8(0x80 | 127), UInt64(length))
        }
        #expect(throws: NIOWebSocketError.invalidFrameLength) { try WebSocketFrameCodec.next(&buffer, maxFrameSize: 4096) }
    }

    @Test func aLengthAboveInt64IsRefused() {
        var buffer = ByteBuffer()
        buffer.writeMultipleIntegers(UInt8(0x82), UInt8(127), UInt64.max)
        #expect(throws: NIOWebSocketError.invalidFrameLength) { try WebSocketFrameCodec.next(&buffer, maxFrameSize: Int.max) }
    }

    @Test func controlFramesMustBeWholeAndShort() {
        var fragmentedPing = Self.clientFrame(fin: false, opcode: 0x9, payload: [1])
        #expect(throws: NIOWebSocketError.fragmentedControlFrame) { try WebSocketFrameCodec.next(&fragmentedPing, maxFrameSize: 4096) }
        var longClose = Self.clientFrame(opcode: 0x8, payload: Array(repeating: 0, count: 126))
        #expect(throws: NIOWebSocketError.multiByteControlFrameLength) { try WebSocketFrameCodec.next(&longClose, maxFrameSize: 4096) }
        var longestPing = Self.clientFrame(opcode: 0x9, payload: Array(repeating: 0, count: 125))
        #expect((try? WebSocketFrameCodec.next(&longestPing, maxFrameSize: 4096)) != nil)
    }

    @Test(arguments: [0, 125, 126, 65535, 65536])
    func serverHeadersAreUnmaskedAndSized(length: Int) throws {
        var buffer = ByteBuffer()
        WebSocketFrameCodec.writeHeader(rsv1: true, opcode: .text, length: length, to: &buffer)
        #expect(buffer.readableBytes == WebSocketFrameCodec.headerSize(length: length))
        buffer.writeRepeatingByte(0x5A, count: length)
        let frame = try #require(try WebSocketFrameCodec.next(&buffer, maxFrameSize: 1 << 20))
        #expect(frame.fin && frame.rsv1 && frame.opcode == .text && frame.maskKey == nil && frame.length == length)
        #expect(buffer.readableBytes == 0)
    }

    /// The upgraded MQTT pipeline: no NIO frame decoder or encoder; a CONNECT split over two frames that
    /// arrive byte by byte reaches the packet decoder; what the task writes leaves as one binary frame.
    @Test func upgradedPipelineFramesTheStreamItself() throws {
        let channel = EmbeddedChannel()
        _ = channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40000))
        let configuration = WebSocketConfiguration(echoPath: "/echo", maxMessageSize: 4096, pingInterval: 0)
        let route = try WebSocketPipeline(webSocket: configuration, connectTimeout: .seconds(5), maxPacketSize: 4096).configure(channel)
        let request = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: mqtt\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        try channel.writeInbound(ByteBuffer(string: request))
        channel.embeddedEventLoop.run()
        guard case .mqtt(let connection)? = try? route.wait() else {
            Issue.record("the upgrade did not reach the MQTT endpoint")
            return
        }
        #expect((try? channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)) == nil)
        #expect((try? channel.pipeline.syncOperations.handler(type: WebSocketFrameEncoder.self)) == nil)

        // An MQTT 3.1.1 CONNECT, client id "framed", keep alive 60.
        let bytes: [UInt8] = [0x10, 18, 0, 4] + Array("MQTT".utf8) + [4, 2, 0, 60, 0, 6] + Array("framed".utf8)
        var frames = Self.clientFrame(fin: false, opcode: 0x2, payload: Array(bytes[..<5]))
        frames.writeImmutableBuffer(Self.clientFrame(opcode: 0x0, payload: Array(bytes[5...])))
        for byte in frames.readableBytesView {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        guard case .packet(.connect(let packet))? = connection.inbound.nextBuffered() else {
            Issue.record("no CONNECT decoded")
            return
        }
        #expect(packet.clientIdentifier == "framed")

        var discard = ByteBuffer()
        while let part = try channel.readOutbound(as: ByteBuffer.self) { discard.writeImmutableBuffer(part) }  // the 101
        channel.writeAndFlush(ByteBuffer(bytes: [0xD0, 0x00]), promise: nil)  // PINGRESP
        var written = ByteBuffer()
        while let part = try channel.readOutbound(as: ByteBuffer.self) { written.writeImmutableBuffer(part) }
        #expect(Array(written.readableBytesView) == [0x82, 0x02, 0xD0, 0x00])
        // Closing sends a close frame and waits (at most 2 s) for the peer's.
        channel.close(promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}

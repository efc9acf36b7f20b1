import NIOCore
import NIOWebSocket

/// Reads and writes RFC 6455 frames (section 5.2) for ``WebSocketProtocolHandler``, which does its own
/// framing: NIO's frame decoder (a `ByteToMessageHandler` with two ring buffers) and encoder (with a kept
/// header buffer) cost every upgraded connection about 0.8 KiB and two pipeline contexts, for the life
/// of the connection.
///
/// The checks are those of the protocol: a frame longer than the limit, a fragmented control frame and
/// a control frame longer than 125 bytes are refused as soon as the header shows them, before their
/// payload is buffered. What a frame means (masking, reserved bits, opcodes, fragments) is
/// ``WebSocketStateMachine``'s concern.
enum WebSocketFrameCodec {
    /// The whole frame at the front of `buffer`, consumed; nil (nothing consumed) while part of it has
    /// not arrived. The frame's data is a slice of `buffer`, still masked (``WebSocketFrame/maskKey``).
    static func next(_ buffer: inout ByteBuffer, maxFrameSize: Int) throws(NIOWebSocketError) -> WebSocketFrame? {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self),
            let second = buffer.getInteger(at: start + 1, as: UInt8.self)
        else { return nil }
        var offset = start + 2
        var length = Int(second & 0x7F)
        if length == 126 {
            guard let word = buffer.getInteger(at: offset, as: UInt16.self) else { return nil }
            length = Int(word)
            offset += 2
        } else if length == 127 {
            guard let word = buffer.getInteger(at: offset, as: UInt64.self) else { return nil }
            guard word <= UInt64(maxFrameSize) else { throw .invalidFrameLength }
            length = Int(word)
            offset += 8
        }
        guard length <= maxFrameSize else { throw .invalidFrameLength }
        if first & 0x08 != 0 {
            // Control frames (opcodes 8-15): whole, and at most 125 bytes (RFC 6455 5.5).
            guard first & 0x80 != 0 else { throw .fragmentedControlFrame }
            guard length <= 125 else { throw .multiByteControlFrameLength }
        }
        var maskKey: WebSocketMaskingKey?
        if second & 0x80 != 0 {
            guard let key = buffer.viewBytes(at: offset, length: 4) else { return nil }
            maskKey = WebSocketMaskingKey(key)
            offset += 4
        }
        guard let data = buffer.getSlice(at: offset, length: length) else { return nil }
        buffer.moveReaderIndex(to: offset + length)
        return WebSocketFrame(
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2: first & 0x20 != 0,
            rsv3: first & 0x10 != 0,
            opcode: WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F)!,  // 4 bits: every value is an opcode
            maskKey: maskKey,
            data: data
        )
    }

    /// Writes the header of an unmasked frame (as a server sends them) carrying `length` bytes.
    static func writeHeader(fin: Bool = true, rsv1: Bool = false, opcode: WebSocketOpcode, length: Int, to buffer: inout ByteBuffer) {
        var first = UInt8(webSocketOpcode: opcode)
        if fin { first |= 0x80 }
        if rsv1 { first |= 0x40 }
        switch length {
        case ..<126:
            buffer.writeMultipleIntegers(first, UInt8(length))
        case ...Int(UInt16.max):
            buffer.writeMultipleIntegers(first, UInt8(126), UInt16(length))
        default:
            buffer.writeMultipleIntegers(first, UInt8(127), UInt64(length))
        }
    }

    /// The size of the header ``writeHeader(fin:rsv1:opcode:length:to:)`` writes.
    static func headerSize(length: Int) -> Int {
        length < 126 ? 2 : length <= Int(UInt16.max) ? 4 : 10
    }
}

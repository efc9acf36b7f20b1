public import NIOCore

extension ByteBuffer {
    /// Reads an MQTT variable byte integer (1 to 4 bytes, 7 bits each, least significant first).
    ///
    /// - Returns: the value, or `nil` when the buffer ends before the integer does (the reader index
    ///   is then left untouched).
    /// - Throws: ``MQTTCodecError/Code/malformedVariableByteInteger`` when a fourth byte still has
    ///   its continuation bit set: a server must never wait for a fifth length byte.
    public mutating func readMQTTVariableByteInteger() throws(MQTTCodecError) -> UInt32? {
        switch peekMQTTVariableByteInteger() {
        case .needMoreData:
            return nil
        case .tooLong:
            throw MQTTCodecError(.malformedVariableByteInteger, "variable byte integer longer than 4 bytes or not minimal")
        case .value(let value, let length):
            moveReaderIndex(forwardBy: length)
            return value
        }
    }

    private enum VariableByteIntegerPeek {
        case needMoreData
        case tooLong
        case value(UInt32, length: Int)
    }

    // Kept non-throwing: the decoding loop lives here and the typed throw stays in the small wrapper
    // above (Swift 6.3's optimizer crashes on a typed throw inside this loop in release builds).
    private func peekMQTTVariableByteInteger() -> VariableByteIntegerPeek {
        var value: UInt32 = 0
        var multiplier: UInt32 = 1
        var offset = 0
        while true {
            guard let byte = getInteger(at: readerIndex + offset, as: UInt8.self) else { return .needMoreData }
            value += UInt32(byte & 0x7F) * multiplier
            offset += 1
            if byte & 0x80 == 0 {
                // MQTT-1.5.5-1: the encoding must be minimal, so a last byte of 0 after others is invalid.
                if offset > 1 && byte == 0 { return .tooLong }
                return .value(value, length: offset)
            }
            if offset == 4 { return .tooLong }
            multiplier *= 128
        }
    }

    /// Writes an MQTT variable byte integer. Values above 268,435,455 cannot be encoded; callers
    /// never produce them because packet sizes are capped far below.
    @discardableResult
    public mutating func writeMQTTVariableByteInteger(_ value: UInt32) -> Int {
        precondition(value <= 268_435_455, "variable byte integer out of range")
        var value = value
        var written = 0
        repeat {
            var byte = UInt8(value & 0x7F)
            value >>= 7
            if value > 0 { byte |= 0x80 }
            writeInteger(byte)
            written += 1
        } while value > 0
        return written
    }

    /// Reads a two-byte length prefixed UTF-8 string and validates it: well-formed UTF-8 and no
    /// U+0000 (MQTT-1.5.3-1, MQTT-1.5.3-2).
    public mutating func readMQTTString(_ what: @autoclosure () -> String) throws(MQTTCodecError) -> String {
        guard let length = readInteger(as: UInt16.self) else {
            throw MQTTCodecError(.malformedPacket, "\(what()) truncated")
        }
        guard let view = readSlice(length: Int(length)) else {
            throw MQTTCodecError(.malformedPacket, "\(what()) truncated")
        }
        return try view.mqttValidatedString(what())
    }

    /// Validates the readable bytes of this buffer as an MQTT UTF-8 string.
    public func mqttValidatedString(_ what: @autoclosure () -> String) throws(MQTTCodecError) -> String {
        let bytes = readableBytesView
        if bytes.contains(0) {
            throw MQTTCodecError(.invalidUTF8, "\(what()) contains U+0000")
        }
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw MQTTCodecError(.invalidUTF8, "\(what()) is not well-formed UTF-8")
        }
        return string
    }

    /// Reads two-byte length prefixed binary data.
    public mutating func readMQTTBinary(_ what: @autoclosure () -> String) throws(MQTTCodecError) -> ByteBuffer {
        guard let length = readInteger(as: UInt16.self), let data = readSlice(length: Int(length)) else {
            throw MQTTCodecError(.malformedPacket, "\(what()) truncated")
        }
        return data
    }

    /// Writes a two-byte length prefixed UTF-8 string.
    public mutating func writeMQTTString(_ string: String) {
        let lengthIndex = writerIndex
        writeInteger(UInt16(0))
        let written = writeString(string)
        precondition(written <= Int(UInt16.max), "MQTT string longer than 65535 bytes")
        setInteger(UInt16(written), at: lengthIndex)
    }

    /// Writes two-byte length prefixed binary data.
    public mutating func writeMQTTBinary(_ data: ByteBuffer) {
        precondition(data.readableBytes <= Int(UInt16.max), "MQTT binary data longer than 65535 bytes")
        writeInteger(UInt16(data.readableBytes))
        writeImmutableBuffer(data)
    }

    mutating func readMQTTInteger<T: FixedWidthInteger>(
        as: T.Type,
        _ what: @autoclosure () -> String
    ) throws(MQTTCodecError) -> T {
        guard let value = readInteger(as: T.self) else {
            throw MQTTCodecError(.malformedPacket, "\(what()) truncated")
        }
        return value
    }
}

/// Size arithmetic for MQTT variable byte integers.
public enum MQTTVariableByteInteger {
    /// The largest value a variable byte integer can hold (four bytes of seven bits).
    public static let max = 268_435_455

    /// The number of bytes `value` takes on the wire.
    public static func size(_ value: Int) -> Int {
        switch value {
        case ..<128: 1
        case ..<16_384: 2
        case ..<2_097_152: 3
        default: 4
        }
    }
}

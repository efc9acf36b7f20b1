public import NIOCore

/// Every MQTT control packet, as a value. An enum rather than `any MQTTPacket` so the core can switch
/// over every case and the compiler tells us when one is missing.
public enum MQTTPacket: Hashable, Sendable {
    case connect(MQTTConnectPacket)
    case connack(MQTTConnAckPacket)
    case publish(MQTTPublishPacket)
    case puback(MQTTAckPacket)
    case pubrec(MQTTAckPacket)
    case pubrel(MQTTAckPacket)
    case pubcomp(MQTTAckPacket)
    case subscribe(MQTTSubscribePacket)
    case suback(MQTTSubAckPacket)
    case unsubscribe(MQTTUnsubscribePacket)
    case unsuback(MQTTSubAckPacket)
    case pingreq
    case pingresp
    case disconnect(MQTTReasonPacket)
    case auth(MQTTReasonPacket)

    /// The packet's control packet type.
    public var type: MQTTPacketType {
        switch self {
        case .connect: .connect
        case .connack: .connack
        case .publish: .publish
        case .puback: .puback
        case .pubrec: .pubrec
        case .pubrel: .pubrel
        case .pubcomp: .pubcomp
        case .subscribe: .subscribe
        case .suback: .suback
        case .unsubscribe: .unsubscribe
        case .unsuback: .unsuback
        case .pingreq: .pingreq
        case .pingresp: .pingresp
        case .disconnect: .disconnect
        case .auth: .auth
        }
    }

    /// Decodes one packet whose fixed header has been read.
    ///
    /// - Parameters:
    ///   - type: the packet type from the fixed header.
    ///   - flags: the low four bits of the fixed header.
    ///   - version: the negotiated protocol version. For CONNECT it is ignored: CONNECT carries its own.
    ///   - body: exactly the packet's remaining-length bytes.
    public static func read(
        type: MQTTPacketType,
        flags: UInt8,
        version: MQTTProtocolVersion,
        body: inout ByteBuffer
    ) throws(MQTTCodecError) -> MQTTPacket {
        if let required = type.requiredFlags, flags != required {
            throw MQTTCodecError(.invalidFixedHeaderFlags, "\(type) with flags \(flags)")
        }
        switch type {
        case .connect: return .connect(try MQTTConnectPacket.read(flags: flags, from: &body))
        case .connack: return .connack(try MQTTConnAckPacket.read(version: version, from: &body))
        case .publish: return .publish(try MQTTPublishPacket.read(version: version, flags: flags, from: &body))
        case .puback: return .puback(try MQTTAckPacket.read(version: version, context: .puback, from: &body))
        case .pubrec: return .pubrec(try MQTTAckPacket.read(version: version, context: .pubrec, from: &body))
        case .pubrel: return .pubrel(try MQTTAckPacket.read(version: version, context: .pubrel, from: &body))
        case .pubcomp: return .pubcomp(try MQTTAckPacket.read(version: version, context: .pubcomp, from: &body))
        case .subscribe: return .subscribe(try MQTTSubscribePacket.read(version: version, from: &body))
        case .suback: return .suback(try MQTTSubAckPacket.read(version: version, context: .suback, from: &body))
        case .unsubscribe: return .unsubscribe(try MQTTUnsubscribePacket.read(version: version, from: &body))
        case .unsuback: return .unsuback(try MQTTSubAckPacket.read(version: version, context: .unsuback, from: &body))
        case .pingreq, .pingresp:
            guard body.readableBytes == 0 else {
                throw MQTTCodecError(.malformedPacket, "\(type) with remaining length \(body.readableBytes)")
            }
            return type == .pingreq ? .pingreq : .pingresp
        case .disconnect:
            return .disconnect(try MQTTReasonPacket.read(version: version, context: .disconnect, from: &body))
        case .auth:
            guard version == .v5 else { throw MQTTCodecError(.invalidPacketType, "AUTH in MQTT 3.1.1") }
            return .auth(try MQTTReasonPacket.read(version: version, context: .auth, from: &body))
        }
    }

    /// The fixed-header flag bits of this packet.
    var flags: UInt8 {
        if case .publish(let publish) = self { return publish.flags }
        return type.requiredFlags ?? 0
    }

    /// Appends the encoded packet to `buffer`, so that several packets go to the socket as one write.
    ///
    /// A PUBLISH's length is known up front and its fixed header is written first. Other packets are
    /// small: their body is written after five reserved bytes and moved up to the header's real length.
    /// A PUBLISH carrying a ``SharedPublishEncoding`` appends the shared bytes (its packet identifier
    /// patched in).
    public func write(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        if case .publish(let publish) = self {
            if let shared = publish.sharedEncoding {
                shared.write(publish, version: version, to: &buffer)
                return
            }
            let remaining = publish.remainingLength(version: version)
            buffer.reserveCapacity(minimumWritableBytes: 5 + remaining)
            buffer.writeInteger(type.rawValue << 4 | flags)
            _ = buffer.writeMQTTVariableByteInteger(UInt32(remaining))
            publish.writeBody(version: version, to: &buffer)
            return
        }
        let start = buffer.writerIndex
        buffer.writeRepeatingByte(0, count: 5)
        writeBody(version: version, to: &buffer)
        let remaining = buffer.writerIndex - start - 5
        let headerSize = 1 + MQTTVariableByteInteger.size(remaining)
        if headerSize < 5 {
            _ = try? buffer.copyBytes(at: start + 5, to: start + headerSize, length: remaining)
            buffer.moveWriterIndex(to: start + headerSize + remaining)
        }
        setFixedHeader(remainingLength: remaining, at: start, in: &buffer)
    }

    /// Encodes the packet into a new buffer from `allocator`.
    ///
    /// The fixed header's length is only known after the body is written, so the body is written
    /// after five reserved bytes and the header is then placed right before it; the unused leading
    /// bytes are skipped by moving the reader index. No copy of the body is made.
    public func encode(version: MQTTProtocolVersion, allocator: ByteBufferAllocator) -> ByteBuffer {
        var capacity = 64
        if case .publish(let publish) = self {
            if let shared = publish.sharedEncoding { return shared.encoded(publish, version: version, allocator: allocator) }
            capacity = 5 + publish.remainingLength(version: version)
        }
        var buffer = allocator.buffer(capacity: capacity)
        buffer.moveWriterIndex(forwardBy: 5)
        writeBody(version: version, to: &buffer)
        // The fixed header goes into the 5 bytes left free in front.
        let remaining = buffer.writerIndex - 5
        let start = 5 - 1 - MQTTVariableByteInteger.size(remaining)
        setFixedHeader(remainingLength: remaining, at: start, in: &buffer)
        buffer.moveReaderIndex(forwardBy: start)
        return buffer
    }

    /// Sets the fixed header at `index` of `buffer`: type and flags, then `remainingLength` as a variable
    /// byte integer (1-4 bytes). The bytes must already be there (reserved in front of the body).
    private func setFixedHeader(remainingLength: Int, at index: Int, in buffer: inout ByteBuffer) {
        buffer.setInteger(type.rawValue << 4 | flags, at: index)
        var value = remainingLength
        var index = index + 1
        repeat {
            var byte = UInt8(value & 0x7F)
            value >>= 7
            if value > 0 { byte |= 0x80 }
            buffer.setInteger(byte, at: index)
            index += 1
        } while value > 0
    }

    private func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        switch self {
        case .connect(let p): p.writeBody(to: &buffer)
        case .connack(let p): p.writeBody(version: version, to: &buffer)
        case .publish(let p): p.writeBody(version: version, to: &buffer)
        case .puback(let p), .pubrec(let p), .pubrel(let p), .pubcomp(let p): p.writeBody(version: version, to: &buffer)
        case .subscribe(let p): p.writeBody(version: version, to: &buffer)
        case .suback(let p): p.writeBody(version: version, isUnsubAck: false, to: &buffer)
        case .unsubscribe(let p): p.writeBody(version: version, to: &buffer)
        case .unsuback(let p): p.writeBody(version: version, isUnsubAck: true, to: &buffer)
        case .pingreq, .pingresp: break
        case .disconnect(let p), .auth(let p): p.writeBody(version: version, to: &buffer)
        }
    }
}

public import NIOCore
import Synchronization

/// The wire bytes of one routed message, encoded once and shared by every subscriber that receives the
/// same form of it (protocol version, QoS, RETAIN; no DUP, no per-subscriber properties).
///
/// A PUBLISH routed to a hundred subscribers used to be encoded a hundred times. The router attaches one
/// of these to a message with more than one receiver; the first subscriber to write a form encodes it,
/// the others get the same bytes: a QoS 0 delivery shares the buffer itself (no copy), a QoS 1/2 one a
/// copy with its own packet identifier patched in. At most four forms are kept (two versions × QoS 0 or
/// not, RETAIN as routed), so the cache is bounded by four copies of the message.
///
/// It is not part of the value it is attached to: two packets or messages compare equal whatever cache
/// they carry.
public final class SharedPublishEncoding: Sendable {
    fileprivate struct Form {
        var key: UInt8
        var bytes: ByteBuffer
        /// Where the packet identifier sits, counted from the first byte (QoS > 0 only).
        var packetIdentifierOffset: Int
    }

    fileprivate let forms = Mutex<[Form]>([])

    /// Which form `packet` takes: protocol version, QoS and RETAIN.
    fileprivate static func formKey(_ packet: MQTTPublishPacket, version: MQTTProtocolVersion) -> UInt8 {
        (version == .v5 ? 1 : 0) | packet.qos.rawValue << 1 | (packet.retain ? 0x08 : 0)
    }

    public init() {}

    /// `packet` encoded for `version`, from the cache when another subscriber already needed this form.
    /// The caller guarantees the packet is the shared form: DUP clear and only the message's own properties.
    public func encoded(_ packet: MQTTPublishPacket, version: MQTTProtocolVersion, allocator: ByteBufferAllocator) -> ByteBuffer {
        let key = Self.formKey(packet, version: version)
        let cached = forms.withLock { forms in forms.first { $0.key == key } }
        if let cached {
            guard let id = packet.packetIdentifier, packet.qos != .atMostOnce else { return cached.bytes }
            var copy = allocator.buffer(capacity: cached.bytes.readableBytes)
            copy.writeImmutableBuffer(cached.bytes)
            copy.setInteger(id, at: copy.readerIndex + cached.packetIdentifierOffset)
            return copy
        }
        var unshared = packet
        unshared.sharedEncoding = nil
        let bytes = MQTTPacket.publish(unshared).encode(version: version, allocator: allocator)
        let remaining = packet.remainingLength(version: version)
        let offset = 1 + MQTTVariableByteInteger.size(remaining) + 2 + packet.topic.utf8.count
        forms.withLock { forms in
            if forms.count < 4 && !forms.contains(where: { $0.key == key }) {
                forms.append(Form(key: key, bytes: bytes, packetIdentifierOffset: offset))
            }
        }
        return bytes
    }
}

extension SharedPublishEncoding {
    /// Appends `packet`'s shared form to `buffer` (encoding it first if no subscriber needed this form yet),
    /// with `packet`'s own packet identifier.
    public func write(_ packet: MQTTPublishPacket, version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        let key = Self.formKey(packet, version: version)
        guard let cached = forms.withLock({ forms in forms.first { $0.key == key } }) else {
            buffer.writeImmutableBuffer(encoded(packet, version: version, allocator: ByteBufferAllocator()))
            return
        }
        buffer.writeImmutableBuffer(cached.bytes)
        if let id = packet.packetIdentifier, packet.qos != .atMostOnce {
            buffer.setInteger(id, at: start + cached.packetIdentifierOffset)
        }
    }
}

/// Where a value keeps its ``SharedPublishEncoding``: always equal and never hashed, so the cache (or its
/// absence) is not part of the value that carries it.
public struct SharedEncodingSlot: Hashable, Sendable {
    public var value: SharedPublishEncoding?

    public init(_ value: SharedPublishEncoding? = nil) {
        self.value = value
    }

    public static func == (lhs: SharedEncodingSlot, rhs: SharedEncodingSlot) -> Bool { true }
    public func hash(into hasher: inout Hasher) {}
}

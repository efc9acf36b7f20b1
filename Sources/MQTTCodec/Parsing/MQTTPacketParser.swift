public import NIOCore

/// Splits a byte stream into MQTT packets. A plain struct; ``MQTTPacketDecoder`` only loops over it.
///
/// It checks the fixed header before anything else is buffered: the packet type, at most four length
/// bytes and the maximum packet size. A peer announcing a 200 MB packet is rejected on its first five
/// bytes, so the connection never buffers more than `maximumPacketSize` bytes.
///
/// The first packet must be CONNECT; its protocol level fixes the version used for the rest of the
/// stream (``version``).
public struct MQTTPacketParser: Sendable {
    /// The largest whole packet (fixed header included) accepted, in bytes.
    public var maximumPacketSize: Int
    /// The protocol version, known once CONNECT has been parsed.
    public private(set) var version: MQTTProtocolVersion?
    /// Whether this side parses what a client sends (true) or what a server sends.
    public let isServer: Bool

    /// - Parameters:
    ///   - maximumPacketSize: the largest packet accepted, fixed header included. Default 1 MiB; the
    ///     MQTT maximum is 268,435,460 bytes, far more than a gateway should buffer per connection.
    ///   - isServer: true when parsing a client's stream (the first packet must then be CONNECT).
    ///   - version: the version when already known (a client parsing a server's stream).
    public init(maximumPacketSize: Int = 1_048_576, isServer: Bool = true, version: MQTTProtocolVersion? = nil) {
        self.maximumPacketSize = maximumPacketSize
        self.isServer = isServer
        self.version = version
    }

    /// Parses the next whole packet from `buffer`, or returns `nil` when more bytes are needed.
    /// Consumes the packet's bytes only when it returns one.
    public mutating func next(_ buffer: inout ByteBuffer) throws(MQTTCodecError) -> MQTTPacket? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        guard let type = MQTTPacketType(rawValue: first >> 4) else {
            throw MQTTCodecError(.invalidPacketType, "reserved packet type 0")
        }
        if isServer {
            if version == nil && type != .connect {
                throw MQTTCodecError(.protocolError, "first packet is \(type), not CONNECT")
            }
            switch type {
            case .connack, .suback, .unsuback, .pingresp:
                throw MQTTCodecError(.invalidPacketType, "\(type) sent by a client")
            default: break
            }
        }
        var header = buffer.getSlice(at: buffer.readerIndex + 1, length: min(4, buffer.readableBytes - 1))!
        guard let remaining = try header.readMQTTVariableByteInteger() else { return nil }
        let headerSize = 1 + header.readerIndex
        let total = headerSize + Int(remaining)
        guard total <= maximumPacketSize else {
            throw MQTTCodecError(.packetTooLarge, "packet of \(total) bytes exceeds the maximum of \(maximumPacketSize)")
        }
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: headerSize)
        var body = buffer.readSlice(length: Int(remaining))!
        if type == .connect {
            guard isServer, version == nil else {
                throw MQTTCodecError(.protocolError, "second CONNECT on one connection")
            }
            let packet = try MQTTPacket.read(type: type, flags: first & 0x0F, version: .v5, body: &body)
            if case .connect(let connect) = packet { version = connect.version }
            return packet
        }
        return try MQTTPacket.read(type: type, flags: first & 0x0F, version: version ?? .v3_1_1, body: &body)
    }
}

/// A `ByteToMessageDecoder` over ``MQTTPacketParser``.
public struct MQTTPacketDecoder: ByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket

    public var parser: MQTTPacketParser

    public init(parser: MQTTPacketParser) {
        self.parser = parser
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let packet = try parser.next(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(packet))
        return .continue
    }

    public mutating func decodeLast(
        context: ChannelHandlerContext,
        buffer: inout ByteBuffer,
        seenEOF: Bool
    ) throws -> DecodingState {
        // A truncated packet at EOF is simply dropped with the connection: it was never complete,
        // so nothing in it was acknowledged.
        guard let packet = try parser.next(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(packet))
        return .continue
    }
}

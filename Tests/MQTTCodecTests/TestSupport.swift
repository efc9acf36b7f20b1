import MQTTCodec
import NIOCore
import Testing

// Helpers shared by the codec suites: byte literals, encoding to bytes, and parsers set up for
// either direction of the protocol.

/// A buffer holding exactly `bytes`.
func buffer(_ bytes: [UInt8]) -> ByteBuffer {
    ByteBuffer(bytes: bytes)
}

/// A buffer holding the UTF-8 bytes of `string`.
func buffer(_ string: String) -> ByteBuffer {
    ByteBuffer(string: string)
}

/// The ASCII bytes of `string` (for readable byte literals of topic names and the like).
func ascii(_ string: String) -> [UInt8] {
    Array(string.utf8)
}

/// The bytes `packet` encodes to.
func encoded(_ packet: MQTTPacket, _ version: MQTTProtocolVersion) -> [UInt8] {
    Array(packet.encode(version: version, allocator: ByteBufferAllocator()).readableBytesView)
}

/// The spec's variable byte integer encoding, written out independently of the codec so the tests
/// can build raw packets without trusting the code under test.
func vbi(_ value: Int) -> [UInt8] {
    var value = value
    var bytes: [UInt8] = []
    repeat {
        var byte = UInt8(value % 128)
        value /= 128
        if value > 0 { byte |= 0x80 }
        bytes.append(byte)
    } while value > 0
    return bytes
}

/// A whole packet: first byte, remaining length, body.
func rawPacket(_ first: UInt8, _ body: [UInt8]) -> [UInt8] {
    [first] + vbi(body.count) + body
}

/// A two-byte length prefixed string or binary field.
func field(_ bytes: [UInt8]) -> [UInt8] {
    [UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes
}

func field(_ string: String) -> [UInt8] {
    field(ascii(string))
}

/// A minimal CONNECT (client id "c", clean start, keep alive 0) at `version`, as raw bytes.
func minimalConnect(_ version: MQTTProtocolVersion) -> [UInt8] {
    var body = field("MQTT") + [version.rawValue, 0x02, 0x00, 0x00]
    if version == .v5 { body += [0x00] }
    body += field("c")
    return rawPacket(0x10, body)
}

/// A parser for the bytes a client sends, that has already accepted a CONNECT at `version`.
func serverParser(after version: MQTTProtocolVersion, maximumPacketSize: Int = 1_048_576) throws -> MQTTPacketParser {
    var parser = MQTTPacketParser(maximumPacketSize: maximumPacketSize, isServer: true)
    var bytes = buffer(minimalConnect(version))
    let packet = try parser.next(&bytes)
    guard case .connect = packet, parser.version == version else {
        Issue.record("the minimal CONNECT was not accepted: \(String(describing: packet))")
        return parser
    }
    return parser
}

/// A parser for the bytes a server sends to a client speaking `version`.
func clientParser(_ version: MQTTProtocolVersion, maximumPacketSize: Int = 1_048_576) -> MQTTPacketParser {
    MQTTPacketParser(maximumPacketSize: maximumPacketSize, isServer: false, version: version)
}

/// The direction a packet travels in, which decides the parser used to decode it.
enum Direction: Sendable, CustomStringConvertible {
    case clientToServer
    case serverToClient

    var description: String {
        switch self {
        case .clientToServer: "client→server"
        case .serverToClient: "server→client"
        }
    }
}

/// Decodes `bytes` as exactly one packet travelling in `direction` at `version`, and checks that the
/// parser consumed every byte.
func decodeOne(_ bytes: [UInt8], _ version: MQTTProtocolVersion, _ direction: Direction) throws -> MQTTPacket? {
    var parser: MQTTPacketParser
    switch direction {
    case .clientToServer:
        if bytes.first.map({ $0 >> 4 }) == 1 {
            // A CONNECT is the first packet on a fresh server parser.
            parser = MQTTPacketParser(isServer: true)
        } else {
            parser = try serverParser(after: version)
        }
    case .serverToClient:
        parser = clientParser(version)
    }
    var input = buffer(bytes)
    let packet = try parser.next(&input)
    #expect(input.readableBytes == 0, "the parser left \(input.readableBytes) bytes unread")
    return packet
}

/// Runs `body` and returns the `MQTTCodecError` it throws, recording an issue when it throws nothing
/// or something else.
@discardableResult
func codecError(
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> MQTTCodecError? {
    do {
        try body()
        Issue.record("expected an MQTTCodecError, but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let error as MQTTCodecError {
        return error
    } catch {
        Issue.record("expected an MQTTCodecError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// The error decoding `bytes` (one packet in `direction`) throws.
func decodeError(
    _ bytes: [UInt8],
    _ version: MQTTProtocolVersion,
    _ direction: Direction,
    sourceLocation: SourceLocation = #_sourceLocation
) -> MQTTCodecError? {
    codecError(sourceLocation: sourceLocation) { _ = try decodeOne(bytes, version, direction) }
}

extension Array where Element == UInt8 {
    /// `"10 0F 00 04"`: how byte arrays are shown when an expectation fails.
    var hex: String {
        map { byte in
            let digits = String(byte, radix: 16, uppercase: true)
            return byte < 16 ? "0" + digits : digits
        }.joined(separator: " ")
    }
}

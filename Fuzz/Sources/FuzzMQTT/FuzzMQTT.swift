import FuzzSupport
import Glibc
import MQTTCodec
import NIOCore

/// The MQTT decoder, as a server parses a client's stream and as a client parses a server's, in
/// MQTT 3.1.1 and 5.0.
///
/// Input: byte 0 chooses the side and version, byte 1 seeds how the rest is cut into reads, the rest
/// is the stream. Besides not crashing, it checks two properties:
/// - the packets and the error are the same whether the stream arrives in one read or in chunks;
/// - every packet parsed re-encodes to bytes that parse back to the same packet.
enum FuzzMQTT {
    static let maximumPacketSize = 65536

    static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return }
        let mode = input[0]
        let bytes = Array(input)[2...]
        let isServer = mode & 1 == 0
        let version: MQTTProtocolVersion? = isServer ? nil : (mode & 2 == 0 ? .v3_1_1 : .v5)
        let parser = MQTTPacketParser(maximumPacketSize: maximumPacketSize, isServer: isServer, version: version)

        let whole = parse(bytes: [bytes], parser: parser)
        var chunker = Chunker(seed: input[1])
        let chunked = parse(bytes: chunker.chunks(of: bytes), parser: parser)
        check(whole.packets == chunked.packets, "chunked parse differs: \(whole.packets) vs \(chunked.packets)")
        check(whole.error == chunked.error, "chunked parse fails differently: \(String(describing: whole.error)) vs \(String(describing: chunked.error))")

        for parsed in whole.packets {
            let packet = parsed.packet
            let version = parsed.version
            let encoded = packet.encode(version: version, allocator: ByteBufferAllocator())
            var again = MQTTPacketParser(
                maximumPacketSize: Int.max,
                isServer: isServer,
                version: packet.isConnect ? nil : version
            )
            var buffer = encoded
            do {
                let parsed = try again.next(&buffer)
                check(parsed == packet, "re-encoded \(packet) parses as \(String(describing: parsed))")
                check(buffer.readableBytes == 0, "re-encoded \(packet) leaves \(buffer.readableBytes) bytes")
            } catch {
                fail("re-encoded \(packet) does not parse: \(error)")
            }
        }
    }

    /// What one stream parses to: the packets (with the version each was parsed under) and the error
    /// that ended it, if any.
    struct Outcome {
        var packets: [Parsed] = []
        var error: MQTTCodecError.Code?
    }

    struct Parsed: Equatable {
        var packet: MQTTPacket
        var version: MQTTProtocolVersion
    }

    static func parse(bytes reads: [ArraySlice<UInt8>], parser: MQTTPacketParser) -> Outcome {
        var parser = parser
        var outcome = Outcome()
        var buffer = ByteBuffer()
        for read in reads {
            buffer.writeBytes(read)
            do {
                while let packet = try parser.next(&buffer) {
                    outcome.packets.append(Parsed(packet: packet, version: parser.version ?? .v3_1_1))
                }
            } catch {
                outcome.error = error.code
                return outcome
            }
            buffer.discardReadBytes()
        }
        return outcome
    }
}

extension MQTTPacket {
    var isConnect: Bool {
        if case .connect = self { return true }
        return false
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzMQTT.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

#if FUZZING
@_cdecl("FuzzMQTT_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    FuzzDriver.run(argc: argc, argv: argv, fuzzTestOneInput)
}
#else
@main
enum Replay {
    static func main() { exit(FuzzDriver.replay(fuzzTestOneInput)) }
}
#endif

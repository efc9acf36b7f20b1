@testable import GatewayTransport
import FuzzSupport
import Glibc
import MQTTCodec
import NIOCore

/// The JSON WebSocket API: the request parser (``JSONScanner`` and ``JSONAPIProtocol/parse(_:)``) and
/// the replies and pushes built from what a client sent.
///
/// Besides not crashing, it checks that whatever a client sends comes back as well-formed JSON with
/// exactly the members the reply defines: an error reply quoting the client's text, and the message
/// push carrying the client's topic and payload (embedded when it is JSON, base64 otherwise), with the
/// topic and base64 payload decoding back to what was sent.
enum FuzzJSONAPI {
    static func run(_ input: UnsafeRawBufferPointer) {
        let text = Array(input)
        switch JSONAPIProtocol.parse(text) {
        case .failure(let error):
            let reply = JSONAPIProtocol.error(id: error.id, reason: error.reason)
            let members = expectObject(reply, names: ["op", "id", "reason"])
            let scanner = JSONScanner(reply)
            check(scanner.string(at: members[2].value) == error.reason, "the reason does not round-trip")
        case .success(let request):
            let ack = JSONAPIProtocol.ack(id: request.id)
            _ = expectObject(ack, names: ["op", "id"])
            if case .publish(let topic, let payload, let qos, let retain) = request.op {
                push(topic: topic, payload: payload, qos: qos, retain: retain)
            }
        }
        // The request itself as a payload, under a topic made of its text.
        let topic = String(decoding: text.prefix(64), as: UTF8.self)
        if JSONAPIProtocol.isValidTopicName(topic) {
            push(topic: topic, payload: text, qos: .atMostOnce, retain: false)
        }
    }

    static func push(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool) {
        let publish = MQTTPublishPacket(topic: topic, payload: ByteBuffer(bytes: payload), qos: qos, retain: retain)
        var buffer = ByteBuffer()
        JSONAPIProtocol.message(publish, timestampMilliseconds: 1_700_000_000_000, into: &buffer)
        let bytes = Array(buffer.readableBytesView)
        let embedded = JSONScanner.isJSON(payload)
        let names = embedded
            ? ["op", "topic", "payload", "qos", "retain", "ts"]
            : ["op", "topic", "payload", "encoding", "qos", "retain", "ts"]
        let members = expectObject(bytes, names: names)
        let scanner = JSONScanner(bytes)
        check(scanner.string(at: members[1].value) == topic, "the topic does not round-trip")
        if embedded {
            let raw = Array(bytes[members[2].value])
            check(
                raw == Array(payload.drop(while: isSpace).reversed().drop(while: isSpace).reversed()),
                "the embedded payload changed"
            )
        } else {
            let encoded = scanner.string(at: members[2].value).map { Array($0.utf8) }
            check(encoded.flatMap { Base64.decode($0) } == payload, "the base64 payload does not round-trip")
        }
    }

    static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    /// The members of `bytes`, which must be one JSON object with exactly these member names.
    static func expectObject(_ bytes: [UInt8], names: [String]) -> [JSONScanner.Member] {
        do {
            let members = try JSONScanner.objectMembers(bytes)
            check(members.map(\.name) == names, "members \(members.map(\.name)), expected \(names)")
            return members
        } catch {
            fail("not JSON (\(error)): \(String(decoding: bytes, as: UTF8.self))")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzJSONAPI.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

#if FUZZING
@_cdecl("FuzzJSONAPI_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    FuzzDriver.run(argc: argc, argv: argv, fuzzTestOneInput)
}
#else
@main
enum Replay {
    static func main() { exit(FuzzDriver.replay(fuzzTestOneInput)) }
}
#endif

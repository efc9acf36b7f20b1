import MQTTCodec
import NIOCore
import NIOWebSocket
import Testing

@testable import GatewayTransport

@Suite("WebSocket state machine")
struct WebSocketStateMachineTests {
    private let mask: WebSocketMaskingKey = [1, 2, 3, 4]

    private func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true, masked: Bool = true) -> WebSocketFrame {
        var data = ByteBuffer(bytes: bytes)
        if masked { data.webSocketUnmask(mask) }  // masking and unmasking are the same XOR
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: masked ? mask : nil, data: data)
    }

    private func machine(_ endpoint: WebSocketStateMachine.Endpoint, max: Int = 16) -> WebSocketStateMachine {
        WebSocketStateMachine(configuration: .init(endpoint: endpoint, maxMessageSize: max))
    }

    @Test func reassemblesFragmentedText() {
        var m = machine(.textMessages)
        #expect(m.receive(frame(.text, Array("ab".utf8), fin: false)) == .none)
        #expect(m.receive(frame(.ping, [9])) == .sendPong(ByteBuffer(bytes: [9])))
        #expect(m.receive(frame(.continuation, Array("cd".utf8))) == .deliver(ByteBuffer(string: "abcd"), opcode: .text))
    }

    @Test func mqttStreamPassesFramesThrough() {
        var m = machine(.mqttStream)
        #expect(m.receive(frame(.binary, [0x10, 0x02], fin: false)) == .deliver(ByteBuffer(bytes: [0x10, 0x02]), opcode: .binary))
        #expect(m.receive(frame(.continuation, [0x00, 0x00])) == .deliver(ByteBuffer(bytes: [0x00, 0x00]), opcode: .binary))
        #expect(m.receive(frame(.text, [0x31])) == .sendCloseAndDisconnect(.unacceptableData, reason: "MQTT over WebSocket uses binary frames"))
    }

    @Test func rejectsUnmaskedFrames() {
        var m = machine(.textMessages)
        guard case .sendCloseAndDisconnect(.protocolError, _) = m.receive(frame(.text, [0x31], masked: false)) else {
            Issue.record("unmasked frame accepted")
            return
        }
    }

    @Test func invalidUTF8Is1007() {
        var m = machine(.textMessages)
        guard case .sendCloseAndDisconnect(.dataInconsistentWithMessage, _) = m.receive(frame(.text, [0xC3, 0x28])) else {
            Issue.record("invalid UTF-8 accepted")
            return
        }
    }

    @Test func oversizedMessageIs1009() {
        var m = machine(.textMessages, max: 4)
        #expect(m.receive(frame(.text, Array("ab".utf8), fin: false)) == .none)
        guard case .sendCloseAndDisconnect(.messageTooLarge, _) = m.receive(frame(.continuation, Array("cde".utf8))) else {
            Issue.record("oversized message accepted")
            return
        }
    }

    @Test func continuationWithoutStartIs1002() {
        var m = machine(.echo)
        guard case .sendCloseAndDisconnect(.protocolError, _) = m.receive(frame(.continuation, [1])) else {
            Issue.record("stray continuation accepted")
            return
        }
    }

    @Test func closeHandshake() {
        var m = machine(.textMessages)
        #expect(m.close(code: .goingAway) == .sendClose(.goingAway))
        #expect(m.close(code: .normalClosure) == .alreadyClosing)
        #expect(!m.canSendData)
        #expect(m.receive(frame(.connectionClose, [0x03, 0xE9])) == .disconnect)

        var peer = machine(.textMessages)
        #expect(peer.receive(frame(.connectionClose, [0x03, 0xE8])) == .sendCloseAndDisconnect(.normalClosure, reason: ""))
        var bad = machine(.textMessages)
        guard case .sendCloseAndDisconnect(.protocolError, _) = bad.receive(frame(.connectionClose, [0x03, 0xED])) else {
            Issue.record("close code 1005 on the wire accepted")
            return
        }
    }

    @Test func pingsIdleThenDropsDead() {
        var m = machine(.textMessages)
        #expect(m.tick() == .sendPing)
        #expect(m.receive(frame(.pong, [])) == .none)
        #expect(m.tick() == .none)  // heard from it during the interval
        #expect(m.tick() == .sendPing)
        #expect(m.tick() == .disconnect)
    }
}

@Suite("JSON API")
struct JSONAPITests {
    @Test func scannerKeepsRawValues() throws {
        let text = Array(#"{"op":"publish","payload": {"t" : 21.5},"id":[1]}"#.utf8)
        let members = try JSONScanner.objectMembers(text)
        #expect(members.map(\.name) == ["op", "payload", "id"])
        #expect(String(decoding: text[members[1].value], as: UTF8.self) == #"{"t" : 21.5}"#)
    }

    @Test(arguments: [#"{"a":}"#, "{", #"{"a":1,}"#, #"{"a":"\x"}"#, "[1] x", #"{"a":01}"#, #"{"a":"\ud800"}"#])
    func scannerRejects(_ text: String) {
        #expect(!JSONScanner.isJSON(Array(text.utf8)))
    }

    @Test func scannerDecodesEscapes() throws {
        let text = Array(#"{"s":"a\"b\u00e9\ud83d\ude00"}"#.utf8)
        let members = try JSONScanner.objectMembers(text)
        #expect(JSONScanner(text).string(at: members[0].value) == "a\"bé😀")
    }

    @Test func base64RoundTrip() {
        for bytes: [UInt8] in [[], [0], [0, 1], [0, 1, 2], Array(0...255)] {
            var out: [UInt8] = []
            Base64.encode(bytes, into: &out)
            #expect(Base64.decode(out) == bytes)
        }
        #expect(Base64.decode(Array("AA=A".utf8)) == nil)
        #expect(Base64.decode(Array("%%%".utf8)) == nil)
    }

    @Test func parsesRequestsAndErrors() {
        let publish = JSONAPIProtocol.parse(Array(#"{"op":"publish","topic":"a/b","payload":"on","qos":1,"id":"x"}"#.utf8))
        #expect(publish == .success(JSONAPIRequestMessage(id: Array(#""x""#.utf8), op: .publish(topic: "a/b", payload: Array(#""on""#.utf8), qos: .atLeastOnce, retain: false))))
        #expect(JSONAPIProtocol.parse(Array(#"{"op":"publish","topic":"a/#","id":3}"#.utf8)) == .failure(JSONAPIRequestError(id: Array("3".utf8), reason: "bad topic 'a/#'")))
        #expect(JSONAPIProtocol.parse(Array(#"{"op":"nope"}"#.utf8)) == .failure(JSONAPIRequestError(id: Array("null".utf8), reason: "unknown op 'nope'")))
    }
}

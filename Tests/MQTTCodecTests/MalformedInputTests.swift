import MQTTCodec
import NIOCore
import Testing

/// Hostile and broken input: every case must end in a specific `MQTTCodecError` (or "need more
/// data"), never a crash.
@Suite("Malformed input")
struct MalformedInputTests {
    // MARK: Fixed header

    @Test("reserved packet type 0 is rejected on its first byte", arguments: [true, false])
    func packetTypeZero(isServer: Bool) {
        var parser = MQTTPacketParser(isServer: isServer, version: isServer ? nil : .v3_1_1)
        var input = buffer([0x00])
        let error = codecError { _ = try parser.next(&input) }
        #expect(error?.code == .invalidPacketType)
        #expect(error?.reasonCode == .malformedPacket)
    }

    @Test(
        "reserved fixed-header flags must be exactly as the spec says (MQTT-2.2.2-1)",
        arguments: [
            // SUBSCRIBE, UNSUBSCRIBE and PUBREL need 0010.
            [0x80, 0x08, 0x00, 0x01, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00],
            [0x8F, 0x08, 0x00, 0x01, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00],
            [0xA0, 0x07, 0x00, 0x01, 0x00, 0x03, 0x61, 0x2F, 0x62],
            [0x60, 0x02, 0x00, 0x01],
            [0x63, 0x02, 0x00, 0x01],
            // Everything else needs 0000.
            [0x42, 0x02, 0x00, 0x01],
            [0x51, 0x02, 0x00, 0x01],
            [0x78, 0x02, 0x00, 0x01],
            [0xC1, 0x00],
            [0xE2, 0x00],
        ] as [[UInt8]]
    )
    func reservedFlags(_ bytes: [UInt8]) throws {
        let error = decodeError(bytes, .v3_1_1, .clientToServer)
        #expect(error?.code == .invalidFixedHeaderFlags)
        #expect(error?.reasonCode == .malformedPacket)
    }

    @Test("reserved flags on server packets and on CONNECT", arguments: [[0x21, 0x02, 0x00, 0x00], [0x92, 0x03, 0x00, 0x01, 0x00], [0xB4, 0x02, 0x00, 0x01], [0xD8, 0x00]] as [[UInt8]])
    func reservedFlagsServerPackets(_ bytes: [UInt8]) {
        #expect(decodeError(bytes, .v3_1_1, .serverToClient)?.code == .invalidFixedHeaderFlags)
    }

    @Test("CONNECT with fixed-header flags set")
    func connectFixedHeaderFlags() {
        var bytes = minimalConnect(.v3_1_1)
        bytes[0] = 0x11
        #expect(decodeError(bytes, .v3_1_1, .clientToServer)?.code == .invalidFixedHeaderFlags)
    }

    @Test("fixed-size packets with the wrong length are malformed")
    func wrongLengths() {
        // PINGREQ and DISCONNECT (3.1.1) have remaining length 0; PUBACK has exactly 2 in 3.1.1.
        #expect(decodeError([0xC0, 0x01, 0x00], .v3_1_1, .clientToServer)?.code == .malformedPacket)
        #expect(decodeError([0xD0, 0x01, 0x00], .v3_1_1, .serverToClient)?.code == .malformedPacket)
        #expect(decodeError([0xE0, 0x01, 0x00], .v3_1_1, .clientToServer)?.code == .malformedPacket)
        #expect(decodeError([0x40, 0x03, 0x00, 0x01, 0x00], .v3_1_1, .clientToServer)?.code == .malformedPacket)
        #expect(decodeError([0x40, 0x01, 0x00], .v3_1_1, .clientToServer)?.code == .malformedPacket)
        // CONNACK has exactly 2 in 3.1.1.
        #expect(decodeError([0x20, 0x03, 0x00, 0x00, 0x00], .v3_1_1, .serverToClient)?.code == .malformedPacket)
    }

    // MARK: PUBLISH

    @Test("PUBLISH with QoS 3 (both QoS bits set) is malformed (MQTT-3.3.1-4)", arguments: [0x36, 0x37, 0x3E] as [UInt8])
    func publishQoS3(_ first: UInt8) {
        let bytes = [first, 0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x01]
        let error = decodeError(bytes, .v3_1_1, .clientToServer)
        #expect(error?.code == .invalidQoS)
        #expect(error?.reasonCode == .malformedPacket)
    }

    @Test("PUBLISH QoS 0 with DUP is malformed (MQTT-3.3.1-2)", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func publishQoS0Dup(_ version: MQTTProtocolVersion) {
        let body = field("a") + (version == .v5 ? [0x00] : []) + ascii("x")
        #expect(decodeError(rawPacket(0x38, body), version, .clientToServer)?.code == .malformedPacket)
    }

    @Test("packet identifier 0 is malformed (MQTT-2.3.1-1)", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func packetIdentifierZero(_ version: MQTTProtocolVersion) {
        let props: [UInt8] = version == .v5 ? [0x00] : []
        let cases: [[UInt8]] = [
            rawPacket(0x32, field("a") + [0x00, 0x00] + props + ascii("x")),  // PUBLISH QoS 1
            rawPacket(0x34, field("a") + [0x00, 0x00] + props + ascii("x")),  // PUBLISH QoS 2
            [0x40, 0x02, 0x00, 0x00],  // PUBACK
            [0x50, 0x02, 0x00, 0x00],  // PUBREC
            [0x62, 0x02, 0x00, 0x00],  // PUBREL
            [0x70, 0x02, 0x00, 0x00],  // PUBCOMP
            rawPacket(0x82, [0x00, 0x00] + props + field("a") + [0x00]),  // SUBSCRIBE
            rawPacket(0xA2, [0x00, 0x00] + props + field("a")),  // UNSUBSCRIBE
        ]
        for bytes in cases {
            #expect(decodeError(bytes, version, .clientToServer)?.code == .malformedPacket, "\(bytes.hex)")
        }
    }

    @Test("PUBLISH topic names may not contain wildcards or be empty (3.1.1)")
    func publishTopicName() {
        for topic in ["a/+", "#", "a/#", "+", ""] {
            let bytes = rawPacket(0x30, field(topic) + ascii("x"))
            let error = decodeError(bytes, .v3_1_1, .clientToServer)
            #expect(error?.code == .invalidTopicName, "topic '\(topic)'")
            #expect(error?.reasonCode == .topicNameInvalid)
        }
    }

    @Test("an MQTT 5 PUBLISH may have an empty topic name (for a Topic Alias)")
    func emptyTopicV5() throws {
        let bytes = rawPacket(0x30, field("") + [0x03, 0x23, 0x00, 0x01] + ascii("x"))
        let packet = try decodeOne(bytes, .v5, .clientToServer)
        guard case .publish(let publish) = packet else {
            Issue.record("not a PUBLISH: \(String(describing: packet))")
            return
        }
        #expect(publish.topic == "")
        #expect(publish.properties.topicAlias == 1)
    }

    // MARK: UTF-8

    @Test(
        "ill-formed UTF-8 and U+0000 in a topic name are rejected (MQTT-1.5.3-1, MQTT-1.5.3-2)",
        arguments: [
            [0xC3, 0x28],  // invalid continuation byte
            [0xED, 0xA0, 0x80],  // lone surrogate U+D800
            [0xED, 0xBF, 0xBF],  // lone surrogate U+DFFF
            [0x61, 0x00, 0x62],  // U+0000
            [0xC0, 0xAF],  // overlong "/"
            [0xF4, 0x90, 0x80, 0x80],  // above U+10FFFF
            [0xE2, 0x82],  // truncated sequence
            [0xFF],
        ] as [[UInt8]]
    )
    func badUTF8Topic(_ topic: [UInt8]) {
        let bytes = rawPacket(0x30, field(topic) + ascii("x"))
        for direction in [Direction.clientToServer, .serverToClient] {
            let error = decodeError(bytes, .v3_1_1, direction)
            #expect(error?.code == .invalidUTF8)
            #expect(error?.reasonCode == .malformedPacket)
        }
    }

    @Test("ill-formed UTF-8 in CONNECT strings and SUBSCRIBE filters is rejected")
    func badUTF8Elsewhere() {
        let clientID = rawPacket(0x10, field("MQTT") + [0x04, 0x02, 0x00, 0x00] + field([0xED, 0xA0, 0x80]))
        #expect(decodeError(clientID, .v3_1_1, .clientToServer)?.code == .invalidUTF8)
        let username = rawPacket(0x10, field("MQTT") + [0x04, 0x82, 0x00, 0x00] + field("c") + field([0x00]))
        #expect(decodeError(username, .v3_1_1, .clientToServer)?.code == .invalidUTF8)
        let filter = rawPacket(0x82, [0x00, 0x01] + field([0xC3, 0x28]) + [0x00])
        #expect(decodeError(filter, .v3_1_1, .clientToServer)?.code == .invalidUTF8)
        let unsubscribe = rawPacket(0xA2, [0x00, 0x01] + field([0x61, 0x00]))
        #expect(decodeError(unsubscribe, .v3_1_1, .clientToServer)?.code == .invalidUTF8)
    }

    @Test("U+FEFF and other non-characters are kept, not stripped (MQTT-1.5.3-3)")
    func byteOrderMark() throws {
        let topic: [UInt8] = [0xEF, 0xBB, 0xBF, 0x61]
        let packet = try decodeOne(rawPacket(0x30, field(topic) + ascii("x")), .v3_1_1, .clientToServer)
        guard case .publish(let publish) = packet else {
            Issue.record("not a PUBLISH")
            return
        }
        #expect(Array(publish.topic.utf8) == topic)
    }

    // MARK: CONNECT

    @Test("CONNECT reserved flag set is malformed (MQTT-3.1.2-3)", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func connectReservedFlag(_ version: MQTTProtocolVersion) {
        var bytes = minimalConnect(version)
        bytes[9] |= 0x01  // connect flags: 10 LL 00 04 M Q T T level FLAGS
        #expect(decodeError(bytes, version, .clientToServer)?.code == .malformedPacket)
    }

    @Test("will QoS or will retain without the will flag is malformed (MQTT-3.1.2-11, -13, -15)", arguments: [0x0A, 0x12, 0x22] as [UInt8])
    func willBitsWithoutWill(_ flags: UInt8) {
        for version in [MQTTProtocolVersion.v3_1_1, .v5] {
            var bytes = minimalConnect(version)
            bytes[9] = flags
            #expect(decodeError(bytes, version, .clientToServer)?.code == .malformedPacket, "\(version) flags \(flags)")
        }
    }

    @Test("will QoS 3 is malformed (MQTT-3.1.2-14)")
    func willQoS3() {
        let bytes = rawPacket(0x10, field("MQTT") + [0x04, 0x1E, 0x00, 0x00] + field("c") + field("w") + field("x"))
        #expect(decodeError(bytes, .v3_1_1, .clientToServer)?.code == .malformedPacket)
    }

    @Test("password without username is malformed in 3.1.1 (MQTT-3.1.2-22)")
    func passwordWithoutUsername() {
        let bytes = rawPacket(0x10, field("MQTT") + [0x04, 0x42, 0x00, 0x00] + field("c") + field("pw"))
        #expect(decodeError(bytes, .v3_1_1, .clientToServer)?.code == .malformedPacket)
    }

    @Test("a will topic with a wildcard is rejected")
    func willTopicWildcard() {
        let bytes = rawPacket(0x10, field("MQTT") + [0x04, 0x06, 0x00, 0x00] + field("c") + field("w/#") + field("x"))
        #expect(decodeError(bytes, .v3_1_1, .clientToServer)?.code == .invalidTopicName)
    }

    @Test("trailing bytes after CONNECT are malformed", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func connectTrailingBytes(_ version: MQTTProtocolVersion) {
        var bytes = minimalConnect(version)
        bytes[1] += 1
        bytes.append(0x00)
        #expect(decodeError(bytes, version, .clientToServer)?.code == .malformedPacket)
    }

    @Test("CONNECT fields cut short by the remaining length are malformed")
    func connectTruncatedBody() {
        let full = minimalConnect(.v3_1_1)
        // Claim fewer bytes than the fields need, from "no protocol name" up to "client id cut short".
        for remaining in 0..<(full.count - 2) {
            let bytes = [0x10, UInt8(remaining)] + full[2..<(2 + remaining)]
            let error = decodeError(bytes, .v3_1_1, .clientToServer)
            #expect(error?.code == .malformedPacket, "remaining length \(remaining)")
        }
    }

    @Test(
        "an unsupported protocol level is refused (MQTT-3.1.2-2)",
        arguments: [("MQTT", 3), ("MQTT", 6), ("MQTT", 0), ("MQIsdp", 3)] as [(String, UInt8)]
    )
    func unsupportedProtocolVersion(_ name: String, _ level: UInt8) {
        let bytes = rawPacket(0x10, field(name) + [level, 0x02, 0x00, 0x00] + field("c"))
        let error = decodeError(bytes, .v3_1_1, .clientToServer)
        #expect(error?.code == .unsupportedProtocolVersion)
        #expect(error?.reasonCode == .unsupportedProtocolVersion)
    }

    @Test("an unknown protocol name is refused")
    func unknownProtocolName() {
        let bytes = rawPacket(0x10, field("HTTP") + [0x04, 0x02, 0x00, 0x00] + field("c"))
        let error = decodeError(bytes, .v3_1_1, .clientToServer)
        #expect(error != nil)
        #expect(error?.code != .unsupportedProtocolVersion)
    }

    @Test("a second CONNECT is a protocol error (MQTT-3.1.0-2)", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func secondConnect(_ version: MQTTProtocolVersion) throws {
        var parser = try serverParser(after: version)
        var input = buffer(minimalConnect(version))
        let error = codecError { _ = try parser.next(&input) }
        #expect(error?.code == .protocolError)
        #expect(error?.reasonCode == .protocolError)
    }

    @Test(
        "the first packet must be CONNECT (MQTT-3.1.0-1)",
        arguments: [[0xC0, 0x00], [0x30, 0x04, 0x00, 0x01, 0x61, 0x78], [0xE0, 0x00], [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00]] as [[UInt8]]
    )
    func firstPacketNotConnect(_ bytes: [UInt8]) {
        var parser = MQTTPacketParser(isServer: true)
        // Rejected on the first byte: no need to wait for the rest of the packet.
        var firstByte = buffer([bytes[0]])
        #expect(codecError { _ = try parser.next(&firstByte) }?.code == .protocolError)
        var whole = buffer(bytes)
        #expect(codecError { _ = try parser.next(&whole) }?.code == .protocolError)
    }

    @Test("a server does not accept packets only a server sends", arguments: [[0x20, 0x02, 0x00, 0x00], [0x90, 0x03, 0x00, 0x01, 0x00], [0xB0, 0x02, 0x00, 0x01], [0xD0, 0x00]] as [[UInt8]])
    func serverOnlyPackets(_ bytes: [UInt8]) throws {
        var parser = try serverParser(after: .v3_1_1)
        var input = buffer(bytes)
        #expect(codecError { _ = try parser.next(&input) }?.code == .invalidPacketType)
    }

    @Test("AUTH does not exist in 3.1.1")
    func authIn311() {
        #expect(decodeError([0xF0, 0x00], .v3_1_1, .clientToServer)?.code == .invalidPacketType)
    }

    // MARK: SUBSCRIBE, UNSUBSCRIBE

    @Test("SUBSCRIBE and UNSUBSCRIBE without a topic filter are protocol errors (MQTT-3.8.3-3, MQTT-3.10.3-2)")
    func emptySubscribe() {
        #expect(decodeError([0x82, 0x02, 0x00, 0x01], .v3_1_1, .clientToServer)?.code == .protocolError)
        #expect(decodeError([0xA2, 0x02, 0x00, 0x01], .v3_1_1, .clientToServer)?.code == .protocolError)
        #expect(decodeError([0x82, 0x03, 0x00, 0x01, 0x00], .v5, .clientToServer)?.code == .protocolError)
    }

    @Test("SUBSCRIBE with requested QoS 3 or reserved option bits is rejected")
    func subscribeOptions() {
        let qos3 = rawPacket(0x82, [0x00, 0x01] + field("a") + [0x03])
        #expect(decodeError(qos3, .v3_1_1, .clientToServer)?.code == .invalidQoS)
        // 3.1.1: the upper six bits are reserved (MQTT-3-8.3-4).
        let reserved311 = rawPacket(0x82, [0x00, 0x01] + field("a") + [0x04])
        #expect(decodeError(reserved311, .v3_1_1, .clientToServer)?.code == .malformedPacket)
        // 5.0: bits 6 and 7 are reserved; retain handling 3 is a protocol error.
        let reserved5 = rawPacket(0x82, [0x00, 0x01, 0x00] + field("a") + [0x40])
        #expect(decodeError(reserved5, .v5, .clientToServer)?.code == .malformedPacket)
        let handling3 = rawPacket(0x82, [0x00, 0x01, 0x00] + field("a") + [0x30])
        #expect(decodeError(handling3, .v5, .clientToServer)?.code == .protocolError)
    }

    @Test("a topic filter cut short by the remaining length is malformed")
    func subscribeTruncatedFilter() {
        // Filter length 5 but only 1 byte left, and a filter without its options byte.
        #expect(decodeError([0x82, 0x05, 0x00, 0x01, 0x00, 0x05, 0x61], .v3_1_1, .clientToServer)?.code == .malformedPacket)
        #expect(decodeError([0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61], .v3_1_1, .clientToServer)?.code == .malformedPacket)
        // PUBLISH whose topic length runs past the packet.
        #expect(decodeError([0x30, 0x03, 0x00, 0x05, 0x61], .v3_1_1, .clientToServer)?.code == .malformedPacket)
    }

    // MARK: Size

    @Test("a header announcing 200 MB is rejected after its first five bytes")
    func hugeAnnouncement() throws {
        // 200,000,000 = 80 84 AF 5F as a variable byte integer.
        let header: [UInt8] = [0x10, 0x80, 0x84, 0xAF, 0x5F]
        var parser = MQTTPacketParser(isServer: true)
        for length in 1..<header.count {
            var input = buffer(Array(header.prefix(length)))
            #expect(try parser.next(&input) == nil, "\(length) bytes")
        }
        var input = buffer(header)
        let error = codecError { _ = try parser.next(&input) }
        #expect(error?.code == .packetTooLarge)
        #expect(error?.reasonCode == .packetTooLarge)
        #expect(input.readerIndex == 0)

        // The same for a PUBLISH after CONNECT, and for a client reading a server.
        var afterConnect = try serverParser(after: .v5)
        var publish = buffer([0x30, 0x80, 0x84, 0xAF, 0x5F])
        #expect(codecError { _ = try afterConnect.next(&publish) }?.code == .packetTooLarge)
        var client = clientParser(.v5)
        var fromServer = buffer([0x30, 0x80, 0x84, 0xAF, 0x5F])
        #expect(codecError { _ = try client.next(&fromServer) }?.code == .packetTooLarge)
    }

    @Test("the maximum packet size counts the whole packet, fixed header included")
    func maximumPacketSizeBoundary() throws {
        // PUBLISH "a/b" with payload "hij" is 10 bytes in all: 30 08 00 03 61 2F 62 68 69 6A.
        let ten: [UInt8] = [0x30, 0x08, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x68, 0x69, 0x6A]
        var fits = clientParser(.v3_1_1, maximumPacketSize: 10)
        var input = buffer(ten)
        #expect(try fits.next(&input) == .publish(MQTTPublishPacket(topic: "a/b", payload: buffer("hij"))))

        let eleven: [UInt8] = [0x30, 0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x68, 0x69, 0x6A, 0x6B]
        var tooSmall = clientParser(.v3_1_1, maximumPacketSize: 10)
        // Rejected on the header alone.
        var header = buffer(Array(eleven.prefix(2)))
        #expect(codecError { _ = try tooSmall.next(&header) }?.code == .packetTooLarge)
    }

    @Test("the parser never crashes on arbitrary bytes")
    func fuzz() {
        // A deterministic generator (xorshift), so a failure is reproducible.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        for round in 0..<2_000 {
            let count = Int(next() % 40)
            var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
            // Half the time start with a valid CONNECT, so the later packets reach the packet decoders.
            if round % 2 == 0 { bytes = minimalConnect(round % 4 == 0 ? .v5 : .v3_1_1) + bytes }
            var parser = MQTTPacketParser(maximumPacketSize: 64, isServer: true)
            var input = buffer(bytes)
            do {
                while try parser.next(&input) != nil {}
            } catch {
                // Any MQTTCodecError is fine; a crash is not.
            }
        }
    }
}

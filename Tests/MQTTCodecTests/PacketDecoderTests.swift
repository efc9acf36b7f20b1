import MQTTCodec
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

/// `MQTTPacketDecoder` as a `ByteToMessageDecoder`: drip-fed, coalesced, and rejecting bad input.
///
/// `ByteToMessageDecoderVerifier` feeds its input/output pairs in shuffled order, many times over, to
/// one decoder. A server decoder accepts CONNECT only as the first packet, so the verifier runs on
/// parsers whose version is already known (`MQTTPacketParser(isServer:version:)`), and the stream that
/// starts with CONNECT is drip-fed and coalesced by hand below, on a fresh channel each time.
@Suite("MQTTPacketDecoder")
struct PacketDecoderTests {
    private static func pairs(_ packets: [MQTTPacket], _ version: MQTTProtocolVersion) -> [(ByteBuffer, [MQTTPacket])] {
        packets.map { (buffer(encoded($0, version)), [$0]) }
    }

    /// What a server sends a client, for the verifier (no CONNECT, so order does not matter).
    private static func serverPackets(_ version: MQTTProtocolVersion) -> [MQTTPacket] {
        var properties = MQTTProperties()
        if version == .v5 {
            properties.topicAliasMaximum = 10
            properties.userProperties = [MQTTUserProperty(name: "a", value: "b")]
        }
        var packets: [MQTTPacket] = [
            .connack(MQTTConnAckPacket(sessionPresent: true, reasonCode: .success, properties: properties)),
            .publish(MQTTPublishPacket(topic: "a/b", payload: buffer("hello"))),
            .publish(MQTTPublishPacket(topic: "a/c", payload: ByteBuffer(), qos: .atLeastOnce, retain: true, packetIdentifier: 7)),
            .publish(
                MQTTPublishPacket(
                    topic: "big",
                    payload: buffer([UInt8](repeating: 0x5A, count: 300)),
                    qos: .exactlyOnce,
                    dup: true,
                    packetIdentifier: 8
                )
            ),
            .puback(MQTTAckPacket(packetIdentifier: 1)),
            .pubrec(MQTTAckPacket(packetIdentifier: 2)),
            .pubrel(MQTTAckPacket(packetIdentifier: 3)),
            .pubcomp(MQTTAckPacket(packetIdentifier: 4)),
            .suback(MQTTSubAckPacket(packetIdentifier: 5, reasonCodes: [.grantedQoS0, .grantedQoS2, .unspecifiedError])),
            .unsuback(MQTTSubAckPacket(packetIdentifier: 6, reasonCodes: version == .v5 ? [.success] : [])),
            .pingresp,
        ]
        if version == .v5 {
            packets.append(.disconnect(MQTTReasonPacket(reasonCode: .serverShuttingDown)))
            packets.append(.auth(MQTTReasonPacket()))
        }
        return packets
    }

    /// What a client sends after CONNECT.
    private static func clientPackets(_ version: MQTTProtocolVersion) -> [MQTTPacket] {
        [
            .publish(MQTTPublishPacket(topic: "s/1/temp", payload: buffer("21.5"), qos: .atLeastOnce, packetIdentifier: 1)),
            .publish(MQTTPublishPacket(topic: "s/1/hum", payload: buffer("40"))),
            .puback(MQTTAckPacket(packetIdentifier: 9)),
            .pubrec(MQTTAckPacket(packetIdentifier: 10)),
            .pubrel(MQTTAckPacket(packetIdentifier: 11)),
            .pubcomp(MQTTAckPacket(packetIdentifier: 12)),
            .subscribe(
                MQTTSubscribePacket(
                    packetIdentifier: 2,
                    subscriptions: [MQTTSubscription(topicFilter: "cmd/#", qos: .atLeastOnce), MQTTSubscription(topicFilter: "+/x", qos: .atMostOnce)]
                )
            ),
            .unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 3, topicFilters: ["+/x"])),
            .pingreq,
        ]
    }

    @Test("server packets, drip-fed and coalesced, through ByteToMessageDecoderVerifier", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func verifierServerPackets(_ version: MQTTProtocolVersion) throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: Self.pairs(Self.serverPackets(version), version),
            decoderFactory: { MQTTPacketDecoder(parser: clientParser(version)) }
        )
    }

    @Test("client packets after CONNECT, drip-fed and coalesced, through ByteToMessageDecoderVerifier", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func verifierClientPackets(_ version: MQTTProtocolVersion) throws {
        var pairs = Self.pairs(Self.clientPackets(version), version)
        // One input holding two packets; the verifier does the splitting and joining of the rest.
        let two: [MQTTPacket] = [.pingreq, .puback(MQTTAckPacket(packetIdentifier: 77))]
        pairs.append((buffer(two.flatMap { encoded($0, version) }), two))
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: pairs,
            decoderFactory: { MQTTPacketDecoder(parser: MQTTPacketParser(isServer: true, version: version)) }
        )
    }

    /// A client's stream: CONNECT (which fixes the version), then everything else.
    private static func clientStream(_ version: MQTTProtocolVersion) -> (bytes: [UInt8], packets: [MQTTPacket]) {
        var properties = MQTTProperties()
        if version == .v5 { properties.sessionExpiryInterval = 60 }
        let connect = MQTTPacket.connect(
            MQTTConnectPacket(
                version: version,
                cleanStart: false,
                keepAlive: 30,
                clientIdentifier: "sensor-1",
                will: MQTTWill(topic: "s/1/status", payload: buffer("offline"), qos: .atLeastOnce, retain: true),
                username: "dev",
                password: buffer("secret"),
                properties: properties
            )
        )
        var packets = [connect] + clientPackets(version)
        packets.append(.disconnect(MQTTReasonPacket()))
        return (packets.flatMap { encoded($0, version) }, packets)
    }

    private static func feed(_ chunks: [[UInt8]]) throws -> [MQTTPacket] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder(parser: MQTTPacketParser(isServer: true))))
        var out: [MQTTPacket] = []
        for chunk in chunks {
            try channel.writeInbound(buffer(chunk))
            while let packet = try channel.readInbound(as: MQTTPacket.self) { out.append(packet) }
        }
        #expect(try channel.finish().isClean)
        return out
    }

    @Test("a stream starting with CONNECT, whole, byte by byte and in uneven chunks", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func connectFirstStream(_ version: MQTTProtocolVersion) throws {
        let (bytes, packets) = Self.clientStream(version)
        #expect(try Self.feed([bytes]) == packets)
        #expect(try Self.feed(bytes.map { [$0] }) == packets)
        for size in 2...7 {
            let chunks = stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
            #expect(try Self.feed(chunks) == packets, "chunks of \(size)")
        }
    }

    @Test("the decoder learns the version from CONNECT")
    func learnsVersion() throws {
        // The same bytes mean different things in 3.1.1 and 5.0: after a 5.0 CONNECT, "00" after the
        // topic is a property length, not payload.
        let publish: [UInt8] = [0x30, 0x05, 0x00, 0x01, 0x74, 0x00, 0x78]
        var v5 = try serverParser(after: .v5)
        var input = buffer(publish)
        #expect(try v5.next(&input) == .publish(MQTTPublishPacket(topic: "t", payload: buffer("x"))))
        var v311 = try serverParser(after: .v3_1_1)
        input = buffer(publish)
        #expect(try v311.next(&input) == .publish(MQTTPublishPacket(topic: "t", payload: buffer([0x00, 0x78]))))
    }

    @Test("EmbeddedChannel: a PUBLISH before CONNECT surfaces as an error from writeInbound")
    func rejectsOnChannel() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder(parser: MQTTPacketParser(isServer: true))))
        let error = codecError { try channel.writeInbound(buffer([0x30, 0x04, 0x00, 0x01, 0x61, 0x78])) }
        #expect(error?.code == .protocolError)
        #expect(try channel.readInbound(as: MQTTPacket.self) == nil)
        _ = try? channel.finish()
    }

    @Test("EmbeddedChannel: an oversized announcement is rejected from the header alone")
    func rejectsOversizedOnChannel() throws {
        let channel = EmbeddedChannel(
            handler: ByteToMessageHandler(MQTTPacketDecoder(parser: MQTTPacketParser(maximumPacketSize: 1024, isServer: true)))
        )
        try channel.writeInbound(buffer(minimalConnect(.v3_1_1)))
        #expect(try channel.readInbound(as: MQTTPacket.self)?.type == .connect)
        // PUBLISH announcing 2,000 bytes (D0 0F) with a 1,024-byte maximum.
        let error = codecError { try channel.writeInbound(buffer([0x30, 0xD0, 0x0F])) }
        #expect(error?.code == .packetTooLarge)
        _ = try? channel.finish()
    }

    @Test("EmbeddedChannel: bad bytes after good packets still deliver the good ones first")
    func goodThenBad() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder(parser: MQTTPacketParser(isServer: true))))
        let bytes = minimalConnect(.v3_1_1) + [0xC0, 0x00] + [0x80, 0x00]  // CONNECT, PINGREQ, SUBSCRIBE with flags 0
        let error = codecError { try channel.writeInbound(buffer(bytes)) }
        #expect(error?.code == .invalidFixedHeaderFlags)
        #expect(try channel.readInbound(as: MQTTPacket.self)?.type == .connect)
        #expect(try channel.readInbound(as: MQTTPacket.self) == .pingreq)
        #expect(try channel.readInbound(as: MQTTPacket.self) == nil)
        _ = try? channel.finish()
    }

    @Test("EmbeddedChannel: a packet truncated at EOF is dropped without an error")
    func truncatedAtEOF() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder(parser: MQTTPacketParser(isServer: true))))
        try channel.writeInbound(buffer(minimalConnect(.v5) + [0x30, 0x10, 0x00]))
        #expect(try channel.readInbound(as: MQTTPacket.self)?.type == .connect)
        // Whatever ByteToMessageHandler says about the unread bytes at EOF, it is not a codec error and
        // nothing is decoded from them.
        let leftover = codecErrorOrNil { _ = try channel.finish() }
        #expect(leftover == nil)
        #expect(try channel.readInbound(as: MQTTPacket.self) == nil)
    }
}

/// The `MQTTCodecError` `body` throws, or nil when it throws nothing or something else.
private func codecErrorOrNil(_ body: () throws -> Void) -> MQTTCodecError? {
    do {
        try body()
        return nil
    } catch {
        return error as? MQTTCodecError
    }
}

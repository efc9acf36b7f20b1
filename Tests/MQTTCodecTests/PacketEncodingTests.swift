import MQTTCodec
import NIOCore
import Testing

/// One packet with the exact bytes the MQTT spec gives it.
struct PacketVector: Sendable, CustomTestStringConvertible {
    var name: String
    var version: MQTTProtocolVersion
    var direction: Direction
    var packet: MQTTPacket
    var bytes: [UInt8]

    var testDescription: String { "\(name) (\(version), \(direction))" }
}

// "MQTT" as the protocol name field: 00 04 4D 51 54 54.
private let mqttName: [UInt8] = [0x00, 0x04, 0x4D, 0x51, 0x54, 0x54]

/// Every packet type in both versions, with bytes written out by hand from the spec's layouts
/// (MQTT 3.1.1 chapter 3, MQTT 5.0 chapter 3). Properties are listed in the order the encoder writes
/// them; the spec gives properties no order, so the decoder tests below also feed other orders.
let packetVectors: [PacketVector] = [
    // MARK: CONNECT
    PacketVector(
        name: "CONNECT clean session, keep alive 60, client id abc",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .connect(MQTTConnectPacket(version: .v3_1_1, cleanStart: true, keepAlive: 60, clientIdentifier: "abc")),
        bytes: [0x10, 0x0F] + mqttName + [0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, 0x61, 0x62, 0x63]
    ),
    PacketVector(
        name: "CONNECT with will (QoS 1, retain), username and password",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .connect(
            MQTTConnectPacket(
                version: .v3_1_1,
                cleanStart: false,
                keepAlive: 10,
                clientIdentifier: "c1",
                will: MQTTWill(topic: "w", payload: buffer("bye"), qos: .atLeastOnce, retain: true),
                username: "u",
                password: buffer("pw")
            )
        ),
        // Flags 0xEC: username 0x80, password 0x40, will retain 0x20, will QoS 1 0x08, will 0x04.
        bytes: [0x10, 0x1D] + mqttName + [0x04, 0xEC, 0x00, 0x0A]
            + [0x00, 0x02, 0x63, 0x31] + [0x00, 0x01, 0x77] + [0x00, 0x03, 0x62, 0x79, 0x65]
            + [0x00, 0x01, 0x75] + [0x00, 0x02, 0x70, 0x77]
    ),
    PacketVector(
        name: "CONNECT with will QoS 2, no retain, username only",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .connect(
            MQTTConnectPacket(
                version: .v3_1_1,
                cleanStart: true,
                keepAlive: 0,
                clientIdentifier: "d",
                will: MQTTWill(topic: "a/b", payload: ByteBuffer(), qos: .exactlyOnce, retain: false),
                username: "me"
            )
        ),
        // Flags 0x96: username 0x80, will QoS 2 0x10, will 0x04, clean session 0x02.
        bytes: [0x10, 0x18] + mqttName + [0x04, 0x96, 0x00, 0x00]
            + [0x00, 0x01, 0x64] + [0x00, 0x03, 0x61, 0x2F, 0x62] + [0x00, 0x00] + [0x00, 0x02, 0x6D, 0x65]
    ),
    PacketVector(
        name: "CONNECT with Session Expiry Interval and Receive Maximum",
        version: .v5,
        direction: .clientToServer,
        packet: .connect(
            MQTTConnectPacket(
                version: .v5,
                cleanStart: true,
                keepAlive: 60,
                clientIdentifier: "abc",
                properties: {
                    var p = MQTTProperties()
                    p.sessionExpiryInterval = 120
                    p.receiveMaximum = 20
                    return p
                }()
            )
        ),
        bytes: [0x10, 0x18] + mqttName + [0x05, 0x02, 0x00, 0x3C]
            + [0x08, 0x11, 0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x14]
            + [0x00, 0x03, 0x61, 0x62, 0x63]
    ),
    PacketVector(
        name: "CONNECT with will properties, username, password",
        version: .v5,
        direction: .clientToServer,
        packet: .connect(
            MQTTConnectPacket(
                version: .v5,
                cleanStart: false,
                keepAlive: 0,
                clientIdentifier: "d",
                will: MQTTWill(
                    topic: "t/w",
                    payload: buffer("x"),
                    qos: .atMostOnce,
                    retain: false,
                    properties: {
                        var p = MQTTProperties()
                        p.willDelayInterval = 5
                        return p
                    }()
                ),
                username: "u",
                password: buffer("p")
            )
        ),
        // Flags 0xC4: username, password, will. Empty CONNECT properties, then client id, will
        // properties (Will Delay Interval 5), will topic, will payload, username, password.
        bytes: [0x10, 0x22] + mqttName + [0x05, 0xC4, 0x00, 0x00, 0x00]
            + [0x00, 0x01, 0x64] + [0x05, 0x18, 0x00, 0x00, 0x00, 0x05] + [0x00, 0x03, 0x74, 0x2F, 0x77]
            + [0x00, 0x01, 0x78] + [0x00, 0x01, 0x75] + [0x00, 0x01, 0x70]
    ),
    PacketVector(
        name: "CONNECT with password but no username (allowed in 5.0)",
        version: .v5,
        direction: .clientToServer,
        packet: .connect(
            MQTTConnectPacket(version: .v5, cleanStart: true, keepAlive: 30, clientIdentifier: "", password: buffer("k"))
        ),
        bytes: [0x10, 0x10] + mqttName + [0x05, 0x42, 0x00, 0x1E, 0x00] + [0x00, 0x00] + [0x00, 0x01, 0x6B]
    ),

    // MARK: CONNACK
    PacketVector(
        name: "CONNACK accepted",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .success)),
        bytes: [0x20, 0x02, 0x00, 0x00]
    ),
    PacketVector(
        name: "CONNACK session present",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .connack(MQTTConnAckPacket(sessionPresent: true, reasonCode: .success)),
        bytes: [0x20, 0x02, 0x01, 0x00]
    ),
    PacketVector(
        name: "CONNACK not authorized (return code 5)",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(5))),
        bytes: [0x20, 0x02, 0x00, 0x05]
    ),
    PacketVector(
        name: "CONNACK success without properties",
        version: .v5,
        direction: .serverToClient,
        packet: .connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .success)),
        bytes: [0x20, 0x03, 0x00, 0x00, 0x00]
    ),
    PacketVector(
        name: "CONNACK with Assigned Client Identifier and Topic Alias Maximum",
        version: .v5,
        direction: .serverToClient,
        packet: .connack(
            MQTTConnAckPacket(
                sessionPresent: true,
                reasonCode: .success,
                properties: {
                    var p = MQTTProperties()
                    p.assignedClientIdentifier = "id"
                    p.topicAliasMaximum = 10
                    return p
                }()
            )
        ),
        bytes: [0x20, 0x0B, 0x01, 0x00, 0x08, 0x12, 0x00, 0x02, 0x69, 0x64, 0x22, 0x00, 0x0A]
    ),
    PacketVector(
        name: "CONNACK bad user name or password (0x86)",
        version: .v5,
        direction: .serverToClient,
        packet: .connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .badUserNameOrPassword)),
        bytes: [0x20, 0x03, 0x00, 0x86, 0x00]
    ),

    // MARK: PUBLISH
    PacketVector(
        name: "PUBLISH QoS 0",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .publish(MQTTPublishPacket(topic: "a/b", payload: buffer("hi"))),
        bytes: [0x30, 0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x68, 0x69]
    ),
    PacketVector(
        name: "PUBLISH QoS 0 with an empty payload",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .publish(MQTTPublishPacket(topic: "a/b", payload: ByteBuffer(), retain: true)),
        bytes: [0x31, 0x05, 0x00, 0x03, 0x61, 0x2F, 0x62]
    ),
    PacketVector(
        name: "PUBLISH QoS 1 retain",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .publish(MQTTPublishPacket(topic: "a/b", payload: buffer("hi"), qos: .atLeastOnce, retain: true, packetIdentifier: 10)),
        bytes: [0x33, 0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x0A, 0x68, 0x69]
    ),
    PacketVector(
        name: "PUBLISH QoS 1 dup retain",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .publish(
            MQTTPublishPacket(topic: "a/b", payload: buffer("hi"), qos: .atLeastOnce, retain: true, dup: true, packetIdentifier: 1)
        ),
        bytes: [0x3B, 0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x01, 0x68, 0x69]
    ),
    PacketVector(
        name: "PUBLISH QoS 2 dup",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .publish(MQTTPublishPacket(topic: "a/b", payload: buffer("hi"), qos: .exactlyOnce, dup: true, packetIdentifier: 0x1234)),
        bytes: [0x3C, 0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x12, 0x34, 0x68, 0x69]
    ),
    PacketVector(
        name: "PUBLISH QoS 2 with a multi-byte UTF-8 topic",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .publish(MQTTPublishPacket(topic: "ü/€", payload: buffer("1"), qos: .exactlyOnce, packetIdentifier: 65535)),
        bytes: [0x34, 0x0B, 0x00, 0x06, 0xC3, 0xBC, 0x2F, 0xE2, 0x82, 0xAC, 0xFF, 0xFF, 0x31]
    ),
    PacketVector(
        name: "PUBLISH QoS 0 without properties",
        version: .v5,
        direction: .clientToServer,
        packet: .publish(MQTTPublishPacket(topic: "a/b", payload: buffer("hi"))),
        bytes: [0x30, 0x08, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x68, 0x69]
    ),
    PacketVector(
        name: "PUBLISH QoS 1 with Payload Format Indicator, Message Expiry Interval and Topic Alias",
        version: .v5,
        direction: .clientToServer,
        packet: .publish(
            MQTTPublishPacket(
                topic: "a/b",
                payload: buffer("hi"),
                qos: .atLeastOnce,
                packetIdentifier: 1,
                properties: {
                    var p = MQTTProperties()
                    p.payloadFormatIndicator = 1
                    p.messageExpiryInterval = 60
                    p.topicAlias = 3
                    return p
                }()
            )
        ),
        bytes: [0x32, 0x14, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x01]
            + [0x0A, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x23, 0x00, 0x03]
            + [0x68, 0x69]
    ),
    PacketVector(
        name: "PUBLISH QoS 2 retain dup with two Subscription Identifiers",
        version: .v5,
        direction: .serverToClient,
        packet: .publish(
            MQTTPublishPacket(
                topic: "t",
                payload: buffer("x"),
                qos: .exactlyOnce,
                retain: true,
                dup: true,
                packetIdentifier: 2,
                properties: {
                    var p = MQTTProperties()
                    p.subscriptionIdentifiers = [1, 200]
                    return p
                }()
            )
        ),
        // 200 as a variable byte integer is C8 01.
        bytes: [0x3D, 0x0C, 0x00, 0x01, 0x74, 0x00, 0x02, 0x05, 0x0B, 0x01, 0x0B, 0xC8, 0x01, 0x78]
    ),

    // MARK: PUBACK, PUBREC, PUBREL, PUBCOMP
    PacketVector(
        name: "PUBACK",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .puback(MQTTAckPacket(packetIdentifier: 10)),
        bytes: [0x40, 0x02, 0x00, 0x0A]
    ),
    PacketVector(
        name: "PUBREC",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .pubrec(MQTTAckPacket(packetIdentifier: 10)),
        bytes: [0x50, 0x02, 0x00, 0x0A]
    ),
    PacketVector(
        name: "PUBREL (flags 0010)",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .pubrel(MQTTAckPacket(packetIdentifier: 10)),
        bytes: [0x62, 0x02, 0x00, 0x0A]
    ),
    PacketVector(
        name: "PUBCOMP",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .pubcomp(MQTTAckPacket(packetIdentifier: 10)),
        bytes: [0x70, 0x02, 0x00, 0x0A]
    ),
    PacketVector(
        name: "PUBACK success omits reason code and properties",
        version: .v5,
        direction: .serverToClient,
        packet: .puback(MQTTAckPacket(packetIdentifier: 10)),
        bytes: [0x40, 0x02, 0x00, 0x0A]
    ),
    PacketVector(
        name: "PUBACK No matching subscribers (0x10)",
        version: .v5,
        direction: .serverToClient,
        packet: .puback(MQTTAckPacket(packetIdentifier: 10, reasonCode: .noMatchingSubscribers)),
        bytes: [0x40, 0x03, 0x00, 0x0A, 0x10]
    ),
    PacketVector(
        name: "PUBREC Quota exceeded with Reason String",
        version: .v5,
        direction: .serverToClient,
        packet: .pubrec(
            MQTTAckPacket(
                packetIdentifier: 10,
                reasonCode: .quotaExceeded,
                properties: {
                    var p = MQTTProperties()
                    p.reasonString = "x"
                    return p
                }()
            )
        ),
        bytes: [0x50, 0x08, 0x00, 0x0A, 0x97, 0x04, 0x1F, 0x00, 0x01, 0x78]
    ),
    PacketVector(
        name: "PUBREL Packet Identifier not found (0x92)",
        version: .v5,
        direction: .clientToServer,
        packet: .pubrel(MQTTAckPacket(packetIdentifier: 10, reasonCode: .packetIdentifierNotFound)),
        bytes: [0x62, 0x03, 0x00, 0x0A, 0x92]
    ),
    PacketVector(
        name: "PUBCOMP success",
        version: .v5,
        direction: .clientToServer,
        packet: .pubcomp(MQTTAckPacket(packetIdentifier: 0xBEEF)),
        bytes: [0x70, 0x02, 0xBE, 0xEF]
    ),

    // MARK: SUBSCRIBE, SUBACK
    PacketVector(
        name: "SUBSCRIBE two filters (flags 0010)",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .subscribe(
            MQTTSubscribePacket(
                packetIdentifier: 1,
                subscriptions: [
                    MQTTSubscription(topicFilter: "a/b", qos: .atLeastOnce),
                    MQTTSubscription(topicFilter: "c/#", qos: .exactlyOnce),
                ]
            )
        ),
        bytes: [0x82, 0x0E, 0x00, 0x01, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x01, 0x00, 0x03, 0x63, 0x2F, 0x23, 0x02]
    ),
    PacketVector(
        name: "SUBSCRIBE with Subscription Identifier and every subscription option",
        version: .v5,
        direction: .clientToServer,
        packet: .subscribe(
            MQTTSubscribePacket(
                packetIdentifier: 2,
                subscriptions: [
                    MQTTSubscription(
                        topicFilter: "a/+",
                        qos: .atLeastOnce,
                        noLocal: true,
                        retainAsPublished: true,
                        retainHandling: .doNotSend
                    )
                ],
                properties: {
                    var p = MQTTProperties()
                    p.subscriptionIdentifiers = [5]
                    return p
                }()
            )
        ),
        // Options 0x2D: retain handling 2 (0x20), retain as published 0x08, no local 0x04, QoS 1.
        bytes: [0x82, 0x0B, 0x00, 0x02, 0x02, 0x0B, 0x05, 0x00, 0x03, 0x61, 0x2F, 0x2B, 0x2D]
    ),
    PacketVector(
        name: "SUBACK granted QoS 1, 2 and failure",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .suback(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [.grantedQoS1, .grantedQoS2, .unspecifiedError])),
        bytes: [0x90, 0x05, 0x00, 0x01, 0x01, 0x02, 0x80]
    ),
    PacketVector(
        name: "SUBACK granted QoS 1 and Topic Filter invalid",
        version: .v5,
        direction: .serverToClient,
        packet: .suback(MQTTSubAckPacket(packetIdentifier: 2, reasonCodes: [.grantedQoS1, .topicFilterInvalid])),
        bytes: [0x90, 0x05, 0x00, 0x02, 0x00, 0x01, 0x8F]
    ),

    // MARK: UNSUBSCRIBE, UNSUBACK
    PacketVector(
        name: "UNSUBSCRIBE two filters (flags 0010)",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 3, topicFilters: ["a/b", "c"])),
        bytes: [0xA2, 0x0A, 0x00, 0x03, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x01, 0x63]
    ),
    PacketVector(
        name: "UNSUBSCRIBE with a User Property",
        version: .v5,
        direction: .clientToServer,
        packet: .unsubscribe(
            MQTTUnsubscribePacket(
                packetIdentifier: 3,
                topicFilters: ["a"],
                properties: {
                    var p = MQTTProperties()
                    p.userProperties = [MQTTUserProperty(name: "k", value: "v")]
                    return p
                }()
            )
        ),
        bytes: [0xA2, 0x0D, 0x00, 0x03, 0x07, 0x26, 0x00, 0x01, 0x6B, 0x00, 0x01, 0x76, 0x00, 0x01, 0x61]
    ),
    PacketVector(
        name: "UNSUBACK has no payload in 3.1.1",
        version: .v3_1_1,
        direction: .serverToClient,
        packet: .unsuback(MQTTSubAckPacket(packetIdentifier: 3, reasonCodes: [])),
        bytes: [0xB0, 0x02, 0x00, 0x03]
    ),
    PacketVector(
        name: "UNSUBACK success and No subscription existed",
        version: .v5,
        direction: .serverToClient,
        packet: .unsuback(MQTTSubAckPacket(packetIdentifier: 3, reasonCodes: [.success, .noSubscriptionExisted])),
        bytes: [0xB0, 0x05, 0x00, 0x03, 0x00, 0x00, 0x11]
    ),

    // MARK: PINGREQ, PINGRESP, DISCONNECT, AUTH
    PacketVector(name: "PINGREQ", version: .v3_1_1, direction: .clientToServer, packet: .pingreq, bytes: [0xC0, 0x00]),
    PacketVector(name: "PINGREQ", version: .v5, direction: .clientToServer, packet: .pingreq, bytes: [0xC0, 0x00]),
    PacketVector(name: "PINGRESP", version: .v3_1_1, direction: .serverToClient, packet: .pingresp, bytes: [0xD0, 0x00]),
    PacketVector(name: "PINGRESP", version: .v5, direction: .serverToClient, packet: .pingresp, bytes: [0xD0, 0x00]),
    PacketVector(
        name: "DISCONNECT",
        version: .v3_1_1,
        direction: .clientToServer,
        packet: .disconnect(MQTTReasonPacket()),
        bytes: [0xE0, 0x00]
    ),
    PacketVector(
        name: "DISCONNECT normal disconnection omits the reason code",
        version: .v5,
        direction: .clientToServer,
        packet: .disconnect(MQTTReasonPacket()),
        bytes: [0xE0, 0x00]
    ),
    PacketVector(
        name: "DISCONNECT Server shutting down (0x8B)",
        version: .v5,
        direction: .serverToClient,
        packet: .disconnect(MQTTReasonPacket(reasonCode: .serverShuttingDown)),
        bytes: [0xE0, 0x01, 0x8B]
    ),
    PacketVector(
        name: "DISCONNECT with Will Message, Session Expiry Interval and Reason String",
        version: .v5,
        direction: .clientToServer,
        packet: .disconnect(
            MQTTReasonPacket(
                reasonCode: .disconnectWithWillMessage,
                properties: {
                    var p = MQTTProperties()
                    p.sessionExpiryInterval = 0
                    p.reasonString = "bye"
                    return p
                }()
            )
        ),
        bytes: [0xE0, 0x0D, 0x04, 0x0B, 0x11, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00, 0x03, 0x62, 0x79, 0x65]
    ),
    PacketVector(
        name: "DISCONNECT Session taken over with Server Reference",
        version: .v5,
        direction: .serverToClient,
        packet: .disconnect(
            MQTTReasonPacket(
                reasonCode: .sessionTakenOver,
                properties: {
                    var p = MQTTProperties()
                    p.serverReference = "s"
                    return p
                }()
            )
        ),
        bytes: [0xE0, 0x06, 0x8E, 0x04, 0x1C, 0x00, 0x01, 0x73]
    ),
    PacketVector(
        name: "AUTH success omits reason code",
        version: .v5,
        direction: .serverToClient,
        packet: .auth(MQTTReasonPacket()),
        bytes: [0xF0, 0x00]
    ),
    PacketVector(
        name: "AUTH continue authentication with method and data",
        version: .v5,
        direction: .clientToServer,
        packet: .auth(
            MQTTReasonPacket(
                reasonCode: .continueAuthentication,
                properties: {
                    var p = MQTTProperties()
                    p.authenticationMethod = "SCRAM"
                    p.authenticationData = buffer([0x01, 0x02])
                    return p
                }()
            )
        ),
        bytes: [0xF0, 0x0F, 0x18, 0x0D, 0x15, 0x00, 0x05, 0x53, 0x43, 0x52, 0x41, 0x4D, 0x16, 0x00, 0x02, 0x01, 0x02]
    ),
]

@Suite("Packet encoding: exact bytes and round trips")
struct PacketEncodingTests {
    @Test("encodes to the spec's exact bytes", arguments: packetVectors)
    func encodesExactBytes(_ vector: PacketVector) {
        let bytes = encoded(vector.packet, vector.version)
        #expect(bytes == vector.bytes, "got \(bytes.hex), want \(vector.bytes.hex)")
    }

    @Test("write(version:to:) appends the spec's exact bytes behind what the buffer holds", arguments: packetVectors)
    func writeAppendsExactBytes(_ vector: PacketVector) {
        var out = buffer([0xEE, 0xEF])
        vector.packet.write(version: vector.version, to: &out)
        vector.packet.write(version: vector.version, to: &out)
        #expect(Array(out.readableBytesView) == [0xEE, 0xEF] + vector.bytes + vector.bytes)
    }

    @Test("decodes the spec's bytes back to the same value", arguments: packetVectors)
    func decodesBack(_ vector: PacketVector) throws {
        let packet = try decodeOne(vector.bytes, vector.version, vector.direction)
        #expect(packet == vector.packet)
    }

    @Test("every strict prefix needs more data and consumes nothing", arguments: packetVectors)
    func truncatedNeedsMoreData(_ vector: PacketVector) throws {
        for length in 0..<vector.bytes.count {
            var parser: MQTTPacketParser
            switch vector.direction {
            case .clientToServer:
                parser = vector.packet.type == .connect ? MQTTPacketParser(isServer: true) : try serverParser(after: vector.version)
            case .serverToClient:
                parser = clientParser(vector.version)
            }
            var input = buffer(Array(vector.bytes.prefix(length)))
            let packet = try parser.next(&input)
            #expect(packet == nil, "a \(length)-byte prefix produced a packet")
            #expect(input.readerIndex == 0, "a \(length)-byte prefix consumed bytes")
        }
    }

    @Test("the fixed header's first byte carries the packet type and the required flags", arguments: packetVectors)
    func firstByte(_ vector: PacketVector) {
        let expectedFlags: UInt8
        switch vector.packet {
        case .pubrel, .subscribe, .unsubscribe: expectedFlags = 0b0010
        case .publish(let p): expectedFlags = (p.dup ? 0x08 : 0) | p.qos.rawValue << 1 | (p.retain ? 1 : 0)
        default: expectedFlags = 0
        }
        let first = encoded(vector.packet, vector.version).first
        #expect(first == vector.packet.type.rawValue << 4 | expectedFlags)
    }

    @Test("MQTT 5 acknowledgements: omitted, empty and explicit reason codes decode alike")
    func ackReasonCodeForms() throws {
        // Section 3.4.2.1: the reason code may be omitted (length 2), present without properties
        // (length 3), or followed by an empty property list (length 4).
        let forms: [[UInt8]] = [[0x40, 0x02, 0x00, 0x0A], [0x40, 0x03, 0x00, 0x0A, 0x00], [0x40, 0x04, 0x00, 0x0A, 0x00, 0x00]]
        for bytes in forms {
            #expect(try decodeOne(bytes, .v5, .serverToClient) == .puback(MQTTAckPacket(packetIdentifier: 10)))
        }
        // The same for DISCONNECT (3.14.2.1: remaining length 0 means 0x00 and no properties).
        for bytes in [[0xE0, 0x00], [0xE0, 0x01, 0x00], [0xE0, 0x02, 0x00, 0x00]] as [[UInt8]] {
            #expect(try decodeOne(bytes, .v5, .clientToServer) == .disconnect(MQTTReasonPacket()))
        }
    }

    @Test("properties are decoded whatever their order")
    func propertyOrder() throws {
        // Receive Maximum before Session Expiry Interval: the reverse of the encoder's order.
        let bytes = rawPacket(
            0x10,
            mqttName + [0x05, 0x02, 0x00, 0x3C, 0x08, 0x21, 0x00, 0x14, 0x11, 0x00, 0x00, 0x00, 0x78] + field("abc")
        )
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 120
        properties.receiveMaximum = 20
        let expected = MQTTPacket.connect(
            MQTTConnectPacket(version: .v5, cleanStart: true, keepAlive: 60, clientIdentifier: "abc", properties: properties)
        )
        #expect(try decodeOne(bytes, .v5, .clientToServer) == expected)
    }

    @Test("a large PUBLISH uses a multi-byte remaining length")
    func largePublish() throws {
        let payload = [UInt8](repeating: 0xAB, count: 200)
        let packet = MQTTPacket.publish(MQTTPublishPacket(topic: "t", payload: buffer(payload)))
        let bytes = encoded(packet, .v3_1_1)
        // Remaining length 2 + 1 + 200 = 203 = CB 01.
        #expect(Array(bytes.prefix(6)) == [0x30, 0xCB, 0x01, 0x00, 0x01, 0x74])
        #expect(bytes.count == 3 + 203)
        #expect(try decodeOne(bytes, .v3_1_1, .serverToClient) == packet)
        var appended = buffer([0x01])
        packet.write(version: .v3_1_1, to: &appended)
        #expect(Array(appended.readableBytesView) == [0x01] + bytes)
    }

    @Test("write(version:to:) appends the same bytes as encode")
    func writeAppends() {
        var out = buffer([0xEE])
        MQTTPacket.pingreq.write(version: .v5, to: &out)
        MQTTPacket.puback(MQTTAckPacket(packetIdentifier: 1)).write(version: .v5, to: &out)
        #expect(Array(out.readableBytesView) == [0xEE, 0xC0, 0x00, 0x40, 0x02, 0x00, 0x01])
    }
}

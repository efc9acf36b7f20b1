import MQTTCodec
import NIOCore
import Testing

/// The table of MQTT 5.0 section 2.2.2.2 (Table 2-4), written out here rather than taken from the
/// codec, so the codec's own table is checked against the spec.
private let specAllowedContexts: [MQTTPropertyIdentifier: Set<MQTTPropertyContext>] = [
    .payloadFormatIndicator: [.publish, .will],
    .messageExpiryInterval: [.publish, .will],
    .contentType: [.publish, .will],
    .responseTopic: [.publish, .will],
    .correlationData: [.publish, .will],
    .subscriptionIdentifier: [.publish, .subscribe],
    .sessionExpiryInterval: [.connect, .connack, .disconnect],
    .assignedClientIdentifier: [.connack],
    .serverKeepAlive: [.connack],
    .authenticationMethod: [.connect, .connack, .auth],
    .authenticationData: [.connect, .connack, .auth],
    .requestProblemInformation: [.connect],
    .willDelayInterval: [.will],
    .requestResponseInformation: [.connect],
    .responseInformation: [.connack],
    .serverReference: [.connack, .disconnect],
    .reasonString: [.connack, .puback, .pubrec, .pubrel, .pubcomp, .suback, .unsuback, .disconnect, .auth],
    .receiveMaximum: [.connect, .connack],
    .topicAliasMaximum: [.connect, .connack],
    .topicAlias: [.publish],
    .maximumQoS: [.connack],
    .retainAvailable: [.connack],
    .userProperty: [
        .connect, .connack, .publish, .will, .puback, .pubrec, .pubrel, .pubcomp, .subscribe, .suback, .unsubscribe,
        .unsuback, .disconnect, .auth,
    ],
    .maximumPacketSize: [.connect, .connack],
    .wildcardSubscriptionAvailable: [.connack],
    .subscriptionIdentifierAvailable: [.connack],
    .sharedSubscriptionAvailable: [.connack],
]

/// A property identifier placed in one packet (or the Will).
struct PropertyPlacement: Sendable, CustomTestStringConvertible {
    var id: MQTTPropertyIdentifier
    var context: MQTTPropertyContext
    var testDescription: String { "\(id) in \(context)" }
}

private let allowedPlacements: [PropertyPlacement] = MQTTPropertyIdentifier.allCases.flatMap { id in
    MQTTPropertyContext.allCases.filter { specAllowedContexts[id]!.contains($0) }.map { PropertyPlacement(id: id, context: $0) }
}

private let forbiddenPlacements: [PropertyPlacement] = MQTTPropertyIdentifier.allCases.flatMap { id in
    MQTTPropertyContext.allCases.filter { !specAllowedContexts[id]!.contains($0) }.map { PropertyPlacement(id: id, context: $0) }
}

/// Properties that may appear at most once in the packet, per the "It is a Protocol Error to include
/// ... more than once" sentences of chapter 3. User Property may always repeat; Subscription
/// Identifier may repeat only in a PUBLISH sent to a client (3.3.4).
private let onceOnlyPlacements: [PropertyPlacement] = allowedPlacements.filter { placement in
    switch placement.id {
    case .userProperty: false
    case .subscriptionIdentifier: placement.context == .subscribe
    default: true
    }
}

/// A valid, non-default value for `id`.
private func sample(_ id: MQTTPropertyIdentifier) -> MQTTProperties {
    var p = MQTTProperties()
    switch id {
    case .payloadFormatIndicator: p.payloadFormatIndicator = 1
    case .messageExpiryInterval: p.messageExpiryInterval = 3600
    case .contentType: p.contentType = "text/plain; charset=utf-8"
    case .responseTopic: p.responseTopic = "reply/here"
    case .correlationData: p.correlationData = buffer([0x00, 0x01, 0xFF])
    case .subscriptionIdentifier: p.subscriptionIdentifiers = [268_435_455]
    case .sessionExpiryInterval: p.sessionExpiryInterval = 0xFFFF_FFFF
    case .assignedClientIdentifier: p.assignedClientIdentifier = "auto-1"
    case .serverKeepAlive: p.serverKeepAlive = 30
    case .authenticationMethod: p.authenticationMethod = "SCRAM-SHA-1"
    case .authenticationData: p.authenticationData = buffer([0x09, 0x08])
    case .requestProblemInformation: p.requestProblemInformation = 0
    case .willDelayInterval: p.willDelayInterval = 10
    case .requestResponseInformation: p.requestResponseInformation = 1
    case .responseInformation: p.responseInformation = "resp"
    case .serverReference: p.serverReference = "other:1883"
    case .reasonString: p.reasonString = "because"
    case .receiveMaximum: p.receiveMaximum = 100
    case .topicAliasMaximum: p.topicAliasMaximum = 10
    case .topicAlias: p.topicAlias = 5
    case .maximumQoS: p.maximumQoS = 1
    case .retainAvailable: p.retainAvailable = 0
    case .userProperty:
        // Repeated names are allowed and order is kept (3.3.2.3.7).
        p.userProperties = [MQTTUserProperty(name: "k", value: "v"), MQTTUserProperty(name: "k", value: "v2")]
    case .maximumPacketSize: p.maximumPacketSize = 65_536
    case .wildcardSubscriptionAvailable: p.wildcardSubscriptionAvailable = 0
    case .subscriptionIdentifierAvailable: p.subscriptionIdentifierAvailable = 0
    case .sharedSubscriptionAvailable: p.sharedSubscriptionAvailable = 1
    }
    return p
}

/// A packet whose property list for `context` is `properties`, and the direction it travels in.
private func packet(carrying properties: MQTTProperties, in context: MQTTPropertyContext) -> (MQTTPacket, Direction) {
    switch context {
    case .connect:
        return (.connect(MQTTConnectPacket(version: .v5, cleanStart: true, keepAlive: 0, clientIdentifier: "c", properties: properties)), .clientToServer)
    case .will:
        let will = MQTTWill(topic: "w", payload: buffer("x"), qos: .atLeastOnce, retain: false, properties: properties)
        return (.connect(MQTTConnectPacket(version: .v5, cleanStart: true, keepAlive: 0, clientIdentifier: "c", will: will)), .clientToServer)
    case .connack:
        return (.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .success, properties: properties)), .serverToClient)
    case .publish:
        let publish = MQTTPublishPacket(topic: "t", payload: buffer("x"), qos: .atLeastOnce, packetIdentifier: 1, properties: properties)
        return (.publish(publish), .serverToClient)
    case .puback:
        return (.puback(MQTTAckPacket(packetIdentifier: 1, reasonCode: .success, properties: properties)), .clientToServer)
    case .pubrec:
        return (.pubrec(MQTTAckPacket(packetIdentifier: 1, reasonCode: .success, properties: properties)), .clientToServer)
    case .pubrel:
        return (.pubrel(MQTTAckPacket(packetIdentifier: 1, reasonCode: .success, properties: properties)), .clientToServer)
    case .pubcomp:
        return (.pubcomp(MQTTAckPacket(packetIdentifier: 1, reasonCode: .success, properties: properties)), .clientToServer)
    case .subscribe:
        let subscribe = MQTTSubscribePacket(
            packetIdentifier: 1,
            subscriptions: [MQTTSubscription(topicFilter: "a/#", qos: .atLeastOnce)],
            properties: properties
        )
        return (.subscribe(subscribe), .clientToServer)
    case .suback:
        return (.suback(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [.grantedQoS1], properties: properties)), .serverToClient)
    case .unsubscribe:
        return (.unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 1, topicFilters: ["a/#"], properties: properties)), .clientToServer)
    case .unsuback:
        return (.unsuback(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [.success], properties: properties)), .serverToClient)
    case .disconnect:
        return (.disconnect(MQTTReasonPacket(reasonCode: .success, properties: properties)), .clientToServer)
    case .auth:
        return (.auth(MQTTReasonPacket(reasonCode: .continueAuthentication, properties: properties)), .clientToServer)
    }
}

/// The encoded form of one property (identifier and value), without a property length.
private func rawProperty(_ id: MQTTPropertyIdentifier) -> [UInt8] {
    var out = ByteBuffer()
    sample(id).write(to: &out)
    // Every sample is shorter than 128 bytes, so the property length is the first byte alone.
    var bytes = Array(out.readableBytesView.dropFirst())
    precondition(out.readableBytesView.first == UInt8(bytes.count))
    if id == .userProperty {
        // The sample carries two user properties; keep the first.
        bytes = [0x26] + field("k") + field("v")
    }
    return bytes
}

/// Parses a bare property list (length prefix included) for `context`.
private func readProperties(_ bytes: [UInt8], _ context: MQTTPropertyContext) throws -> MQTTProperties {
    var input = buffer(vbi(bytes.count) + bytes)
    let properties = try MQTTProperties.read(from: &input, context: context)
    #expect(input.readableBytes == 0)
    return properties
}

/// A raw property list that must be rejected, and where.
struct BadPropertyCase: Sendable, CustomTestStringConvertible {
    var name: String
    var bytes: [UInt8]
    var context: MQTTPropertyContext
    init(_ name: String, _ bytes: [UInt8], _ context: MQTTPropertyContext) {
        self.name = name
        self.bytes = bytes
        self.context = context
    }
    var testDescription: String { name }
}

@Suite("MQTT 5 properties")
struct PropertiesTests {
    @Test("the codec's table of allowed packets matches the spec's Table 2-4", arguments: MQTTPropertyIdentifier.allCases)
    func allowedTable(_ id: MQTTPropertyIdentifier) {
        #expect(id.allowedIn == specAllowedContexts[id])
    }

    @Test("a list holding any one property is not empty (its emptiness check covers every field)", arguments: MQTTPropertyIdentifier.allCases)
    func oneProperty(_ id: MQTTPropertyIdentifier) {
        // One stored field per property identifier: a new field needs a new identifier, and so a sample.
        #expect(Mirror(reflecting: MQTTProperties.Values()).children.count == MQTTPropertyIdentifier.allCases.count)
        let properties = sample(id)
        #expect(!properties.isEmpty)
        #expect(properties != MQTTProperties())
        #expect(MQTTProperties(MQTTProperties.Values()).isEmpty)
    }

    @Test("a property round-trips in every packet that allows it", arguments: allowedPlacements)
    func roundTrip(_ placement: PropertyPlacement) throws {
        let (packet, direction) = packet(carrying: sample(placement.id), in: placement.context)
        let bytes = encoded(packet, .v5)
        let decoded = try decodeOne(bytes, .v5, direction)
        #expect(decoded == packet)
    }

    @Test("a property in a packet that forbids it is rejected", arguments: forbiddenPlacements)
    func forbidden(_ placement: PropertyPlacement) {
        // The encoder writes whatever it is given, which makes it a convenient way to build the bad packet.
        let (packet, direction) = packet(carrying: sample(placement.id), in: placement.context)
        let error = decodeError(encoded(packet, .v5), .v5, direction)
        #expect(error?.code == .propertyNotAllowed)
    }

    @Test("a property in a packet that forbids it maps to Malformed Packet (0x81), as section 2.2.2.2 says")
    func forbiddenReasonCode() {
        // MQTT 5.0 section 2.2.2.2: "A Control Packet which contains an Identifier which is not valid
        // for its packet type, or contains a value not of the specified data type, is a Malformed
        // Packet. If received, use a CONNACK or DISCONNECT packet with Reason Code 0x81 (Malformed
        // Packet)". Topic Alias (0x23) in CONNECT:
        let bytes = rawPacket(0x10, field("MQTT") + [0x05, 0x02, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01] + field("c"))
        let error = decodeError(bytes, .v5, .clientToServer)
        #expect(error?.code == .propertyNotAllowed)
        #expect(error?.reasonCode == .malformedPacket)
    }

    @Test("a once-only property given twice is a Protocol Error", arguments: onceOnlyPlacements)
    func duplicate(_ placement: PropertyPlacement) {
        let once = rawProperty(placement.id)
        let error = codecError { _ = try readProperties(once + once, placement.context) }
        #expect(error?.code == .duplicateProperty)
        #expect(error?.reasonCode == .protocolError)
    }

    @Test("a duplicated property is rejected inside a whole packet")
    func duplicateInPacket() {
        // CONNECT with Session Expiry Interval twice (3.1.2.11.2).
        let props: [UInt8] = [0x11, 0x00, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, 0x00, 0x02]
        let connect = rawPacket(0x10, field("MQTT") + [0x05, 0x02, 0x00, 0x00] + vbi(props.count) + props + field("c"))
        let error = decodeError(connect, .v5, .clientToServer)
        #expect(error?.code == .duplicateProperty)
        #expect(error?.reasonCode == .protocolError)

        // PUBLISH with Topic Alias twice (3.3.2.3.4).
        let publishProps: [UInt8] = [0x23, 0x00, 0x01, 0x23, 0x00, 0x02]
        let publish = rawPacket(0x30, field("t") + vbi(publishProps.count) + publishProps + ascii("x"))
        #expect(decodeError(publish, .v5, .serverToClient)?.code == .duplicateProperty)
    }

    @Test("repeatable properties may repeat")
    func repeatable() throws {
        let user = [0x26] + field("a") + field("1") + [0x26] + field("a") + field("2")
        for context in MQTTPropertyContext.allCases {
            let properties = try readProperties(user, context)
            #expect(properties.userProperties == [MQTTUserProperty(name: "a", value: "1"), MQTTUserProperty(name: "a", value: "2")])
        }
        // Several Subscription Identifiers in a PUBLISH (3.3.4: one per matching subscription).
        let ids: [UInt8] = [0x0B, 0x01, 0x0B, 0x80, 0x01, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F]
        #expect(try readProperties(ids, .publish).subscriptionIdentifiers == [1, 128, 268_435_455])
    }

    @Test(
        "zero where the spec forbids it is a Protocol Error",
        arguments: [
            BadPropertyCase("Receive Maximum 0 in CONNECT", [0x21, 0x00, 0x00], .connect),
            BadPropertyCase("Receive Maximum 0 in CONNACK", [0x21, 0x00, 0x00], .connack),
            BadPropertyCase("Topic Alias 0 in PUBLISH", [0x23, 0x00, 0x00], .publish),
            BadPropertyCase("Maximum Packet Size 0 in CONNECT", [0x27, 0x00, 0x00, 0x00, 0x00], .connect),
            BadPropertyCase("Maximum Packet Size 0 in CONNACK", [0x27, 0x00, 0x00, 0x00, 0x00], .connack),
            BadPropertyCase("Subscription Identifier 0 in SUBSCRIBE", [0x0B, 0x00], .subscribe),
        ]
    )
    func zeroForbidden(_ bad: BadPropertyCase) {
        let error = codecError { _ = try readProperties(bad.bytes, bad.context) }
        #expect(error?.code == .invalidProperty)
        #expect(error?.reasonCode == .protocolError)
    }

    @Test(
        "byte properties outside 0...1 are a Protocol Error",
        arguments: [
            BadPropertyCase("Payload Format Indicator 2", [0x01, 0x02], .publish),
            BadPropertyCase("Request Problem Information 2", [0x17, 0x02], .connect),
            BadPropertyCase("Request Response Information 2", [0x19, 0x02], .connect),
            BadPropertyCase("Maximum QoS 2", [0x24, 0x02], .connack),
            BadPropertyCase("Retain Available 2", [0x25, 0x02], .connack),
            BadPropertyCase("Wildcard Subscription Available 2", [0x28, 0x02], .connack),
            BadPropertyCase("Subscription Identifiers Available 2", [0x29, 0x02], .connack),
            BadPropertyCase("Shared Subscription Available 2", [0x2A, 0x02], .connack),
        ]
    )
    func byteRange(_ bad: BadPropertyCase) {
        let error = codecError { _ = try readProperties(bad.bytes, bad.context) }
        #expect(error?.code == .invalidProperty)
        #expect(error?.reasonCode == .protocolError)
    }

    @Test("zero is fine where the spec allows it")
    func zeroAllowed() throws {
        // Topic Alias Maximum 0 means "no aliases" (3.1.2.11.5); Session Expiry 0 and Message Expiry 0 are values.
        #expect(try readProperties([0x22, 0x00, 0x00], .connect).topicAliasMaximum == 0)
        #expect(try readProperties([0x11, 0x00, 0x00, 0x00, 0x00], .connect).sessionExpiryInterval == 0)
        #expect(try readProperties([0x02, 0x00, 0x00, 0x00, 0x00], .publish).messageExpiryInterval == 0)
    }

    @Test("malformed property lists")
    func malformedLists() {
        // Unknown identifier 0x05.
        #expect(codecError { _ = try readProperties([0x05, 0x00], .publish) }?.code == .malformedPacket)
        // A value cut short by the property length.
        #expect(codecError { _ = try readProperties([0x02, 0x00, 0x00], .publish) }?.code == .malformedPacket)
        // A property length longer than what follows.
        var input = buffer([0x05, 0x01, 0x01])
        #expect(codecError { _ = try MQTTProperties.read(from: &input, context: .publish) }?.code == .malformedPacket)
        // A string property with invalid UTF-8.
        #expect(codecError { _ = try readProperties([0x03, 0x00, 0x02, 0xC3, 0x28], .publish) }?.code == .invalidUTF8)
    }

    @Test("an empty property list is one zero byte")
    func emptyList() throws {
        var out = ByteBuffer()
        MQTTProperties().write(to: &out)
        #expect(Array(out.readableBytesView) == [0x00])
        #expect(MQTTProperties().isEmpty)
        #expect(try readProperties([], .connect) == MQTTProperties())
    }

    @Test("every property's identifier and value bytes", arguments: MQTTPropertyIdentifier.allCases)
    func propertyBytes(_ id: MQTTPropertyIdentifier) {
        // The first byte of an encoded property is its identifier (section 2.2.2.2).
        #expect(rawProperty(id).first == id.rawValue)
    }

    @Test("exact bytes of a property list with several types")
    func exactList() {
        var p = MQTTProperties()
        p.messageExpiryInterval = 0x0102_0304
        p.contentType = "a"
        p.correlationData = buffer([0xFF])
        p.subscriptionIdentifiers = [16_384]
        p.userProperties = [MQTTUserProperty(name: "n", value: "v")]
        var out = ByteBuffer()
        p.write(to: &out)
        let body: [UInt8] = [0x02, 0x01, 0x02, 0x03, 0x04] + [0x03, 0x00, 0x01, 0x61] + [0x09, 0x00, 0x01, 0xFF]
            + [0x0B, 0x80, 0x80, 0x01] + [0x26, 0x00, 0x01, 0x6E, 0x00, 0x01, 0x76]
        #expect(Array(out.readableBytesView) == [UInt8(body.count)] + body)
        #expect(p.encodedLength == body.count)
    }
}

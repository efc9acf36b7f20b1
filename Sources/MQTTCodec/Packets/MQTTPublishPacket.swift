public import NIOCore

/// PUBLISH (3.1.1 section 3.3, 5.0 section 3.3).
public struct MQTTPublishPacket: Hashable, Sendable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    public var dup: Bool
    /// Present (non-zero) exactly when `qos > 0`.
    public var packetIdentifier: UInt16?
    /// MQTT 5 properties; always empty for 3.1.1.
    public var properties: MQTTProperties
    /// Bytes shared with the other receivers of the same routed message (set by the router, only when this
    /// packet is the shared form); not part of the packet's value.
    public var sharedEncoding: SharedPublishEncoding? {
        get { sharedEncodingSlot.value }
        set { sharedEncodingSlot.value = newValue }
    }
    private var sharedEncodingSlot: SharedEncodingSlot

    public init(
        topic: String,
        payload: ByteBuffer,
        qos: MQTTQoS = .atMostOnce,
        retain: Bool = false,
        dup: Bool = false,
        packetIdentifier: UInt16? = nil,
        properties: MQTTProperties = .init(),
        sharedEncoding: SharedPublishEncoding? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packetIdentifier = packetIdentifier
        self.properties = properties
        self.sharedEncodingSlot = SharedEncodingSlot(sharedEncoding)
    }

    var flags: UInt8 {
        (dup ? 0x08 : 0) | (qos.rawValue << 1) | (retain ? 0x01 : 0)
    }

    static func read(version: MQTTProtocolVersion, flags: UInt8, from body: inout ByteBuffer) throws(MQTTCodecError) -> Self {
        guard let qos = MQTTQoS(rawValue: (flags >> 1) & 0x03) else {
            throw MQTTCodecError(.invalidQoS, "PUBLISH with QoS 3")
        }
        let dup = flags & 0x08 != 0
        if qos == .atMostOnce && dup {
            throw MQTTCodecError(.malformedPacket, "PUBLISH QoS 0 with DUP set")
        }
        let topic = try body.readMQTTString("topic name")
        // MQTT 5 allows an empty topic name together with a Topic Alias; the core checks the alias.
        if !(version == .v5 && topic.isEmpty) && !MQTTTopic.isValidName(topic) {
            throw MQTTCodecError(.invalidTopicName, "topic name '\(topic)' is not valid")
        }
        var packetIdentifier: UInt16?
        if qos != .atMostOnce {
            let id = try body.readMQTTInteger(as: UInt16.self, "packet identifier")
            guard id != 0 else { throw MQTTCodecError(.malformedPacket, "packet identifier 0") }
            packetIdentifier = id
        }
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &body, context: .publish) : MQTTProperties()
        let payload = body.readSlice(length: body.readableBytes)!
        return MQTTPublishPacket(
            topic: topic,
            payload: payload,
            qos: qos,
            retain: flags & 0x01 != 0,
            dup: dup,
            packetIdentifier: packetIdentifier,
            properties: properties
        )
    }

    /// The remaining length this packet encodes to.
    func remainingLength(version: MQTTProtocolVersion) -> Int {
        var length = 2 + topic.utf8.count + payload.readableBytes
        if qos != .atMostOnce { length += 2 }
        if version == .v5 {
            let props = properties.isEmpty ? 0 : properties.encodedLength
            length += MQTTVariableByteInteger.size(props) + props
        }
        return length
    }

    func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeMQTTString(topic)
        if qos != .atMostOnce {
            precondition(packetIdentifier != nil, "PUBLISH with QoS > 0 needs a packet identifier")
            buffer.writeInteger(packetIdentifier!)
        }
        if version == .v5 { properties.write(to: &buffer) }
        buffer.writeImmutableBuffer(payload)
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet identifier plus, in MQTT 5, a reason code and properties.
public struct MQTTAckPacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.reasonCode = reasonCode
        self.properties = properties
    }

    static func read(
        version: MQTTProtocolVersion,
        context: MQTTPropertyContext,
        from body: inout ByteBuffer
    ) throws(MQTTCodecError) -> Self {
        let id = try body.readMQTTInteger(as: UInt16.self, "packet identifier")
        guard id != 0 else { throw MQTTCodecError(.malformedPacket, "packet identifier 0") }
        var packet = MQTTAckPacket(packetIdentifier: id)
        if version == .v5 {
            // Section 3.4.2.1: the reason code and properties may be omitted when the reason is 0x00.
            if body.readableBytes > 0 {
                packet.reasonCode = MQTTReasonCode(try body.readMQTTInteger(as: UInt8.self, "reason code"))
            }
            if body.readableBytes > 0 {
                packet.properties = try MQTTProperties.read(from: &body, context: context)
            }
        }
        guard body.readableBytes == 0 else {
            throw MQTTCodecError(.malformedPacket, "trailing bytes after acknowledgement")
        }
        return packet
    }

    func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 && (reasonCode != .success || !properties.isEmpty) {
            buffer.writeInteger(reasonCode.rawValue)
            if !properties.isEmpty { properties.write(to: &buffer) }
        }
    }
}

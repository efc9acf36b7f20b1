public import NIOCore

/// The Will message a client registers in CONNECT.
public struct MQTTWill: Hashable, Sendable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    /// Will properties (MQTT 5 only).
    public var properties: MQTTProperties

    public init(topic: String, payload: ByteBuffer, qos: MQTTQoS, retain: Bool, properties: MQTTProperties = .init()) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }
}

/// CONNECT (3.1.1 section 3.1, 5.0 section 3.1).
public struct MQTTConnectPacket: Hashable, Sendable {
    public var version: MQTTProtocolVersion
    /// Clean Session (3.1.1) or Clean Start (5.0).
    public var cleanStart: Bool
    /// Keep alive in seconds; 0 disables it.
    public var keepAlive: UInt16
    public var clientIdentifier: String
    public var will: MQTTWill?
    public var username: String?
    public var password: ByteBuffer?
    public var properties: MQTTProperties

    public init(
        version: MQTTProtocolVersion,
        cleanStart: Bool,
        keepAlive: UInt16,
        clientIdentifier: String,
        will: MQTTWill? = nil,
        username: String? = nil,
        password: ByteBuffer? = nil,
        properties: MQTTProperties = .init()
    ) {
        self.version = version
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.clientIdentifier = clientIdentifier
        self.will = will
        self.username = username
        self.password = password
        self.properties = properties
    }

    /// Reads the protocol level of a CONNECT body without consuming it, so the decoder can pick the
    /// version before decoding the rest.
    static func peekVersion(_ body: ByteBuffer) throws(MQTTCodecError) -> MQTTProtocolVersion {
        var body = body
        let name = try body.readMQTTString("protocol name")
        let level = try body.readMQTTInteger(as: UInt8.self, "protocol level")
        switch (name, level) {
        case ("MQTT", 4): return .v3_1_1
        case ("MQTT", 5): return .v5
        case ("MQTT", _), ("MQIsdp", _):
            throw MQTTCodecError(.unsupportedProtocolVersion, "protocol \(name) level \(level) is not supported")
        default:
            throw MQTTCodecError(.protocolError, "unknown protocol name '\(name)'")
        }
    }

    static func read(flags: UInt8, from body: inout ByteBuffer) throws(MQTTCodecError) -> Self {
        let version = try peekVersion(body)
        _ = try body.readMQTTString("protocol name")
        _ = try body.readMQTTInteger(as: UInt8.self, "protocol level")
        let connectFlags = try body.readMQTTInteger(as: UInt8.self, "connect flags")
        guard connectFlags & 0x01 == 0 else {
            throw MQTTCodecError(.malformedPacket, "reserved CONNECT flag is set")
        }
        let cleanStart = connectFlags & 0x02 != 0
        let willFlag = connectFlags & 0x04 != 0
        let willQoSBits = (connectFlags >> 3) & 0x03
        let willRetain = connectFlags & 0x20 != 0
        let passwordFlag = connectFlags & 0x40 != 0
        let usernameFlag = connectFlags & 0x80 != 0
        guard let willQoS = MQTTQoS(rawValue: willQoSBits) else {
            throw MQTTCodecError(.malformedPacket, "will QoS 3")
        }
        if !willFlag && (willQoSBits != 0 || willRetain) {
            throw MQTTCodecError(.malformedPacket, "will QoS or retain set without the will flag")
        }
        if version == .v3_1_1 && passwordFlag && !usernameFlag {
            throw MQTTCodecError(.malformedPacket, "password flag set without username flag")
        }
        let keepAlive = try body.readMQTTInteger(as: UInt16.self, "keep alive")
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &body, context: .connect) : MQTTProperties()
        let clientIdentifier = try body.readMQTTString("client identifier")
        var will: MQTTWill?
        if willFlag {
            let willProperties: MQTTProperties =
                version == .v5 ? try MQTTProperties.read(from: &body, context: .will) : MQTTProperties()
            let topic = try body.readMQTTString("will topic")
            guard MQTTTopic.isValidName(topic) else {
                throw MQTTCodecError(.invalidTopicName, "will topic '\(topic)' is not a valid topic name")
            }
            let payload = try body.readMQTTBinary("will payload")
            will = MQTTWill(topic: topic, payload: payload, qos: willQoS, retain: willRetain, properties: willProperties)
        }
        let username: String? = usernameFlag ? try body.readMQTTString("username") : nil
        let password: ByteBuffer? = passwordFlag ? try body.readMQTTBinary("password") : nil
        guard body.readableBytes == 0 else {
            throw MQTTCodecError(.malformedPacket, "\(body.readableBytes) trailing bytes after CONNECT")
        }
        return MQTTConnectPacket(
            version: version,
            cleanStart: cleanStart,
            keepAlive: keepAlive,
            clientIdentifier: clientIdentifier,
            will: will,
            username: username,
            password: password,
            properties: properties
        )
    }

    func writeBody(to buffer: inout ByteBuffer) {
        buffer.writeMQTTString("MQTT")
        buffer.writeInteger(version.rawValue)
        var flags: UInt8 = 0
        if cleanStart { flags |= 0x02 }
        if let will {
            flags |= 0x04 | (will.qos.rawValue << 3)
            if will.retain { flags |= 0x20 }
        }
        if password != nil { flags |= 0x40 }
        if username != nil { flags |= 0x80 }
        buffer.writeInteger(flags)
        buffer.writeInteger(keepAlive)
        if version == .v5 { properties.write(to: &buffer) }
        buffer.writeMQTTString(clientIdentifier)
        if let will {
            if version == .v5 { will.properties.write(to: &buffer) }
            buffer.writeMQTTString(will.topic)
            buffer.writeMQTTBinary(will.payload)
        }
        if let username { buffer.writeMQTTString(username) }
        if let password { buffer.writeMQTTBinary(password) }
    }
}

/// CONNACK (3.1.1 section 3.2, 5.0 section 3.2).
public struct MQTTConnAckPacket: Hashable, Sendable {
    public var sessionPresent: Bool
    /// The 3.1.1 return code or the 5.0 reason code.
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(sessionPresent: Bool, reasonCode: MQTTReasonCode, properties: MQTTProperties = .init()) {
        self.sessionPresent = sessionPresent
        self.reasonCode = reasonCode
        self.properties = properties
    }

    static func read(version: MQTTProtocolVersion, from body: inout ByteBuffer) throws(MQTTCodecError) -> Self {
        let ackFlags = try body.readMQTTInteger(as: UInt8.self, "CONNACK flags")
        guard ackFlags & 0xFE == 0 else { throw MQTTCodecError(.malformedPacket, "reserved CONNACK flags set") }
        let code = try body.readMQTTInteger(as: UInt8.self, "CONNACK code")
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &body, context: .connack) : MQTTProperties()
        guard body.readableBytes == 0 else { throw MQTTCodecError(.malformedPacket, "trailing bytes after CONNACK") }
        return MQTTConnAckPacket(sessionPresent: ackFlags & 0x01 != 0, reasonCode: MQTTReasonCode(code), properties: properties)
    }

    func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(sessionPresent ? 1 : 0))
        buffer.writeInteger(reasonCode.rawValue)
        if version == .v5 { properties.write(to: &buffer) }
    }
}

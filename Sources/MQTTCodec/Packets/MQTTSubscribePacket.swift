import NIOCore

/// One topic filter of a SUBSCRIBE with its options.
public struct MQTTSubscription: Hashable, Sendable {
    /// What to do with retained messages when subscribing (MQTT 5, section 3.8.3.1).
    public enum RetainHandling: UInt8, Sendable, Hashable {
        /// Send retained messages at the time of the subscribe.
        case sendOnSubscribe = 0
        /// Send them only if the subscription did not exist yet.
        case sendIfNewSubscription = 1
        /// Do not send retained messages.
        case doNotSend = 2
    }

    public var topicFilter: String
    public var qos: MQTTQoS
    public var noLocal: Bool
    public var retainAsPublished: Bool
    public var retainHandling: RetainHandling

    public init(
        topicFilter: String,
        qos: MQTTQoS,
        noLocal: Bool = false,
        retainAsPublished: Bool = false,
        retainHandling: RetainHandling = .sendOnSubscribe
    ) {
        self.topicFilter = topicFilter
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling
    }
}

/// SUBSCRIBE (3.1.1 section 3.8, 5.0 section 3.8).
public struct MQTTSubscribePacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    public var subscriptions: [MQTTSubscription]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, subscriptions: [MQTTSubscription], properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.subscriptions = subscriptions
        self.properties = properties
    }

    static func read(version: MQTTProtocolVersion, from body: inout ByteBuffer) throws(MQTTCodecError) -> Self {
        let id = try body.readMQTTInteger(as: UInt16.self, "packet identifier")
        guard id != 0 else { throw MQTTCodecError(.malformedPacket, "packet identifier 0") }
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &body, context: .subscribe) : MQTTProperties()
        var subscriptions: [MQTTSubscription] = []
        while body.readableBytes > 0 {
            let filter = try body.readMQTTString("topic filter")
            let options = try body.readMQTTInteger(as: UInt8.self, "subscription options")
            guard let qos = MQTTQoS(rawValue: options & 0x03) else {
                throw MQTTCodecError(.invalidQoS, "subscription with QoS 3")
            }
            switch version {
            case .v3_1_1:
                guard options & 0xFC == 0 else {
                    throw MQTTCodecError(.malformedPacket, "reserved subscription option bits set")
                }
                subscriptions.append(MQTTSubscription(topicFilter: filter, qos: qos))
            case .v5:
                guard options & 0xC0 == 0 else {
                    throw MQTTCodecError(.malformedPacket, "reserved subscription option bits set")
                }
                guard let handling = MQTTSubscription.RetainHandling(rawValue: (options >> 4) & 0x03) else {
                    throw MQTTCodecError(.protocolError, "retain handling 3")
                }
                subscriptions.append(
                    MQTTSubscription(
                        topicFilter: filter,
                        qos: qos,
                        noLocal: options & 0x04 != 0,
                        retainAsPublished: options & 0x08 != 0,
                        retainHandling: handling
                    )
                )
            }
        }
        guard !subscriptions.isEmpty else {
            throw MQTTCodecError(.protocolError, "SUBSCRIBE without topic filters")
        }
        return MQTTSubscribePacket(packetIdentifier: id, subscriptions: subscriptions, properties: properties)
    }

    func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { properties.write(to: &buffer) }
        for subscription in subscriptions {
            buffer.writeMQTTString(subscription.topicFilter)
            var options = subscription.qos.rawValue
            if version == .v5 {
                if subscription.noLocal { options |= 0x04 }
                if subscription.retainAsPublished { options |= 0x08 }
                options |= subscription.retainHandling.rawValue << 4
            }
            buffer.writeInteger(options)
        }
    }
}

/// SUBACK or UNSUBACK: a packet identifier and one reason code per topic filter. A 3.1.1 UNSUBACK
/// carries no reason codes.
public struct MQTTSubAckPacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    public var reasonCodes: [MQTTReasonCode]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode], properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.reasonCodes = reasonCodes
        self.properties = properties
    }

    static func read(
        version: MQTTProtocolVersion,
        context: MQTTPropertyContext,
        from body: inout ByteBuffer
    ) throws(MQTTCodecError) -> Self {
        let id = try body.readMQTTInteger(as: UInt16.self, "packet identifier")
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &body, context: context) : MQTTProperties()
        // A 3.1.1 UNSUBACK is the packet identifier alone (remaining length 2, 3.1.1 section 3.11).
        if context == .unsuback && version == .v3_1_1 && body.readableBytes > 0 {
            throw MQTTCodecError(.malformedPacket, "UNSUBACK with \(body.readableBytes) bytes after the packet identifier")
        }
        var codes: [MQTTReasonCode] = []
        while let code = body.readInteger(as: UInt8.self) { codes.append(MQTTReasonCode(code)) }
        return MQTTSubAckPacket(packetIdentifier: id, reasonCodes: codes, properties: properties)
    }

    func writeBody(version: MQTTProtocolVersion, isUnsubAck: Bool, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { properties.write(to: &buffer) }
        if isUnsubAck && version == .v3_1_1 { return }
        for code in reasonCodes { buffer.writeInteger(code.rawValue) }
    }
}

/// UNSUBSCRIBE (3.1.1 section 3.10, 5.0 section 3.10).
public struct MQTTUnsubscribePacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    public var topicFilters: [String]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, topicFilters: [String], properties: MQTTProperties = .init()) {
        self.packetIdentifier = packetIdentifier
        self.topicFilters = topicFilters
        self.properties = properties
    }

    static func read(version: MQTTProtocolVersion, from body: inout ByteBuffer) throws(MQTTCodecError) -> Self {
        let id = try body.readMQTTInteger(as: UInt16.self, "packet identifier")
        guard id != 0 else { throw MQTTCodecError(.malformedPacket, "packet identifier 0") }
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &body, context: .unsubscribe) : MQTTProperties()
        var filters: [String] = []
        while body.readableBytes > 0 { filters.append(try body.readMQTTString("topic filter")) }
        guard !filters.isEmpty else { throw MQTTCodecError(.protocolError, "UNSUBSCRIBE without topic filters") }
        return MQTTUnsubscribePacket(packetIdentifier: id, topicFilters: filters, properties: properties)
    }

    func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { properties.write(to: &buffer) }
        for filter in topicFilters { buffer.writeMQTTString(filter) }
    }
}

/// DISCONNECT or AUTH: a reason code and properties (MQTT 5); a 3.1.1 DISCONNECT is empty.
public struct MQTTReasonPacket: Hashable, Sendable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = .init()) {
        self.reasonCode = reasonCode
        self.properties = properties
    }

    static func read(
        version: MQTTProtocolVersion,
        context: MQTTPropertyContext,
        from body: inout ByteBuffer
    ) throws(MQTTCodecError) -> Self {
        var packet = MQTTReasonPacket()
        if version == .v5 {
            if body.readableBytes > 0 {
                packet.reasonCode = MQTTReasonCode(try body.readMQTTInteger(as: UInt8.self, "reason code"))
            }
            if body.readableBytes > 0 {
                packet.properties = try MQTTProperties.read(from: &body, context: context)
            }
        }
        guard body.readableBytes == 0 else { throw MQTTCodecError(.malformedPacket, "trailing bytes") }
        return packet
    }

    func writeBody(version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        guard version == .v5, reasonCode != .success || !properties.isEmpty else { return }
        buffer.writeInteger(reasonCode.rawValue)
        if !properties.isEmpty { properties.write(to: &buffer) }
    }
}

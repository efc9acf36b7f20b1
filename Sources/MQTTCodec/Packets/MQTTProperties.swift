public import NIOCore

/// A user property: a UTF-8 name/value pair that MQTT 5 lets almost every packet carry.
public struct MQTTUserProperty: Hashable, Sendable {
    public var name: String
    public var value: String
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// The MQTT 5.0 properties of a packet (section 2.2.2).
///
/// Read and written like a struct of optionals (`properties.sessionExpiryInterval`), so the core never
/// searches a list. Decoding enforces which packet may carry which property and that a property allowed
/// once is present at most once (``MQTTCodecError/Code/propertyNotAllowed``,
/// ``MQTTCodecError/Code/duplicateProperty``, both reason code 0x82). MQTT 3.1.1 packets carry none.
///
/// The values live in one immutable heap box, and an empty list is no box at all, so the struct is a
/// single pointer. That matters: packets are held in async frames, and a task's frame memory is kept
/// for the task's lifetime, so inline properties (about 500 bytes) multiplied every idle
/// connection's footprint.
@dynamicMemberLookup
public struct MQTTProperties: Hashable, Sendable {
    /// The property values, one optional (or list) per property.
    public struct Values: Hashable, Sendable {
        public var payloadFormatIndicator: UInt8?
        public var messageExpiryInterval: UInt32?
        public var contentType: String?
        public var responseTopic: String?
        public var correlationData: ByteBuffer?
        /// Subscription Identifiers: one in SUBSCRIBE, any number in a PUBLISH to a client.
        public var subscriptionIdentifiers: [UInt32] = []
        public var sessionExpiryInterval: UInt32?
        public var assignedClientIdentifier: String?
        public var serverKeepAlive: UInt16?
        public var authenticationMethod: String?
        public var authenticationData: ByteBuffer?
        public var requestProblemInformation: UInt8?
        public var willDelayInterval: UInt32?
        public var requestResponseInformation: UInt8?
        public var responseInformation: String?
        public var serverReference: String?
        public var reasonString: String?
        public var receiveMaximum: UInt16?
        public var topicAliasMaximum: UInt16?
        public var topicAlias: UInt16?
        public var maximumQoS: UInt8?
        public var retainAvailable: UInt8?
        public var userProperties: [MQTTUserProperty] = []
        public var maximumPacketSize: UInt32?
        public var wildcardSubscriptionAvailable: UInt8?
        public var subscriptionIdentifierAvailable: UInt8?
        public var sharedSubscriptionAvailable: UInt8?

        public init() {}

        /// True when every property is absent: `self == Values()` without building and comparing a
        /// whole second struct (every received PUBLISH's list is edited and checked once or twice).
        var isDefault: Bool {
            payloadFormatIndicator == nil && messageExpiryInterval == nil && contentType == nil && responseTopic == nil
                && correlationData == nil && subscriptionIdentifiers.isEmpty && sessionExpiryInterval == nil
                && assignedClientIdentifier == nil && serverKeepAlive == nil && authenticationMethod == nil
                && authenticationData == nil && requestProblemInformation == nil && willDelayInterval == nil
                && requestResponseInformation == nil && responseInformation == nil && serverReference == nil
                && reasonString == nil && receiveMaximum == nil && topicAliasMaximum == nil && topicAlias == nil
                && maximumQoS == nil && retainAvailable == nil && userProperties.isEmpty && maximumPacketSize == nil
                && wildcardSubscriptionAvailable == nil && subscriptionIdentifierAvailable == nil
                && sharedSubscriptionAvailable == nil
        }
    }

    // `@usableFromInline`: the member subscript below is inlined into the modules that read properties, so a
    // read such as `properties.topicAlias` compiles to a field load instead of a key path built and
    // projected at run time (that was about 1 % of the CPU of routing a PUBLISH).

    /// What an empty list reads as (built once, not per read).
    @usableFromInline static let none = Values()

    @usableFromInline final class Box: Sendable {
        @usableFromInline let values: Values
        init(_ values: Values) { self.values = values }
    }

    @usableFromInline var box: Box?

    public init() {}

    public init(_ values: Values) {
        self.box = values.isDefault ? nil : Box(values)
    }

    /// All values at once.
    public var values: Values {
        get { box?.values ?? Self.none }
        set { self = MQTTProperties(newValue) }
    }

    @inlinable
    public subscript<T>(dynamicMember keyPath: WritableKeyPath<Values, T>) -> T {
        get {
            if let box { return box.values[keyPath: keyPath] }
            return Self.none[keyPath: keyPath]
        }
        set {
            var values = self.values
            values[keyPath: keyPath] = newValue
            self = MQTTProperties(values)
        }
    }

    /// True when no property is set.
    public var isEmpty: Bool { box == nil }

    public static func == (lhs: MQTTProperties, rhs: MQTTProperties) -> Bool { lhs.values == rhs.values }
    public func hash(into hasher: inout Hasher) { hasher.combine(values) }
}

/// The property identifiers of MQTT 5.0 (section 2.2.2.2).
public enum MQTTPropertyIdentifier: UInt8, Sendable, CaseIterable {
    case payloadFormatIndicator = 0x01
    case messageExpiryInterval = 0x02
    case contentType = 0x03
    case responseTopic = 0x08
    case correlationData = 0x09
    case subscriptionIdentifier = 0x0B
    case sessionExpiryInterval = 0x11
    case assignedClientIdentifier = 0x12
    case serverKeepAlive = 0x13
    case authenticationMethod = 0x15
    case authenticationData = 0x16
    case requestProblemInformation = 0x17
    case willDelayInterval = 0x18
    case requestResponseInformation = 0x19
    case responseInformation = 0x1A
    case serverReference = 0x1C
    case reasonString = 0x1F
    case receiveMaximum = 0x21
    case topicAliasMaximum = 0x22
    case topicAlias = 0x23
    case maximumQoS = 0x24
    case retainAvailable = 0x25
    case userProperty = 0x26
    case maximumPacketSize = 0x27
    case wildcardSubscriptionAvailable = 0x28
    case subscriptionIdentifierAvailable = 0x29
    case sharedSubscriptionAvailable = 0x2A

    /// The packets (and the Will) that may carry this property, per the table in section 2.2.2.2.
    public var allowedIn: Set<MQTTPropertyContext> {
        switch self {
        case .payloadFormatIndicator, .messageExpiryInterval, .contentType, .responseTopic, .correlationData:
            [.publish, .will]
        case .subscriptionIdentifier: [.publish, .subscribe]
        case .sessionExpiryInterval: [.connect, .connack, .disconnect]
        case .assignedClientIdentifier, .serverKeepAlive, .responseInformation, .maximumQoS, .retainAvailable,
            .wildcardSubscriptionAvailable, .subscriptionIdentifierAvailable, .sharedSubscriptionAvailable:
            [.connack]
        case .authenticationMethod, .authenticationData: [.connect, .connack, .auth]
        case .requestProblemInformation, .requestResponseInformation: [.connect]
        case .willDelayInterval: [.will]
        case .serverReference: [.connack, .disconnect]
        case .reasonString:
            [.connack, .puback, .pubrec, .pubrel, .pubcomp, .suback, .unsuback, .disconnect, .auth]
        case .receiveMaximum, .topicAliasMaximum, .maximumPacketSize: [.connect, .connack]
        case .topicAlias: [.publish]
        case .userProperty: Set(MQTTPropertyContext.allCases)
        }
    }

    /// Whether the property may appear more than once in one packet.
    public var mayRepeat: Bool {
        // User Property may repeat anywhere; Subscription Identifier may repeat in a PUBLISH sent to a
        // client (a SUBSCRIBE may carry only one, checked where SUBSCRIBE is decoded).
        self == .userProperty || self == .subscriptionIdentifier
    }
}

/// Where a property list appears: a packet type, or the Will properties inside CONNECT.
public enum MQTTPropertyContext: Sendable, Hashable, CaseIterable {
    case connect, connack, publish, will, puback, pubrec, pubrel, pubcomp, subscribe, suback, unsubscribe,
        unsuback, disconnect, auth
}

extension MQTTProperties {
    /// Decodes a property list (length prefix included) for `context`.
    public static func read(
        from buffer: inout ByteBuffer,
        context: MQTTPropertyContext
    ) throws(MQTTCodecError) -> MQTTProperties {
        guard let length = try buffer.readMQTTVariableByteInteger() else {
            throw MQTTCodecError(.malformedPacket, "property length truncated")
        }
        guard var bytes = buffer.readSlice(length: Int(length)) else {
            throw MQTTCodecError(.malformedPacket, "property list longer than the packet")
        }
        var properties = MQTTProperties.Values()
        var seen: Set<UInt8> = []
        while bytes.readableBytes > 0 {
            // The identifier is a variable byte integer, but every defined identifier fits in one byte.
            guard let rawID = try bytes.readMQTTVariableByteInteger() else {
                throw MQTTCodecError(.malformedPacket, "property identifier truncated")
            }
            guard rawID <= UInt8.max, let id = MQTTPropertyIdentifier(rawValue: UInt8(rawID)) else {
                throw MQTTCodecError(.malformedPacket, "unknown property identifier \(rawID)")
            }
            guard id.allowedIn.contains(context) else {
                throw MQTTCodecError(.propertyNotAllowed, "property \(id) not allowed in \(context)")
            }
            if !id.mayRepeat || (id == .subscriptionIdentifier && context == .subscribe) {
                guard seen.insert(id.rawValue).inserted else {
                    throw MQTTCodecError(.duplicateProperty, "property \(id) appears twice in \(context)")
                }
            }
            try properties.readValue(id, from: &bytes)
        }
        return MQTTProperties(properties)
    }

}

extension MQTTProperties.Values {
    fileprivate mutating func readValue(_ id: MQTTPropertyIdentifier, from bytes: inout ByteBuffer) throws(MQTTCodecError) {
        func byte(_ allowed: ClosedRange<UInt8> = 0...1) throws(MQTTCodecError) -> UInt8 {
            let value = try bytes.readMQTTInteger(as: UInt8.self, "property \(id)")
            guard allowed.contains(value) else {
                throw MQTTCodecError(.invalidProperty, "property \(id) has invalid value \(value)")
            }
            return value
        }
        func u16(nonZero: Bool = false) throws(MQTTCodecError) -> UInt16 {
            let value = try bytes.readMQTTInteger(as: UInt16.self, "property \(id)")
            if nonZero && value == 0 { throw MQTTCodecError(.invalidProperty, "property \(id) is 0") }
            return value
        }
        func u32(nonZero: Bool = false) throws(MQTTCodecError) -> UInt32 {
            let value = try bytes.readMQTTInteger(as: UInt32.self, "property \(id)")
            if nonZero && value == 0 { throw MQTTCodecError(.invalidProperty, "property \(id) is 0") }
            return value
        }
        func string() throws(MQTTCodecError) -> String { try bytes.readMQTTString("property \(id)") }
        func binary() throws(MQTTCodecError) -> ByteBuffer { try bytes.readMQTTBinary("property \(id)") }

        switch id {
        case .payloadFormatIndicator: payloadFormatIndicator = try byte()
        case .messageExpiryInterval: messageExpiryInterval = try u32()
        case .contentType: contentType = try string()
        case .responseTopic:
            let topic = try string()
            guard MQTTTopic.isValidName(topic) else {
                throw MQTTCodecError(.invalidProperty, "Response Topic '\(topic)' is not a valid topic name")
            }
            responseTopic = topic
        case .correlationData: correlationData = try binary()
        case .subscriptionIdentifier:
            guard let value = try bytes.readMQTTVariableByteInteger() else {
                throw MQTTCodecError(.malformedPacket, "property \(id) truncated")
            }
            guard value != 0 else { throw MQTTCodecError(.invalidProperty, "Subscription Identifier is 0") }
            subscriptionIdentifiers.append(value)
        case .sessionExpiryInterval: sessionExpiryInterval = try u32()
        case .assignedClientIdentifier: assignedClientIdentifier = try string()
        case .serverKeepAlive: serverKeepAlive = try u16()
        case .authenticationMethod: authenticationMethod = try string()
        case .authenticationData: authenticationData = try binary()
        case .requestProblemInformation: requestProblemInformation = try byte()
        case .willDelayInterval: willDelayInterval = try u32()
        case .requestResponseInformation: requestResponseInformation = try byte()
        case .responseInformation: responseInformation = try string()
        case .serverReference: serverReference = try string()
        case .reasonString: reasonString = try string()
        case .receiveMaximum: receiveMaximum = try u16(nonZero: true)
        case .topicAliasMaximum: topicAliasMaximum = try u16()
        case .topicAlias: topicAlias = try u16(nonZero: true)
        case .maximumQoS: maximumQoS = try byte()
        case .retainAvailable: retainAvailable = try byte()
        case .userProperty:
            let name = try string()
            let value = try string()
            userProperties.append(MQTTUserProperty(name: name, value: value))
        case .maximumPacketSize: maximumPacketSize = try u32(nonZero: true)
        case .wildcardSubscriptionAvailable: wildcardSubscriptionAvailable = try byte()
        case .subscriptionIdentifierAvailable: subscriptionIdentifierAvailable = try byte()
        case .sharedSubscriptionAvailable: sharedSubscriptionAvailable = try byte()
        }
    }

}

extension MQTTProperties {
    /// The encoded size of the property list, without its length prefix.
    public var encodedLength: Int {
        var scratch = ByteBufferAllocator().buffer(capacity: 0)
        writeBody(to: &scratch)
        return scratch.readableBytes
    }

    /// Writes the property list with its variable byte integer length prefix.
    public func write(to buffer: inout ByteBuffer) {
        if isEmpty {
            buffer.writeInteger(UInt8(0))
            return
        }
        var body = ByteBufferAllocator().buffer(capacity: 64)
        writeBody(to: &body)
        buffer.writeMQTTVariableByteInteger(UInt32(body.readableBytes))
        buffer.writeImmutableBuffer(body)
    }

    private func writeBody(to buffer: inout ByteBuffer) {
        let v = values
        func id(_ id: MQTTPropertyIdentifier) { buffer.writeInteger(id.rawValue) }
        if let w = v.payloadFormatIndicator { id(.payloadFormatIndicator); buffer.writeInteger(w) }
        if let w = v.messageExpiryInterval { id(.messageExpiryInterval); buffer.writeInteger(w) }
        if let w = v.contentType { id(.contentType); buffer.writeMQTTString(w) }
        if let w = v.responseTopic { id(.responseTopic); buffer.writeMQTTString(w) }
        if let w = v.correlationData { id(.correlationData); buffer.writeMQTTBinary(w) }
        for w in v.subscriptionIdentifiers { id(.subscriptionIdentifier); buffer.writeMQTTVariableByteInteger(w) }
        if let w = v.sessionExpiryInterval { id(.sessionExpiryInterval); buffer.writeInteger(w) }
        if let w = v.assignedClientIdentifier { id(.assignedClientIdentifier); buffer.writeMQTTString(w) }
        if let w = v.serverKeepAlive { id(.serverKeepAlive); buffer.writeInteger(w) }
        if let w = v.authenticationMethod { id(.authenticationMethod); buffer.writeMQTTString(w) }
        if let w = v.authenticationData { id(.authenticationData); buffer.writeMQTTBinary(w) }
        if let w = v.requestProblemInformation { id(.requestProblemInformation); buffer.writeInteger(w) }
        if let w = v.willDelayInterval { id(.willDelayInterval); buffer.writeInteger(w) }
        if let w = v.requestResponseInformation { id(.requestResponseInformation); buffer.writeInteger(w) }
        if let w = v.responseInformation { id(.responseInformation); buffer.writeMQTTString(w) }
        if let w = v.serverReference { id(.serverReference); buffer.writeMQTTString(w) }
        if let w = v.reasonString { id(.reasonString); buffer.writeMQTTString(w) }
        if let w = v.receiveMaximum { id(.receiveMaximum); buffer.writeInteger(w) }
        if let w = v.topicAliasMaximum { id(.topicAliasMaximum); buffer.writeInteger(w) }
        if let w = v.topicAlias { id(.topicAlias); buffer.writeInteger(w) }
        if let w = v.maximumQoS { id(.maximumQoS); buffer.writeInteger(w) }
        if let w = v.retainAvailable { id(.retainAvailable); buffer.writeInteger(w) }
        for p in v.userProperties {
            id(.userProperty)
            buffer.writeMQTTString(p.name)
            buffer.writeMQTTString(p.value)
        }
        if let w = v.maximumPacketSize { id(.maximumPacketSize); buffer.writeInteger(w) }
        if let w = v.wildcardSubscriptionAvailable { id(.wildcardSubscriptionAvailable); buffer.writeInteger(w) }
        if let w = v.subscriptionIdentifierAvailable { id(.subscriptionIdentifierAvailable); buffer.writeInteger(w) }
        if let w = v.sharedSubscriptionAvailable { id(.sharedSubscriptionAvailable); buffer.writeInteger(w) }
    }
}

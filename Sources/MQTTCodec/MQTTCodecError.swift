/// An error found while decoding or validating MQTT bytes.
///
/// Every error maps to exactly one wire reason code (``reasonCode``), so the transport can tell an
/// MQTT 5 client why it is being disconnected; an MQTT 3.1.1 client is simply disconnected (3.1.1 has
/// no way to say why), except for ``Code/unsupportedProtocolVersion`` which is answered with CONNACK
/// return code 1.
public struct MQTTCodecError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong. A struct rather than an enum so that adding a case does not break callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String, Hashable, Sendable {
            case malformedVariableByteInteger
            case malformedPacket
            case invalidFixedHeaderFlags
            case invalidPacketType
            case packetTooLarge
            case invalidUTF8
            case unsupportedProtocolVersion
            case protocolError
            case invalidProperty
            case duplicateProperty
            case propertyNotAllowed
            case invalidQoS
            case invalidTopicName
            case invalidTopicFilter
            case payloadFormatInvalid
        }
        fileprivate let base: Base
        private init(_ base: Base) { self.base = base }

        /// A variable byte integer used more than four bytes.
        public static let malformedVariableByteInteger = Code(.malformedVariableByteInteger)
        /// The packet's content does not match its declared layout (truncated, trailing bytes, ...).
        public static let malformedPacket = Code(.malformedPacket)
        /// The reserved flag bits of the fixed header are not the ones the spec requires.
        public static let invalidFixedHeaderFlags = Code(.invalidFixedHeaderFlags)
        /// The packet type is reserved (0) or not valid in this direction/version.
        public static let invalidPacketType = Code(.invalidPacketType)
        /// The packet is larger than the configured maximum packet size.
        public static let packetTooLarge = Code(.packetTooLarge)
        /// A UTF-8 string is not well formed or contains U+0000.
        public static let invalidUTF8 = Code(.invalidUTF8)
        /// CONNECT names a protocol level this gateway does not speak (it speaks 4 = 3.1.1 and 5 = 5.0).
        public static let unsupportedProtocolVersion = Code(.unsupportedProtocolVersion)
        /// The bytes are well formed but break a protocol rule (e.g. a reserved CONNECT flag is set).
        public static let protocolError = Code(.protocolError)
        /// A property carries a value the spec forbids (e.g. Receive Maximum 0).
        public static let invalidProperty = Code(.invalidProperty)
        /// A property that may appear once appears twice.
        public static let duplicateProperty = Code(.duplicateProperty)
        /// A property appears in a packet that may not carry it.
        public static let propertyNotAllowed = Code(.propertyNotAllowed)
        /// A QoS of 3 in a PUBLISH or a subscription.
        public static let invalidQoS = Code(.invalidQoS)
        /// A topic name is empty or contains a wildcard.
        public static let invalidTopicName = Code(.invalidTopicName)
        /// A topic filter is empty or uses `+`/`#` in a way the spec forbids.
        public static let invalidTopicFilter = Code(.invalidTopicFilter)
        /// Payload Format Indicator 1 with a payload that is not UTF-8.
        public static let payloadFormatInvalid = Code(.payloadFormatInvalid)

        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// Human-readable context for logs (never sent to the peer).
    public var context: String

    public init(_ code: Code, _ context: String) {
        self.code = code
        self.context = context
    }

    /// The MQTT 5.0 reason code a server sends in DISCONNECT for this error.
    ///
    /// This is the one place where codec errors are mapped to wire codes.
    public var reasonCode: MQTTReasonCode {
        switch code.base {
        case .malformedVariableByteInteger, .malformedPacket, .invalidFixedHeaderFlags, .invalidUTF8,
            .invalidPacketType, .invalidQoS, .propertyNotAllowed:
            // MQTT 5.0 section 2.2.2.2: an identifier not valid for its packet type makes a Malformed Packet.
            return .malformedPacket
        case .protocolError, .invalidProperty, .duplicateProperty:
            // A property included twice, or with a value the spec forbids, is a Protocol Error.
            return .protocolError
        case .packetTooLarge: return .packetTooLarge
        case .unsupportedProtocolVersion: return .unsupportedProtocolVersion
        case .invalidTopicName: return .topicNameInvalid
        case .invalidTopicFilter: return .topicFilterInvalid
        case .payloadFormatInvalid: return .payloadFormatInvalid
        }
    }

    public var description: String { "\(code): \(context)" }
}

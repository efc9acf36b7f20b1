/// An MQTT 5.0 reason code (also used for 3.1.1 CONNACK return codes and SUBACK results, whose values
/// are a subset).
public struct MQTTReasonCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    public static let success = Self(0x00)
    public static let normalDisconnection = Self(0x00)
    public static let grantedQoS0 = Self(0x00)
    public static let grantedQoS1 = Self(0x01)
    public static let grantedQoS2 = Self(0x02)
    public static let disconnectWithWillMessage = Self(0x04)
    public static let noMatchingSubscribers = Self(0x10)
    public static let noSubscriptionExisted = Self(0x11)
    public static let continueAuthentication = Self(0x18)
    public static let reAuthenticate = Self(0x19)
    public static let unspecifiedError = Self(0x80)
    public static let malformedPacket = Self(0x81)
    public static let protocolError = Self(0x82)
    public static let implementationSpecificError = Self(0x83)
    public static let unsupportedProtocolVersion = Self(0x84)
    public static let clientIdentifierNotValid = Self(0x85)
    public static let badUserNameOrPassword = Self(0x86)
    public static let notAuthorized = Self(0x87)
    public static let serverUnavailable = Self(0x88)
    public static let serverBusy = Self(0x89)
    public static let banned = Self(0x8A)
    public static let serverShuttingDown = Self(0x8B)
    public static let badAuthenticationMethod = Self(0x8C)
    public static let keepAliveTimeout = Self(0x8D)
    public static let sessionTakenOver = Self(0x8E)
    public static let topicFilterInvalid = Self(0x8F)
    public static let topicNameInvalid = Self(0x90)
    public static let packetIdentifierInUse = Self(0x91)
    public static let packetIdentifierNotFound = Self(0x92)
    public static let receiveMaximumExceeded = Self(0x93)
    public static let topicAliasInvalid = Self(0x94)
    public static let packetTooLarge = Self(0x95)
    public static let messageRateTooHigh = Self(0x96)
    public static let quotaExceeded = Self(0x97)
    public static let administrativeAction = Self(0x98)
    public static let payloadFormatInvalid = Self(0x99)
    public static let retainNotSupported = Self(0x9A)
    public static let qosNotSupported = Self(0x9B)
    public static let useAnotherServer = Self(0x9C)
    public static let serverMoved = Self(0x9D)
    public static let sharedSubscriptionsNotSupported = Self(0x9E)
    public static let connectionRateExceeded = Self(0x9F)
    public static let maximumConnectTime = Self(0xA0)
    public static let subscriptionIdentifiersNotSupported = Self(0xA1)
    public static let wildcardSubscriptionsNotSupported = Self(0xA2)

    /// True for codes ≥ 0x80, which the spec defines as failures.
    public var isFailure: Bool { rawValue >= 0x80 }

    public var description: String { "0x" + String(rawValue, radix: 16, uppercase: true) }
}

/// MQTT 3.1.1 CONNACK return codes (section 3.2.2.3).
public enum MQTTConnectReturnCode: UInt8, Sendable {
    case accepted = 0
    case unacceptableProtocolVersion = 1
    case identifierRejected = 2
    case serverUnavailable = 3
    case badUsernameOrPassword = 4
    case notAuthorized = 5
}

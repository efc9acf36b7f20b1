public import GatewayCore
public import MQTTCodec

/// Everything one bridge needs: the upstream connection, the rules and the store-and-forward queue.
public struct BridgeConfiguration: Sendable, Hashable {
    /// TLS towards the upstream.
    public struct TLS: Sendable, Hashable {
        /// PEM CA certificates; nil uses the system's trusted certificates.
        public var caFile: String?
        /// PEM client certificate and key (mutual TLS), both or neither.
        public var certificateFile: String?
        public var keyFile: String?
        /// Skip the host-name check of the upstream's certificate (tests only).
        public var insecure: Bool

        public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil, insecure: Bool = false) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.insecure = insecure
        }
    }

    /// The bridge's name: log metadata `iotgw.bridge`, metric label `bridge`, readiness `bridge:NAME`,
    /// internal session `$bridge/NAME`.
    public var name: String
    public var host: String
    public var port: Int
    /// The client id used upstream.
    public var clientID: String
    /// `.v3_1_1` or `.v5`.
    public var protocolVersion: MQTTProtocolVersion
    /// Seconds between pings (libmosquitto sends PINGREQ).
    public var keepAlive: Int
    /// Start a fresh upstream session on every connect.
    public var cleanSession: Bool
    /// Seconds the upstream keeps the session after a disconnect (MQTT 5, persistent sessions only).
    public var sessionExpiry: UInt32
    public var username: String?
    public var password: String?
    public var tls: TLS?
    public var rules: [BridgeRule]
    /// The bounds of the internal session (the bridge queue) and the in-flight window towards the upstream.
    public var queue: InternalClient.Limits
    /// Backoff between connection attempts: the first delay and the cap, in seconds. Each failure
    /// doubles the delay up to the cap; the wait is a random point in its upper half (jitter).
    public var reconnectInitialDelay: Double
    public var reconnectMaxDelay: Double
    /// Whether readiness depends on this bridge being connected.
    public var requiredForReadiness: Bool

    /// - Parameters: see the properties; defaults are those of the configuration file.
    public init(
        name: String,
        host: String,
        port: Int = 1883,
        clientID: String? = nil,
        protocolVersion: MQTTProtocolVersion = .v5,
        keepAlive: Int = 60,
        cleanSession: Bool = false,
        sessionExpiry: UInt32 = 86_400,
        username: String? = nil,
        password: String? = nil,
        tls: TLS? = nil,
        rules: [BridgeRule],
        queue: InternalClient.Limits = .init(),
        reconnectInitialDelay: Double = 0.5,
        reconnectMaxDelay: Double = 30,
        requiredForReadiness: Bool = false
    ) {
        self.name = name
        self.host = host
        self.port = port
        self.clientID = clientID ?? "iotgw-\(name)"
        self.protocolVersion = protocolVersion
        self.keepAlive = keepAlive
        self.cleanSession = cleanSession
        self.sessionExpiry = sessionExpiry
        self.username = username
        self.password = password
        self.tls = tls
        self.rules = rules
        self.queue = queue
        self.reconnectInitialDelay = reconnectInitialDelay
        self.reconnectMaxDelay = reconnectMaxDelay
        self.requiredForReadiness = requiredForReadiness
    }

    /// The client id of the bridge's internal session on the gateway.
    public var internalClientID: String { InternalClient.reservedPrefix + name }

    /// The delay before connection attempt number `failures + 1` after `failures` failures in a row:
    /// `min(max, initial × 2^(failures-1))`, then a random point in its upper half.
    public func reconnectDelay(afterFailures failures: Int, random: Double) -> Double {
        let exponent = Double(min(max(failures - 1, 0), 30))
        let cap = min(reconnectMaxDelay, reconnectInitialDelay * Double(1 << Int(exponent)))
        return cap / 2 + cap / 2 * min(max(random, 0), 1)
    }
}

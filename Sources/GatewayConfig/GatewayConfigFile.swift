public import GatewayCore

/// The configuration file model: one `Codable` value, loaded from YAML or JSON (see ``ConfigLoader``).
///
/// Every key is optional and defaults to the value documented here and in `Configs/iotgw.yaml`. Unknown
/// keys and invalid values are errors naming the key path.
public struct GatewayConfigFile: Codable, Sendable, Equatable {
    public var log = Log()
    public var listeners = Listeners()
    public var limits = Limits()
    public var mqtt = MQTT()
    public var auth = Auth()
    public var shutdown = Shutdown()

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case log, listeners, limits, mqtt, auth, shutdown
    }

    public init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        log = try c.value(.log, default: Log())
        listeners = try c.value(.listeners, default: Listeners())
        limits = try c.value(.limits, default: Limits())
        mqtt = try c.value(.mqtt, default: MQTT())
        auth = try c.value(.auth, default: Auth())
        shutdown = try c.value(.shutdown, default: Shutdown())
    }

    /// `log`: logging.
    public struct Log: Codable, Sendable, Equatable {
        /// `log.level`: trace, debug, info, notice, warning, error or critical. Default info.
        public var level = "info"

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable { case level }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            level = try c.value(.level, default: level)
        }
    }

    /// `listeners`: where the gateway accepts connections.
    public struct Listeners: Codable, Sendable, Equatable {
        /// `listeners.mqtt`: MQTT over TCP. Default 127.0.0.1:1883.
        public var mqtt = Listener(host: "127.0.0.1", port: 1883)

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable { case mqtt }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            mqtt = try c.value(.mqtt, default: mqtt)
        }
    }

    /// One listener: `enabled`, `host`, `port`.
    public struct Listener: Codable, Sendable, Equatable {
        public var enabled = true
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
        enum CodingKeys: String, CodingKey, CaseIterable { case enabled, host, port }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            enabled = try c.value(.enabled, default: true)
            host = try c.value(.host, default: "127.0.0.1")
            port = try c.value(.port, default: 1883)
        }
    }

    /// `limits`: what bounds memory and connections. See ``BrokerConfiguration`` for each default.
    public struct Limits: Codable, Sendable, Equatable {
        public var maxConnections = 100_000
        public var maxPacketSize = 1_048_576
        public var connectTimeout = 10.0
        public var maxInflight = 32
        public var maxQueuedMessages = 1_000
        public var maxQueuedBytes = 1_048_576
        public var globalMaxQueuedBytes = 268_435_456
        public var sessionExpiry = 86_400.0
        public var maxClientIDLength = 256
        public var maxKeepAlive = 0

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case maxConnections = "max_connections"
            case maxPacketSize = "max_packet_size"
            case connectTimeout = "connect_timeout"
            case maxInflight = "max_inflight"
            case maxQueuedMessages = "max_queued_messages"
            case maxQueuedBytes = "max_queued_bytes"
            case globalMaxQueuedBytes = "global_max_queued_bytes"
            case sessionExpiry = "session_expiry"
            case maxClientIDLength = "max_client_id_length"
            case maxKeepAlive = "max_keep_alive"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Limits()
            maxConnections = try c.value(.maxConnections, default: d.maxConnections)
            maxPacketSize = try c.value(.maxPacketSize, default: d.maxPacketSize)
            connectTimeout = try c.value(.connectTimeout, default: d.connectTimeout)
            maxInflight = try c.value(.maxInflight, default: d.maxInflight)
            maxQueuedMessages = try c.value(.maxQueuedMessages, default: d.maxQueuedMessages)
            maxQueuedBytes = try c.value(.maxQueuedBytes, default: d.maxQueuedBytes)
            globalMaxQueuedBytes = try c.value(.globalMaxQueuedBytes, default: d.globalMaxQueuedBytes)
            sessionExpiry = try c.value(.sessionExpiry, default: d.sessionExpiry)
            maxClientIDLength = try c.value(.maxClientIDLength, default: d.maxClientIDLength)
            maxKeepAlive = try c.value(.maxKeepAlive, default: d.maxKeepAlive)
        }
    }

    /// `mqtt`: protocol features offered.
    public struct MQTT: Codable, Sendable, Equatable {
        /// `mqtt.max_qos`: the highest QoS granted (0, 1 or 2). Default 2.
        public var maxQoS = 2
        /// `mqtt.retain_available`: whether retained messages are kept. Default true.
        public var retainAvailable = true

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case maxQoS = "max_qos"
            case retainAvailable = "retain_available"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            maxQoS = try c.value(.maxQoS, default: 2)
            retainAvailable = try c.value(.retainAvailable, default: true)
        }
    }

    /// `auth`: who may connect.
    public struct Auth: Codable, Sendable, Equatable {
        /// `auth.anonymous`: whether clients without credentials may connect. Default true.
        public var anonymous = true

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable { case anonymous }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            anonymous = try c.value(.anonymous, default: true)
        }
    }

    /// `shutdown`: graceful shutdown.
    public struct Shutdown: Codable, Sendable, Equatable {
        /// `shutdown.timeout`: seconds from SIGTERM to exit. Default 10.
        public var timeout = 10.0

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable { case timeout }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            timeout = try c.value(.timeout, default: 10)
        }
    }
}

extension GatewayConfigFile {
    /// The log levels `log.level` accepts.
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Checks value ranges; returns (key path, message) pairs for every problem found.
    public func validationErrors() -> [(key: String, message: String)] {
        var errors: [(String, String)] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { errors.append((key, message)) }
        }
        check(Self.logLevels.contains(log.level), "log.level", "'\(log.level)' is not one of \(Self.logLevels.joined(separator: ", "))")
        check((0...65535).contains(listeners.mqtt.port), "listeners.mqtt.port", "\(listeners.mqtt.port) is not a port number (0-65535)")
        check(!listeners.mqtt.host.isEmpty, "listeners.mqtt.host", "must not be empty")
        check(limits.maxConnections > 0, "limits.max_connections", "must be at least 1")
        check(
            (16...268_435_460).contains(limits.maxPacketSize),
            "limits.max_packet_size",
            "\(limits.maxPacketSize) is outside 16-268435460 bytes"
        )
        check(limits.connectTimeout > 0, "limits.connect_timeout", "must be more than 0 seconds")
        check((1...65535).contains(limits.maxInflight), "limits.max_inflight", "must be 1-65535")
        check(limits.maxQueuedMessages >= limits.maxInflight, "limits.max_queued_messages", "must be at least limits.max_inflight (\(limits.maxInflight))")
        check(limits.maxQueuedBytes > 0, "limits.max_queued_bytes", "must be more than 0")
        check(limits.globalMaxQueuedBytes >= limits.maxQueuedBytes, "limits.global_max_queued_bytes", "must be at least limits.max_queued_bytes")
        check(limits.sessionExpiry >= 0, "limits.session_expiry", "must not be negative")
        check((1...65535).contains(limits.maxClientIDLength), "limits.max_client_id_length", "must be 1-65535")
        check((0...65535).contains(limits.maxKeepAlive), "limits.max_keep_alive", "must be 0-65535 seconds")
        check((0...2).contains(mqtt.maxQoS), "mqtt.max_qos", "\(mqtt.maxQoS) is not a QoS (0, 1 or 2)")
        check(shutdown.timeout > 0, "shutdown.timeout", "must be more than 0 seconds")
        return errors
    }

    /// The broker core's configuration.
    public var brokerConfiguration: BrokerConfiguration {
        var c = BrokerConfiguration()
        c.maxConnections = limits.maxConnections
        c.maxPacketSize = limits.maxPacketSize
        c.connectTimeout = limits.connectTimeout
        c.maxInflight = limits.maxInflight
        c.maxQueuedMessages = limits.maxQueuedMessages
        c.maxQueuedBytes = limits.maxQueuedBytes
        c.globalMaxQueuedBytes = limits.globalMaxQueuedBytes
        c.sessionExpiry = limits.sessionExpiry
        c.maxClientIDLength = limits.maxClientIDLength
        c.maxKeepAlive = limits.maxKeepAlive
        c.maxQoS = mqtt.maxQoS
        c.retainAvailable = mqtt.retainAvailable
        c.allowAnonymous = auth.anonymous
        c.shutdownTimeout = shutdown.timeout
        return c
    }
}

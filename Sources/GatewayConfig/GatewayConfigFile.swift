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
    public var tls = TLS()
    public var websocket = WebSocket()
    public var admin = Admin()
    public var storage = Storage()
    /// `bridges`: connections to upstream brokers (see `GatewayConfigFile+Bridges.swift`). Default none.
    public var bridges: [Bridge] = []

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case log, listeners, limits, mqtt, auth, shutdown, tls, websocket, admin, storage, bridges
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
        tls = try c.value(.tls, default: TLS())
        websocket = try c.value(.websocket, default: WebSocket())
        admin = try c.value(.admin, default: Admin())
        storage = try c.value(.storage, default: Storage())
        bridges = try c.value(.bridges, default: [])
    }

    /// `log`: logging.
    public struct Log: Codable, Sendable, Equatable {
        /// `log.level`: trace, debug, info, notice, warning, error or critical. Default info.
        public var level = "info"
        /// `log.format`: `text` (one human-readable line per entry) or `json` (one JSON object per
        /// line). Default text.
        public var format = "text"

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable { case level, format }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            level = try c.value(.level, default: level)
            format = try c.value(.format, default: format)
        }
    }

    /// `admin`: the HTTP admin listener (health, readiness, Prometheus metrics, the admin API).
    public struct Admin: Codable, Sendable, Equatable {
        /// `admin.enabled`: whether the admin listener runs. Default true.
        public var enabled = true
        /// `admin.host`: address to bind. Default 127.0.0.1 (keep it off public interfaces).
        public var host = "127.0.0.1"
        /// `admin.port`: port to bind (0 picks a free one). Default 8080.
        public var port = 8080
        /// `admin.token`: when not empty, `/metrics` and `/api/...` require
        /// `Authorization: Bearer TOKEN`; `/healthz` and `/readyz` stay open for probes. Default empty.
        public var token = ""
        /// `admin.dashboard`: whether the live web dashboard is served at `/` (its feed at
        /// `/api/v1/dashboard/feed`, under the same token). Default true.
        public var dashboard = true
        /// `admin.dashboard_sessions`: dashboard feeds open at once; more are refused (503). Default 10.
        public var dashboardSessions = 10

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case enabled, host, port, token, dashboard
            case dashboardSessions = "dashboard_sessions"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Admin()
            enabled = try c.value(.enabled, default: d.enabled)
            host = try c.value(.host, default: d.host)
            port = try c.value(.port, default: d.port)
            token = try c.value(.token, default: d.token)
            dashboard = try c.value(.dashboard, default: d.dashboard)
            dashboardSessions = try c.value(.dashboardSessions, default: d.dashboardSessions)
        }
    }

    /// `listeners`: where the gateway accepts connections.
    public struct Listeners: Codable, Sendable, Equatable {
        /// `listeners.mqtt`: MQTT over TCP. Default enabled, 127.0.0.1:1883.
        public var mqtt = Listener(host: "127.0.0.1", port: 1883)
        /// `listeners.mqtts`: MQTT over TLS (needs `tls.cert_file` and `tls.key_file`). Default
        /// disabled, 127.0.0.1:8883.
        public var mqtts = Listener(enabled: false, host: "127.0.0.1", port: 8883)
        /// `listeners.ws`: WebSocket (MQTT over WebSocket at `websocket.mqtt_path`, the JSON API at
        /// `websocket.json_path`). Default enabled, 127.0.0.1:8083.
        public var ws = Listener(host: "127.0.0.1", port: 8083)
        /// `listeners.wss`: WebSocket over TLS, the same endpoints. Default disabled, 127.0.0.1:8084.
        public var wss = Listener(enabled: false, host: "127.0.0.1", port: 8084)
        /// `listeners.event_loops`: the event-loop threads that every connection (and the admin API) runs
        /// on; 0 (default): one per core. Start-up only.
        public var eventLoops = 0

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case mqtt, mqtts, ws, wss
            case eventLoops = "event_loops"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            eventLoops = try c.value(.eventLoops, default: 0)
            // Each listener has its own defaults: a partial entry (`ws: {port: 9000}`) keeps the rest.
            mqtt = try c.decodeIfPresent(Listener.Partial.self, forKey: .mqtt)?.applied(to: mqtt) ?? mqtt
            mqtts = try c.decodeIfPresent(Listener.Partial.self, forKey: .mqtts)?.applied(to: mqtts) ?? mqtts
            ws = try c.decodeIfPresent(Listener.Partial.self, forKey: .ws)?.applied(to: ws) ?? ws
            wss = try c.decodeIfPresent(Listener.Partial.self, forKey: .wss)?.applied(to: wss) ?? wss
        }
    }

    /// One listener: `enabled`, `host`, `port`.
    public struct Listener: Codable, Sendable, Equatable {
        public var enabled = true
        public var host: String
        public var port: Int

        public init(enabled: Bool = true, host: String, port: Int) {
            self.enabled = enabled
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

        /// A listener entry as written, before the listener's own defaults fill the gaps.
        struct Partial: Decodable {
            var enabled: Bool?
            var host: String?
            var port: Int?

            init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled)
                host = try c.decodeIfPresent(String.self, forKey: .host)
                port = try c.decodeIfPresent(Int.self, forKey: .port)
            }

            func applied(to listener: Listener) -> Listener {
                Listener(enabled: enabled ?? listener.enabled, host: host ?? listener.host, port: port ?? listener.port)
            }
        }
    }

    /// `tls`: the certificate of the `mqtts` and `wss` listeners and the client-certificate policy.
    public struct TLS: Codable, Sendable, Equatable {
        /// `tls.cert_file`: PEM server certificate (chain). Required when a TLS listener is enabled.
        public var certFile = ""
        /// `tls.key_file`: PEM private key of the certificate. Required when a TLS listener is enabled.
        public var keyFile = ""
        /// `tls.ca_file`: PEM CA certificates that sign client certificates; empty (the default)
        /// means client certificates are not requested.
        public var caFile = ""
        /// `tls.verify_client`: require a client certificate signed by `tls.ca_file` (mTLS). Default false.
        public var verifyClient = false
        /// `tls.use_cn_as_username`: the client certificate's subject CN replaces the CONNECT username,
        /// and the certificate (verified against `tls.ca_file`) authenticates the client: no password
        /// is needed. Default false.
        public var useCNAsUsername = false
        /// `tls.max_concurrent_handshakes`: TLS handshakes in progress at once; more are closed at accept.
        /// Default 1000.
        public var maxConcurrentHandshakes = 1_000
        /// `tls.handshake_timeout`: seconds a handshake may take. Default 10.
        public var handshakeTimeout = 10.0

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case certFile = "cert_file"
            case keyFile = "key_file"
            case caFile = "ca_file"
            case verifyClient = "verify_client"
            case useCNAsUsername = "use_cn_as_username"
            case maxConcurrentHandshakes = "max_concurrent_handshakes"
            case handshakeTimeout = "handshake_timeout"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = TLS()
            certFile = try c.value(.certFile, default: d.certFile)
            keyFile = try c.value(.keyFile, default: d.keyFile)
            caFile = try c.value(.caFile, default: d.caFile)
            verifyClient = try c.value(.verifyClient, default: d.verifyClient)
            maxConcurrentHandshakes = try c.value(.maxConcurrentHandshakes, default: d.maxConcurrentHandshakes)
            handshakeTimeout = try c.value(.handshakeTimeout, default: d.handshakeTimeout)
            useCNAsUsername = try c.value(.useCNAsUsername, default: d.useCNAsUsername)
        }
    }

    /// `websocket`: the endpoints and limits of the `ws` and `wss` listeners.
    public struct WebSocket: Codable, Sendable, Equatable {
        /// `websocket.mqtt_path`: MQTT over WebSocket (subprotocol `mqtt` or `mqttv3.1`). Default `/mqtt`.
        public var mqttPath = "/mqtt"
        /// `websocket.json_path`: the JSON API. Default `/ws`.
        public var jsonPath = "/ws"
        /// `websocket.echo_path`: an echo endpoint for RFC 6455 conformance tools; empty (the default)
        /// disables it.
        public var echoPath = ""
        /// `websocket.max_message_size`: largest message after reassembling fragments (bytes); larger
        /// ones close the connection with 1009. Default 1048576.
        public var maxMessageSize = 1_048_576
        /// `websocket.ping_interval`: seconds of silence before the server pings a client; a client
        /// silent for a second interval is disconnected. 0 disables. Default 30.
        public var pingInterval = 30.0
        /// `websocket.allowed_origins`: `Origin` values allowed to upgrade; empty (the default) allows
        /// any. Requests without `Origin` (non-browser clients) are always allowed.
        public var allowedOrigins: [String] = []
        /// `websocket.compression`: permessage-deflate (RFC 7692) per endpoint.
        public var compression = Compression()
        /// `websocket.compression_threshold`: messages sent of at least this many bytes are compressed
        /// (on connections that negotiated it); smaller ones go out as they are. Default 64.
        public var compressionThreshold = 64
        /// `websocket.compression_max_contexts`: connections that may keep zlib contexts between
        /// messages (context takeover, about 110 KiB each at most); past it new connections get
        /// `server_no_context_takeover` and `client_no_context_takeover` (contexts live for one message).
        /// 0: never. Default 1000.
        public var compressionMaxContexts = 1000

        /// `websocket.compression`: which endpoints accept permessage-deflate.
        public struct Compression: Codable, Sendable, Equatable {
            /// `websocket.compression.mqtt`. Default false (mostly small or binary payloads, many devices).
            public var mqtt = false
            /// `websocket.compression.json`. Default true (JSON shrinks several times; browsers offer it).
            public var json = true
            /// `websocket.compression.echo`. Default true (for conformance tools).
            public var echo = true

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case mqtt, json, echo
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                let d = Compression()
                mqtt = try c.value(.mqtt, default: d.mqtt)
                json = try c.value(.json, default: d.json)
                echo = try c.value(.echo, default: d.echo)
            }
        }

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case mqttPath = "mqtt_path"
            case jsonPath = "json_path"
            case echoPath = "echo_path"
            case maxMessageSize = "max_message_size"
            case pingInterval = "ping_interval"
            case allowedOrigins = "allowed_origins"
            case compression
            case compressionThreshold = "compression_threshold"
            case compressionMaxContexts = "compression_max_contexts"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = WebSocket()
            mqttPath = try c.value(.mqttPath, default: d.mqttPath)
            jsonPath = try c.value(.jsonPath, default: d.jsonPath)
            echoPath = try c.value(.echoPath, default: d.echoPath)
            maxMessageSize = try c.value(.maxMessageSize, default: d.maxMessageSize)
            pingInterval = try c.value(.pingInterval, default: d.pingInterval)
            allowedOrigins = try c.value(.allowedOrigins, default: d.allowedOrigins)
            compression = try c.value(.compression, default: d.compression)
            compressionThreshold = try c.value(.compressionThreshold, default: d.compressionThreshold)
            compressionMaxContexts = try c.value(.compressionMaxContexts, default: d.compressionMaxContexts)
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
        /// `limits.slow_consumer`: `backpressure`, `disconnect` or `drop`. Default backpressure.
        public var slowConsumer = "backpressure"
        /// `limits.slow_consumer_timeout`: seconds. Default 10.
        public var slowConsumerTimeout = 10.0
        /// `limits.qos0_when_full`: `drop` or `backpressure`. Default drop.
        public var qos0WhenFull = "drop"
        /// `limits.max_connections_per_address`: 0 is no limit. Default 0.
        public var maxConnectionsPerAddress = 0
        /// `limits.connect_rate_per_address`: CONNECTs per second; 0 is no limit. Default 0.
        public var connectRatePerAddress = 0.0
        /// `limits.connect_burst_per_address`. Default 20.
        public var connectBurstPerAddress = 20

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
            case slowConsumer = "slow_consumer"
            case slowConsumerTimeout = "slow_consumer_timeout"
            case qos0WhenFull = "qos0_when_full"
            case maxConnectionsPerAddress = "max_connections_per_address"
            case connectRatePerAddress = "connect_rate_per_address"
            case connectBurstPerAddress = "connect_burst_per_address"
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
            slowConsumer = try c.value(.slowConsumer, default: d.slowConsumer)
            slowConsumerTimeout = try c.value(.slowConsumerTimeout, default: d.slowConsumerTimeout)
            qos0WhenFull = try c.value(.qos0WhenFull, default: d.qos0WhenFull)
            maxConnectionsPerAddress = try c.value(.maxConnectionsPerAddress, default: d.maxConnectionsPerAddress)
            connectRatePerAddress = try c.value(.connectRatePerAddress, default: d.connectRatePerAddress)
            connectBurstPerAddress = try c.value(.connectBurstPerAddress, default: d.connectBurstPerAddress)
        }
    }

    /// `mqtt`: protocol features offered.
    public struct MQTT: Codable, Sendable, Equatable {
        /// `mqtt.max_qos`: the highest QoS granted (0, 1 or 2). Default 2.
        public var maxQoS = 2
        /// `mqtt.retain_available`: whether retained messages are kept. Default true.
        public var retainAvailable = true
        /// `mqtt.receive_maximum`: QoS 1/2 PUBLISHes a client may have unacknowledged towards the
        /// gateway (MQTT 5 Receive Maximum). Default 65535.
        public var receiveMaximum = 65_535
        /// `mqtt.topic_alias_maximum`: the highest topic alias MQTT 5 clients may use. Default 64.
        public var topicAliasMaximum = 64
        /// `mqtt.sys_interval`: seconds between `$SYS/broker/...` publications; 0 disables. Default 10.
        public var sysInterval = 10.0

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case maxQoS = "max_qos"
            case retainAvailable = "retain_available"
            case receiveMaximum = "receive_maximum"
            case topicAliasMaximum = "topic_alias_maximum"
            case sysInterval = "sys_interval"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = MQTT()
            maxQoS = try c.value(.maxQoS, default: d.maxQoS)
            retainAvailable = try c.value(.retainAvailable, default: d.retainAvailable)
            receiveMaximum = try c.value(.receiveMaximum, default: d.receiveMaximum)
            topicAliasMaximum = try c.value(.topicAliasMaximum, default: d.topicAliasMaximum)
            sysInterval = try c.value(.sysInterval, default: d.sysInterval)
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
    /// The formats `log.format` accepts.
    public static let logFormats = ["text", "json"]
    /// The most `listeners.event_loops` accepts (SwiftNIO's own bound on its singleton group is 1024).
    public static let maximumEventLoops = 256

    /// Checks value ranges; returns (key path, message) pairs for every problem found.
    public func validationErrors() -> [(key: String, message: String)] {
        var errors: [(String, String)] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { errors.append((key, message)) }
        }
        check(Self.logLevels.contains(log.level), "log.level", "'\(log.level)' is not one of \(Self.logLevels.joined(separator: ", "))")
        check(Self.logFormats.contains(log.format), "log.format", "'\(log.format)' is not one of \(Self.logFormats.joined(separator: ", "))")
        check((0...65535).contains(admin.port), "admin.port", "\(admin.port) is not a port number (0-65535)")
        check(!admin.host.isEmpty, "admin.host", "must not be empty")
        check(
            admin.token.unicodeScalars.allSatisfy { (0x21...0x7E).contains($0.value) },
            "admin.token",
            "must be printable ASCII without spaces (it is sent in an HTTP header)"
        )
        check((1...1000).contains(admin.dashboardSessions), "admin.dashboard_sessions", "\(admin.dashboardSessions) is not from 1 to 1000")
        for (name, listener) in [("mqtt", listeners.mqtt), ("mqtts", listeners.mqtts), ("ws", listeners.ws), ("wss", listeners.wss)] {
            check((0...65535).contains(listener.port), "listeners.\(name).port", "\(listener.port) is not a port number (0-65535)")
            check(!listener.host.isEmpty, "listeners.\(name).host", "must not be empty")
        }
        check(
            (0...Self.maximumEventLoops).contains(listeners.eventLoops),
            "listeners.event_loops",
            "\(listeners.eventLoops) is not from 0 (one per core) to \(Self.maximumEventLoops)"
        )
        if listeners.mqtts.enabled || listeners.wss.enabled {
            let which = listeners.mqtts.enabled ? "listeners.mqtts" : "listeners.wss"
            check(!tls.certFile.isEmpty, "tls.cert_file", "required when \(which) is enabled")
            check(!tls.keyFile.isEmpty, "tls.key_file", "required when \(which) is enabled")
        }
        check(!tls.verifyClient || !tls.caFile.isEmpty, "tls.ca_file", "required when tls.verify_client is true")
        for (key, path) in [("websocket.mqtt_path", websocket.mqttPath), ("websocket.json_path", websocket.jsonPath)] {
            check(path.hasPrefix("/"), key, "'\(path)' must start with /")
        }
        check(websocket.echoPath.isEmpty || websocket.echoPath.hasPrefix("/"), "websocket.echo_path", "'\(websocket.echoPath)' must be empty or start with /")
        let paths = [websocket.mqttPath, websocket.jsonPath] + (websocket.echoPath.isEmpty ? [] : [websocket.echoPath])
        check(Set(paths).count == paths.count, "websocket.json_path", "the WebSocket paths must differ from each other")
        check(
            (16...268_435_460).contains(websocket.maxMessageSize),
            "websocket.max_message_size",
            "\(websocket.maxMessageSize) is outside 16-268435460 bytes"
        )
        check(websocket.pingInterval >= 0, "websocket.ping_interval", "must not be negative")
        check(websocket.compressionThreshold >= 0, "websocket.compression_threshold", "must not be negative")
        check(websocket.compressionMaxContexts >= 0, "websocket.compression_max_contexts", "must not be negative (0: no context takeover)")
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
        check(
            SlowConsumerPolicy(rawValue: limits.slowConsumer) != nil,
            "limits.slow_consumer",
            "'\(limits.slowConsumer)' is not one of \(SlowConsumerPolicy.allCases.map(\.rawValue).joined(separator: ", "))"
        )
        check(limits.slowConsumerTimeout > 0, "limits.slow_consumer_timeout", "must be more than 0 seconds")
        check(tls.maxConcurrentHandshakes >= 1, "tls.max_concurrent_handshakes", "must be at least 1")
        check(tls.handshakeTimeout > 0, "tls.handshake_timeout", "must be more than 0 seconds")
        check(limits.maxConnectionsPerAddress >= 0, "limits.max_connections_per_address", "must not be negative (0: no limit)")
        check(limits.connectRatePerAddress >= 0, "limits.connect_rate_per_address", "must not be negative (0: no limit)")
        check(limits.connectBurstPerAddress >= 1, "limits.connect_burst_per_address", "must be at least 1")
        check(
            QoS0WhenFullPolicy(rawValue: limits.qos0WhenFull) != nil,
            "limits.qos0_when_full",
            "'\(limits.qos0WhenFull)' is not one of \(QoS0WhenFullPolicy.allCases.map(\.rawValue).joined(separator: ", "))"
        )
        check((0...2).contains(mqtt.maxQoS), "mqtt.max_qos", "\(mqtt.maxQoS) is not a QoS (0, 1 or 2)")
        check((1...65535).contains(mqtt.receiveMaximum), "mqtt.receive_maximum", "must be 1-65535")
        check((0...65535).contains(mqtt.topicAliasMaximum), "mqtt.topic_alias_maximum", "must be 0-65535")
        check(mqtt.sysInterval >= 0, "mqtt.sys_interval", "must not be negative")
        check(shutdown.timeout > 0, "shutdown.timeout", "must be more than 0 seconds")
        errors += storageValidationErrors()
        errors += authValidationErrors()
        errors += bridgeValidationErrors()
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
        c.slowConsumer = SlowConsumerPolicy(rawValue: limits.slowConsumer) ?? .backpressure
        c.slowConsumerTimeout = limits.slowConsumerTimeout
        c.qos0WhenFull = QoS0WhenFullPolicy(rawValue: limits.qos0WhenFull) ?? .drop
        c.maxConnectionsPerAddress = limits.maxConnectionsPerAddress
        c.connectRatePerAddress = limits.connectRatePerAddress
        c.connectBurstPerAddress = limits.connectBurstPerAddress
        c.maxQoS = mqtt.maxQoS
        c.retainAvailable = mqtt.retainAvailable
        c.receiveMaximum = mqtt.receiveMaximum
        c.topicAliasMaximum = mqtt.topicAliasMaximum
        c.sysInterval = mqtt.sysInterval
        c.allowAnonymous = auth.anonymous
        c.shutdownTimeout = shutdown.timeout
        return c
    }
}

import Foundation
import MQTTCodec

extension GatewayConfigFile {
    /// One entry of `bridges`: a connection to an upstream broker and the topics that cross it.
    public struct Bridge: Codable, Sendable, Equatable {
        /// `bridges[i].name`: identifies the bridge in logs, metrics (`bridge="NAME"`), readiness
        /// (`bridge:NAME`) and its internal session (`$bridge/NAME`). Required; letters, digits, `-`, `_`, `.`.
        public var name = ""
        /// `bridges[i].enabled`: whether the bridge runs. Default true.
        public var enabled = true
        /// `bridges[i].host`: the upstream broker's host name or address. Required.
        public var host = ""
        /// `bridges[i].port`: the upstream broker's port. Default 1883.
        public var port = 1883
        /// `bridges[i].client_id`: the client id used upstream; empty (the default) means `iotgw-NAME`.
        /// Give every gateway its own id (two bridges with one id take each other's session over).
        public var clientID = ""
        /// `bridges[i].protocol`: `mqttv311` or `mqttv5`. Default mqttv5 (No Local prevents echoes).
        public var protocolVersion = "mqttv5"
        /// `bridges[i].keep_alive`: seconds between pings to the upstream (5-65535). Default 60.
        public var keepAlive = 60
        /// `bridges[i].clean_session`: start a fresh upstream session on every connect. Default false:
        /// the upstream keeps the bridge's subscriptions and queues `in` messages while it is away.
        public var cleanSession = false
        /// `bridges[i].session_expiry`: seconds the upstream keeps the session (MQTT 5, when
        /// clean_session is false). Default 86400.
        public var sessionExpiry = 86_400
        /// `bridges[i].username`: empty (the default) sends none.
        public var username = ""
        /// `bridges[i].password`: needs `username`. Default empty.
        public var password = ""
        public var tls = TLS()
        /// `bridges[i].rules`: the topics that cross the bridge. At least one.
        public var rules: [Rule] = []
        public var queue = Queue()
        /// `bridges[i].max_inflight`: QoS 1/2 messages sent upstream and not yet acknowledged. Default 32.
        public var maxInflight = 32
        public var reconnect = Reconnect()
        /// `bridges[i].required_for_readiness`: whether `/readyz` fails while this bridge is not
        /// connected. Default false (devices keep publishing; messages wait in the bridge queue).
        public var requiredForReadiness = false

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case name, enabled, host, port, username, password, tls, rules, queue, reconnect
            case clientID = "client_id"
            case protocolVersion = "protocol"
            case keepAlive = "keep_alive"
            case cleanSession = "clean_session"
            case sessionExpiry = "session_expiry"
            case maxInflight = "max_inflight"
            case requiredForReadiness = "required_for_readiness"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Bridge()
            name = try c.value(.name, default: d.name)
            enabled = try c.value(.enabled, default: d.enabled)
            host = try c.value(.host, default: d.host)
            port = try c.value(.port, default: d.port)
            clientID = try c.value(.clientID, default: d.clientID)
            protocolVersion = try c.value(.protocolVersion, default: d.protocolVersion)
            keepAlive = try c.value(.keepAlive, default: d.keepAlive)
            cleanSession = try c.value(.cleanSession, default: d.cleanSession)
            sessionExpiry = try c.value(.sessionExpiry, default: d.sessionExpiry)
            username = try c.value(.username, default: d.username)
            password = try c.value(.password, default: d.password)
            tls = try c.value(.tls, default: d.tls)
            rules = try c.value(.rules, default: d.rules)
            queue = try c.value(.queue, default: d.queue)
            maxInflight = try c.value(.maxInflight, default: d.maxInflight)
            reconnect = try c.value(.reconnect, default: d.reconnect)
            requiredForReadiness = try c.value(.requiredForReadiness, default: d.requiredForReadiness)
        }

        /// The upstream client id: `client_id`, or `iotgw-NAME` when empty.
        public var effectiveClientID: String { clientID.isEmpty ? "iotgw-\(name)" : clientID }

        /// `bridges[i].tls`: TLS towards the upstream.
        public struct TLS: Codable, Sendable, Equatable {
            /// `bridges[i].tls.enabled`: connect with TLS. Default false.
            public var enabled = false
            /// `bridges[i].tls.ca_file`: PEM CA certificates that sign the upstream's certificate; empty
            /// (the default) uses the system's trusted certificates.
            public var caFile = ""
            /// `bridges[i].tls.cert_file`: PEM client certificate (mutual TLS); needs `key_file`. Default empty.
            public var certFile = ""
            /// `bridges[i].tls.key_file`: PEM private key of `cert_file`. Default empty.
            public var keyFile = ""
            /// `bridges[i].tls.insecure`: do not check that the certificate names `host` (tests only).
            /// Default false.
            public var insecure = false

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case enabled, insecure
                case caFile = "ca_file"
                case certFile = "cert_file"
                case keyFile = "key_file"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                let d = TLS()
                enabled = try c.value(.enabled, default: d.enabled)
                caFile = try c.value(.caFile, default: d.caFile)
                certFile = try c.value(.certFile, default: d.certFile)
                keyFile = try c.value(.keyFile, default: d.keyFile)
                insecure = try c.value(.insecure, default: d.insecure)
            }
        }

        /// One entry of `bridges[i].rules`, as in mosquitto's `topic PATTERN DIRECTION QOS LOCAL REMOTE`:
        /// the local side sees `local_prefix + topic`, the upstream `remote_prefix + topic`.
        public struct Rule: Codable, Sendable, Equatable {
            /// `rules[j].topic`: the topic filter between the prefixes (wildcards allowed). Required.
            public var topic = ""
            /// `rules[j].direction`: `out` (gateway → upstream), `in` (upstream → gateway) or `both`. Default out.
            public var direction = "out"
            /// `rules[j].qos`: the highest QoS of the subscriptions on both sides (0-2). Default 1.
            public var qos = 1
            /// `rules[j].local_prefix`: prepended to `topic` on the gateway. Default empty.
            public var localPrefix = ""
            /// `rules[j].remote_prefix`: prepended to `topic` upstream. Default empty.
            public var remotePrefix = ""

            public init() {}
            public init(topic: String, direction: String, qos: Int = 1, localPrefix: String = "", remotePrefix: String = "") {
                self.topic = topic
                self.direction = direction
                self.qos = qos
                self.localPrefix = localPrefix
                self.remotePrefix = remotePrefix
            }
            enum CodingKeys: String, CodingKey, CaseIterable {
                case topic, direction, qos
                case localPrefix = "local_prefix"
                case remotePrefix = "remote_prefix"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                let d = Rule()
                topic = try c.value(.topic, default: d.topic)
                direction = try c.value(.direction, default: d.direction)
                qos = try c.value(.qos, default: d.qos)
                localPrefix = try c.value(.localPrefix, default: d.localPrefix)
                remotePrefix = try c.value(.remotePrefix, default: d.remotePrefix)
            }
        }

        /// `bridges[i].queue`: the store-and-forward queue (the bridge's internal session).
        public typealias Queue = GatewayConfigFile.QueueBounds

        /// `bridges[i].reconnect`: exponential backoff with jitter between connection attempts.
        public struct Reconnect: Codable, Sendable, Equatable {
            /// `bridges[i].reconnect.initial_delay`: seconds before the first retry. Default 0.5.
            public var initialDelay = 0.5
            /// `bridges[i].reconnect.max_delay`: the cap of the doubling delay, in seconds. Default 30.
            public var maxDelay = 30.0

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case initialDelay = "initial_delay"
                case maxDelay = "max_delay"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                let d = Reconnect()
                initialDelay = try c.value(.initialDelay, default: d.initialDelay)
                maxDelay = try c.value(.maxDelay, default: d.maxDelay)
            }
        }
    }

    /// The rule directions `bridges[i].rules[j].direction` accepts.
    public static let bridgeDirections = ["out", "in", "both"]
    /// The values `bridges[i].protocol` accepts.
    public static let bridgeProtocols = ["mqttv311", "mqttv5"]

    /// Range and value checks of `bridges`.
    func bridgeValidationErrors() -> [(key: String, message: String)] {
        var errors: [(String, String)] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { errors.append((key, message)) }
        }
        var names: Set<String> = []
        for (index, bridge) in bridges.enumerated() {
            let key = "bridges[\(index)]"
            let nameOK =
                !bridge.name.isEmpty && bridge.name.utf8.count <= 64
                && bridge.name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }
            check(nameOK, "\(key).name", bridge.name.isEmpty ? "required" : "'\(bridge.name)' must be 1-64 letters, digits, '-', '_' or '.'")
            check(names.insert(bridge.name).inserted || bridge.name.isEmpty, "\(key).name", "'\(bridge.name)' is used by an earlier bridge")
            check(!bridge.host.isEmpty, "\(key).host", "required")
            check((1...65535).contains(bridge.port), "\(key).port", "\(bridge.port) is not a port number (1-65535)")
            check(bridge.effectiveClientID.utf8.count <= 65535 && !bridge.effectiveClientID.contains("\u{0}"), "\(key).client_id", "is not a valid client id")
            check(Self.bridgeProtocols.contains(bridge.protocolVersion), "\(key).protocol", "'\(bridge.protocolVersion)' is not one of \(Self.bridgeProtocols.joined(separator: ", "))")
            check((5...65535).contains(bridge.keepAlive), "\(key).keep_alive", "must be 5-65535 seconds")
            check(bridge.sessionExpiry >= 0 && UInt64(bridge.sessionExpiry) <= UInt64(UInt32.max), "\(key).session_expiry", "must be 0-4294967295 seconds")
            check(bridge.password.isEmpty || !bridge.username.isEmpty, "\(key).password", "needs bridges[\(index)].username")
            check(bridge.tls.certFile.isEmpty == bridge.tls.keyFile.isEmpty, bridge.tls.certFile.isEmpty ? "\(key).tls.cert_file" : "\(key).tls.key_file", "cert_file and key_file go together")
            check(
                bridge.tls.enabled || (bridge.tls.caFile.isEmpty && bridge.tls.certFile.isEmpty && bridge.tls.keyFile.isEmpty),
                "\(key).tls.enabled",
                "must be true when TLS files are set"
            )
            check(!bridge.rules.isEmpty, "\(key).rules", "at least one rule is required")
            for (ruleIndex, rule) in bridge.rules.enumerated() {
                let ruleKey = "\(key).rules[\(ruleIndex)]"
                check(Self.bridgeDirections.contains(rule.direction), "\(ruleKey).direction", "'\(rule.direction)' is not one of \(Self.bridgeDirections.joined(separator: ", "))")
                check((0...2).contains(rule.qos), "\(ruleKey).qos", "\(rule.qos) is not a QoS (0, 1 or 2)")
                check(MQTTTopic.isValidFilter(rule.topic) && MQTTTopic.parseShared(rule.topic) == nil, "\(ruleKey).topic", rule.topic.isEmpty ? "required" : "'\(rule.topic)' is not a valid topic filter")
                for (prefixKey, prefix) in [("local_prefix", rule.localPrefix), ("remote_prefix", rule.remotePrefix)] {
                    check(
                        !prefix.contains("+") && !prefix.contains("#") && !prefix.hasPrefix("$share/"),
                        "\(ruleKey).\(prefixKey)",
                        "'\(prefix)' must not contain wildcards"
                    )
                }
            }
            check(bridge.queue.maxMessages >= bridge.maxInflight, "\(key).queue.max_messages", "must be at least bridges[\(index)].max_inflight (\(bridge.maxInflight))")
            check(bridge.queue.maxBytes >= 1024, "\(key).queue.max_bytes", "must be at least 1024")
            check((1...65535).contains(bridge.maxInflight), "\(key).max_inflight", "must be 1-65535")
            check(bridge.reconnect.initialDelay > 0, "\(key).reconnect.initial_delay", "must be more than 0 seconds")
            check(bridge.reconnect.maxDelay >= bridge.reconnect.initialDelay, "\(key).reconnect.max_delay", "must be at least reconnect.initial_delay")
        }
        return errors
    }

    /// Checks that the TLS files of every enabled bridge exist and hold PEM data, naming the key of the
    /// first one that does not. Reads files: `check-config` skips it with `--skip-tls-files`.
    /// - Parameter path: the configuration file, for the error.
    public func checkBridgeTLSFiles(path: String) throws(ConfigError) {
        for (index, bridge) in bridges.enumerated() where bridge.enabled && bridge.tls.enabled {
            for (key, file) in [("ca_file", bridge.tls.caFile), ("cert_file", bridge.tls.certFile), ("key_file", bridge.tls.keyFile)] where !file.isEmpty {
                let fullKey = "bridges[\(index)].tls.\(key)"
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw ConfigError(file: path, key: fullKey, message: "cannot read '\(file)'")
                }
                guard String(decoding: data, as: UTF8.self).contains("-----BEGIN ") else {
                    throw ConfigError(file: path, key: fullKey, message: "'\(file)' is not a PEM file")
                }
            }
        }
    }
}

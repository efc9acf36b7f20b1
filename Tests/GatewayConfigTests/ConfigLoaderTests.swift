import Foundation
import GatewayConfig
import GatewayCore
import Testing

/// The repository root, found from this file's path (Tests/GatewayConfigTests/ConfigLoaderTests.swift).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

@Suite("Configuration loading")
struct ConfigLoaderTests {
    @Test("the shipped YAML and JSON defaults load to the same value, equal to the built-in defaults")
    func shippedDefaultsAgree() throws {
        let yaml = try ConfigLoader.load(path: repositoryRoot.appendingPathComponent("Configs/iotgw.yaml").path)
        let json = try ConfigLoader.load(path: repositoryRoot.appendingPathComponent("Configs/iotgw.json").path)
        #expect(yaml == json)
        #expect(yaml == GatewayConfigFile())
        #expect(yaml.brokerConfiguration == BrokerConfiguration())
    }

    @Test("an empty YAML file means every default")
    func emptyYAML() throws {
        #expect(try ConfigLoader.decode("# nothing here\n", path: "empty.yaml") == GatewayConfigFile())
    }

    @Test("values are read from YAML and mapped onto the broker configuration")
    func valuesAreRead() throws {
        let config = try ConfigLoader.decode(
            """
            listeners:
              mqtt:
                host: 0.0.0.0
                port: 11883
              event_loops: 3
            limits:
              max_inflight: 8
              max_queued_messages: 50
              connect_timeout: 2.5
            mqtt:
              max_qos: 1
            auth:
              anonymous: false
              backend: database
            """,
            path: "custom.yaml"
        )
        #expect(config.listeners.mqtt.host == "0.0.0.0")
        #expect(config.listeners.mqtt.port == 11883)
        #expect(config.listeners.eventLoops == 3)
        #expect(GatewayConfigFile().listeners.eventLoops == 0)
        let broker = config.brokerConfiguration
        #expect(broker.maxInflight == 8)
        #expect(broker.maxQueuedMessages == 50)
        #expect(broker.connectTimeout == 2.5)
        #expect(broker.maxQoS == 1)
        #expect(broker.allowAnonymous == false)
    }

    @Test(
        "bad files are rejected with the file, the key path and the reason",
        arguments: [
            ("bad.yaml", "listeners:\n  mqtt:\n    port: 70000\n", "listeners.mqtt.port", "not a port number"),
            ("bad.yaml", "listeners:\n  mqtt:\n    port: abc\n", "listeners.mqtt.port", "expected an integer"),
            // YAML 1.1 base-60 forms are not numbers here (Fuzz/Regressions/config/config-crash-cdbe6db...:
            // Yams' own reading of this one overflows and traps).
            ("bad.yaml", "listeners:\n  mqtt:\n    port: +8888888888888888:88888:88888\n", "listeners.mqtt.port", "expected an integer"),
            ("bad.yaml", "listeners:\n  mqtt:\n    port: 1:30\n", "listeners.mqtt.port", "expected an integer"),
            ("bad.yaml", "shutdown:\n  timeout: 1:30.5\n", "shutdown.timeout", "expected a number"),
            ("bad.yaml", "limits:\n  max_conections: 5\n", "limits.max_conections", "unknown key"),
            ("bad.yaml", "colour: blue\n", "colour", "unknown key"),
            ("bad.yaml", "listeners:\n  event_loops: -1\n", "listeners.event_loops", "not from 0 (one per core) to 256"),
            ("bad.yaml", "listeners:\n  event_loops: 257\n", "listeners.event_loops", "not from 0 (one per core) to 256"),
            ("bad.yaml", "listeners:\n  event_loops: two\n", "listeners.event_loops", "expected an integer"),
            ("bad.yaml", "mqtt:\n  max_qos: 3\n", "mqtt.max_qos", "not a QoS"),
            ("bad.yaml", "log:\n  level: loud\n", "log.level", "not one of"),
            ("bad.yaml", "auth:\n  anonymous: maybe\n", "auth.anonymous", "true or false"),
            ("bad.yaml", "limits:\n  max_inflight: 100\n  max_queued_messages: 10\n", "limits.max_queued_messages", "at least"),
            ("bad.json", #"{"listeners": {"mqtt": {"port": "1883"}}}"#, "listeners.mqtt.port", "expected an integer"),
            ("bad.json", #"{"shutdown": {"timeout": 0}}"#, "shutdown.timeout", "more than 0"),
            ("bad.yaml", "storage:\n  backend: mysql\n", "storage.backend", "not one of sqlite, postgres"),
            ("bad.yaml", "storage:\n  backend: postgres\n", "storage.postgres.database", "is required"),
            ("bad.yaml", "storage:\n  postgres:\n    tls: verify-full\n", "storage.postgres.tls", "not one of disable, prefer, require"),
            ("bad.yaml", "storage:\n  postgres:\n    port: 0\n", "storage.postgres.port", "1-65535"),
            ("bad.yaml", "storage:\n  postgres:\n    connect_timeout: 0\n", "storage.postgres.connect_timeout", "more than 0"),
            ("bad.yaml", "storage:\n  postgres:\n    dsn: x\n", "storage.postgres.dsn", "unknown key"),
            (
                "bad.yaml", "storage:\n  backend: postgres\n  postgres:\n    database: d\n    password: p\n    password_file: /f\n",
                "storage.postgres.password_file", "not both"
            ),
            ("bad.yaml", "auth:\n  anonymous: false\n", "auth.backend", "would refuse every client"),
            ("bad.yaml", "auth:\n  backend: ldap\n", "auth.backend", "not one of none, database"),
            ("bad.yaml", "auth:\n  cache_ttl: -1\n", "auth.cache_ttl", "0-86400"),
            (
                "bad.json",
                #"{"auth": {"acl": [{"permission": "allow", "access": "read", "topic": "a/#"}, {"permission": "allow", "access": "read", "topic": "b"}, {"permission": "allow", "access": "write", "topic": "a/#/b"}]}}"#,
                "auth.acl[2].topic", "not a valid topic filter"
            ),
            ("bad.json", #"{"auth": {"acl": [{"permission": "maybe", "access": "read", "topic": "a"}]}}"#, "auth.acl[0].permission", "allow, deny"),
            ("bad.json", #"{"auth": {"acl": [{"permission": "deny", "access": "subscribe", "topic": "a"}]}}"#, "auth.acl[0].access", "read (subscribe)"),
            ("bad.json", #"{"auth": {"acl": [{"permission": "deny", "access": "read", "topic": "a/%x"}]}}"#, "auth.acl[0].topic", "only %u"),
            ("bad.json", #"{"auth": {"acl": [{"permission": "deny", "access": "read"}]}}"#, "auth.acl[0].topic", "missing"),
            ("bad.json", #"{"auth": {"acl": [{"permission": "deny", "access": "read", "topic": "a", "user": "x"}]}}"#, "auth.acl[0].user", "unknown key"),
            ("bad.yaml", "auth:\n  acl:\n    - permission: allow\n      access: read\n      topic: \"$share/g/a\"\n", "auth.acl[0].topic", "$share"),
        ]
    )
    func rejected(file: String, text: String, key: String, reason: String) {
        do {
            _ = try ConfigLoader.decode(text, path: file)
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.file == file)
            #expect(error.key == key)
            #expect(error.message.contains(reason), "message: \(error.message)")
            #expect(error.description.hasPrefix("\(file): \(key): "))
        }
    }

    @Test("storage.postgres is read with its defaults filled in")
    func postgresSection() throws {
        let config = try ConfigLoader.decode(
            """
            storage:
              backend: postgres
              postgres:
                host: db.example
                database: telemetry
                tls: require
              pool:
                size: 6
            """,
            path: "pg.yaml"
        )
        #expect(config.storage.backend == "postgres")
        #expect(config.storage.postgres.host == "db.example")
        #expect(config.storage.postgres.port == 5432)
        #expect(config.storage.postgres.user == "iotgw")
        #expect(config.storage.postgres.database == "telemetry")
        #expect(config.storage.postgres.tls == "require")
        #expect(config.storage.postgres.connectTimeout == 10)
        #expect(config.storage.pool.size == 6)
    }

    @Test("auth.acl maps onto ordered core rules")
    func aclRules() throws {
        let config = try ConfigLoader.decode(
            """
            auth:
              backend: database
              anonymous: false
              cache_ttl: 10
              acl:
                - permission: deny
                  access: write
                  topic: "devices/%u/firmware"
                - permission: allow
                  access: readwrite
                  topic: "devices/%u/#"
                - permission: allow
                  access: read
                  topic: "$SYS/#"
                  username: admin
                  clientid: console
            """,
            path: "acl.yaml"
        )
        #expect(config.auth.cacheTTL == 10)
        #expect(
            config.aclRules == [
                ACLRule(permission: .deny, access: .write, topic: "devices/%u/firmware"),
                ACLRule(permission: .allow, access: .readwrite, topic: "devices/%u/#"),
                ACLRule(permission: .allow, access: .read, topic: "$SYS/#", username: "admin", clientID: "console"),
            ]
        )
        let authorizer = config.authorizer
        #expect(authorizer.isAllowed(.publish, topic: "devices/alice/t", clientID: "x", username: "alice"))
        #expect(!authorizer.isAllowed(.publish, topic: "devices/alice/firmware", clientID: "x", username: "alice"))
        #expect(authorizer.isAllowed(.subscribe, topic: "$SYS/#", clientID: "console", username: "admin"))
        #expect(!authorizer.isAllowed(.subscribe, topic: "$SYS/#", clientID: "other", username: "admin"))
    }

    @Test("a plain YAML scalar with a colon is read as text, unchanged")
    func colonScalarsStayText() throws {
        let config = try ConfigLoader.decode("listeners:\n  mqtt:\n    host: fe80::1\n  ws:\n    host: 1:30\n", path: "x.yaml")
        #expect(config.listeners.mqtt.host == "fe80::1")
        #expect(config.listeners.ws.host == "1:30")
    }

    @Test("a document whose aliases expand past the node limit is refused, not expanded")
    func aliasBomb() throws {
        // Ten levels of ten aliases each: 10^10 nodes if expanded, a few hundred bytes as text.
        var text = "a: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
        for level in 1...9 {
            let previous = "*l\(level - 1)"
            text += "b\(level): &l\(level) [" + Array(repeating: previous, count: 10).joined(separator: ", ") + "]\n"
        }
        do {
            _ = try ConfigLoader.decode(text, path: "bomb.yaml")
            Issue.record("accepted")
        } catch {
            #expect(error.file == "bomb.yaml")
            #expect(error.message.contains("more than 100000 YAML nodes"), "message: \(error.message)")
        }
    }

    @Test("syntax errors and unknown extensions name the file")
    func unparsable() {
        #expect(throws: ConfigError.self) { try ConfigLoader.decode("{not json", path: "x.json") }
        #expect(throws: ConfigError.self) { try ConfigLoader.decode("a: [1, 2", path: "x.yaml") }
        #expect(throws: ConfigError.self) { try ConfigLoader.decode("a = 1", path: "x.toml") }
        #expect(throws: ConfigError.self) { try ConfigLoader.load(path: "/nonexistent/iotgw.yaml") }
    }
}

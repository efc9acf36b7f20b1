import GatewayConfig
import Testing

@Suite("Bridge configuration")
struct BridgeConfigTests {
    private func decodeError(_ text: String, path: String = "bridge.yaml") -> ConfigError? {
        do {
            _ = try ConfigLoader.decode(text, path: path)
            return nil
        } catch {
            return error
        }
    }

    @Test("a bridge is read with its defaults")
    func defaults() throws {
        let config = try ConfigLoader.decode(
            """
            bridges:
              - name: upstream
                host: 127.0.0.1
                port: 1884
                rules:
                  - {topic: "devices/#", direction: out, qos: 1}
                  - {topic: "commands/#", direction: in, qos: 1, local_prefix: "down/", remote_prefix: "gw1/"}
            """,
            path: "bridge.yaml"
        )
        let bridge = try #require(config.bridges.first)
        #expect(bridge.name == "upstream")
        #expect(bridge.port == 1884)
        #expect(bridge.effectiveClientID == "iotgw-upstream")
        #expect(bridge.protocolVersion == "mqttv5")
        #expect(bridge.cleanSession == false)
        #expect(bridge.requiredForReadiness == false)
        #expect(bridge.queue.maxMessages == 10_000)
        #expect(bridge.rules.count == 2)
        #expect(bridge.rules[1].localPrefix == "down/")
        #expect(bridge.rules[1].remotePrefix == "gw1/")
    }

    @Test("bad values name their key", arguments: [
        ("bridges:\n  - {name: up, host: h, rules: [{topic: 'a/#', direction: sideways}]}", "bridges[0].rules[0].direction"),
        ("bridges:\n  - {name: up, host: h, rules: [{topic: 'a/#'}, {topic: 'a/#/b'}]}", "bridges[0].rules[1].topic"),
        ("bridges:\n  - {name: up, host: h, rules: [{topic: 'a/#', qos: 3}]}", "bridges[0].rules[0].qos"),
        ("bridges:\n  - {name: up, host: h, rules: [{topic: 'a/#', remote_prefix: 'x/+/'}]}", "bridges[0].rules[0].remote_prefix"),
        ("bridges:\n  - {name: up, host: h, rules: []}", "bridges[0].rules"),
        ("bridges:\n  - {name: up, rules: [{topic: 'a'}]}", "bridges[0].host"),
        ("bridges:\n  - {host: h, rules: [{topic: 'a'}]}", "bridges[0].name"),
        ("bridges:\n  - {name: 'a b', host: h, rules: [{topic: 'a'}]}", "bridges[0].name"),
        ("bridges:\n  - {name: up, host: h, protocol: mqttv4, rules: [{topic: 'a'}]}", "bridges[0].protocol"),
        ("bridges:\n  - {name: up, host: h, keep_alive: 1, rules: [{topic: 'a'}]}", "bridges[0].keep_alive"),
        ("bridges:\n  - {name: up, host: h, password: p, rules: [{topic: 'a'}]}", "bridges[0].password"),
        ("bridges:\n  - {name: up, host: h, tls: {cert_file: c.pem}, rules: [{topic: 'a'}]}", "bridges[0].tls.key_file"),
        ("bridges:\n  - {name: up, host: h, reconnect: {initial_delay: 5, max_delay: 1}, rules: [{topic: 'a'}]}", "bridges[0].reconnect.max_delay"),
        ("bridges:\n  - {name: up, host: h, rules: [{topic: 'a'}]}\n  - {name: up, host: h, rules: [{topic: 'a'}]}", "bridges[1].name"),
        ("bridges:\n  - {name: up, host: h, colour: red, rules: [{topic: 'a'}]}", "bridges[0].colour"),
        ("bridges:\n  - {name: up, host: h, rules: [{topic: 'a', prefix: x}]}", "bridges[0].rules[0].prefix"),
    ])
    func badValues(text: String, key: String) {
        let error = decodeError(text)
        #expect(error?.key == key, "\(text): \(error.map { "\($0)" } ?? "accepted")")
    }

    @Test("TLS files are read: a missing CA file names its key")
    func missingCAFile() throws {
        let config = try ConfigLoader.decode(
            "bridges:\n  - {name: up, host: h, tls: {enabled: true, ca_file: /nonexistent/ca.pem}, rules: [{topic: 'a'}]}",
            path: "bridge.yaml"
        )
        #expect(throws: ConfigError.self) { try config.checkBridgeTLSFiles(path: "bridge.yaml") }
        do {
            try config.checkBridgeTLSFiles(path: "bridge.yaml")
        } catch {
            #expect(error.key == "bridges[0].tls.ca_file")
        }
    }
}

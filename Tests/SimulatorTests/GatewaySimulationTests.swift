import Foundation
import Logging
import Testing

@testable import Simulator

/// The simulator against iotgw itself: libmosquitto devices on its MQTT listener, libwebsockets devices on its real
/// WebSocket listener (MQTT over WebSocket on `/mqtt` and the JSON API on `/ws`). Each test starts its own gateway
/// process on free loopback ports and stops it before returning.
@Suite(.serialized, .enabled(if: TestGateway.executable != nil, "iotgw not built: run swift build first or set IOTGW_BIN"))
struct GatewaySimulationTests {
    let logger = Logger(label: "simulator-tests")

    /// The invariants every report keeps, whatever the scenario.
    private func expectConsistent(_ report: SimulationReport) {
        #expect(report.messages.expected == report.messages.delivered + report.messages.lost)
        #expect(report.requests.sent == report.requests.answered + report.requests.lost)
        #expect(report.latency.count == report.messages.delivered)
        #expect(report.messages.streams > 0)
        #expect(report.clients.ready + report.clients.connectFailures <= report.clients.planned)
        if report.latency.count > 0 {
            #expect(report.latency.min <= report.latency.p50)
            #expect(report.latency.p50 <= report.latency.p90 && report.latency.p90 <= report.latency.p99)
            #expect(report.latency.p99 <= report.latency.p999 && report.latency.p999 <= report.latency.max)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func mqttAndWebSocketDevicesLoseNothingAtQoS1() async throws {
        let gateway = try await TestGateway.start()
        defer { gateway.stop() }

        // 500 MQTT devices, 100 MQTT-over-WebSocket and 100 JSON API devices publish at QoS 1 into two MQTT
        // consumers; a controller sends requests that devices of every transport answer.
        var scenario = Scenario(name: "iotgw-mixed")
        scenario.devices = .init(mqtt: 500, wsMQTT: 100, wsJSON: 100)
        scenario.connect.rate = 1000
        scenario.publish = .init(rate: 2, qos: 1)
        scenario.consumers = .init(count: 2, transport: .mqtt, filter: "devices/+/telemetry", qos: 1)
        scenario.requests = .init(rate: 50, qos: 1)
        scenario.protocolVersion = .v5
        scenario.duration = .seconds(3)
        scenario.drain = .lossTestDrain
        let target = Simulation.Target(mqttPort: gateway.mqttPort, webSocketPort: gateway.webSocketPort)
        let report = try await Simulation(scenario: scenario, target: target, logger: logger).run()
        print(report)

        #expect(report.passed, "\(report.failures)")
        #expect(report.clients.planned == 703)
        #expect(report.clients.byTransport == ["mqtt": 503, "ws-mqtt": 100, "ws-json": 100])
        #expect(report.clients.ready == 703)
        #expect(report.clients.connectFailures == 0)
        #expect(report.clients.disconnects == 0)
        #expect(report.messages.published >= 3_000)
        #expect(report.messages.publishErrors == 0)
        #expect(report.messages.streams == 1_400)
        #expect(report.messages.expected == report.messages.published * 2)
        #expect(report.messages.lost == 0)
        #expect(report.messages.unexpected == 0)
        #expect(report.messages.acknowledged == report.messages.published)
        #expect(report.requests.sent >= 100)
        #expect(report.requests.lost == 0)
        expectConsistent(report)
    }

    @Test(.timeLimit(.minutes(2)), arguments: [Scenario.Transport.wsJSON, .wsMQTT])
    func webSocketConsumersReceiveEverything(consumers transport: Scenario.Transport) async throws {
        let gateway = try await TestGateway.start()
        defer { gateway.stop() }

        // Devices of every transport into WebSocket consumers: what MQTT publishers send reaches JSON API clients
        // as `{"op":"message",...}` pushes (and MQTT-over-WebSocket clients as PUBLISH) without loss.
        var scenario = Scenario(name: "iotgw-\(transport.rawValue)-consumers")
        scenario.devices = .init(mqtt: 200, wsMQTT: 50, wsJSON: 50)
        scenario.connect.rate = 1000
        scenario.publish = .init(rate: 2, qos: 1, payload: .template(#"{"device":"{id}","temperature":21.5,"n":{seq}}"#))
        scenario.consumers = .init(count: 2, transport: transport, filter: "devices/#", qos: 1)
        scenario.duration = .seconds(3)
        scenario.drain = .lossTestDrain
        let target = Simulation.Target(mqttPort: gateway.mqttPort, webSocketPort: gateway.webSocketPort)
        let report = try await Simulation(scenario: scenario, target: target, logger: logger).run()
        print(report)

        #expect(report.passed, "\(report.failures)")
        #expect(report.clients.ready == 302)
        #expect(report.messages.streams == 600)
        #expect(report.messages.published >= 1_000)
        #expect(report.messages.expected == report.messages.published * 2)
        #expect(report.messages.lost == 0)
        #expect(report.messages.duplicates == 0)
        #expect(report.messages.unexpected == 0)
        #expect(report.messages.acknowledged == report.messages.published)
        expectConsistent(report)
    }

    @Test(.timeLimit(.minutes(2)))
    func simulateCommandPrintsACompleteJSONReport() async throws {
        let gateway = try await TestGateway.start()
        defer { gateway.stop() }
        let executable = try #require(TestGateway.executable)

        // `iotgw simulate --json` as a user runs it, on the shipped smoke scenario plus WebSocket devices.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [
            "simulate", "--scenario", TestGateway.packageRoot.appendingPathComponent("Configs/scenarios/smoke.yaml").path,
            "--port", "\(gateway.mqttPort)", "--ws-port", "\(gateway.webSocketPort)",
            "--ws-devices", "10", "--json-devices", "10", "--duration", "2s", "--json", "--quiet",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { process.stop() }
        // Read to the end (the child exits after printing), then wait for the exit status.
        let data = await Task.detached { output.fileHandleForReading.readDataToEndOfFile() }.value
        for _ in 0..<500 where process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        #expect(process.terminationStatus == 0)

        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for key in ["scenario", "protocolVersion", "passed", "failures", "clients", "messages", "latency", "requests"] {
            #expect(object[key] != nil, "missing \(key)")
        }
        let messages = try #require(object["messages"] as? [String: Any])
        for key in ["published", "publishErrors", "acknowledged", "streams", "expected", "delivered", "lost", "duplicates",
                    "unexpected", "lossRatio", "publishRate", "deliveryRate"] {
            #expect(messages[key] != nil, "missing messages.\(key)")
        }
        let latency = try #require(object["latency"] as? [String: Any])
        for key in ["count", "p50", "p90", "p99", "p999", "max"] { #expect(latency[key] != nil, "missing latency.\(key)") }

        // The same report decodes into the type, and its figures add up.
        let report = try JSONDecoder().decode(SimulationReport.self, from: data)
        #expect(report.scenario == "smoke")
        #expect(report.passed)
        #expect(report.clients.byTransport == ["mqtt": 22, "ws-mqtt": 10, "ws-json": 10])
        #expect(report.messages.lost == 0)
        #expect(report.messages.published > 0)
        expectConsistent(report)
    }
}

import Foundation
import Logging
import Testing

@testable import Simulator

/// The simulator against a real mosquitto broker on loopback: every run is an interoperability check of libmosquitto
/// (and of our own WebSocket MQTT client, through the relay in `WebSocketSimulationTests`).
@Suite(.serialized, .enabled(if: TestBroker.executable != nil, "mosquitto not found: set MOSQUITTO_BIN or install the mosquitto package"))
struct MosquittoSimulationTests {
    let logger = Logger(label: "simulator-tests")

    @Test(.timeLimit(.minutes(2)))
    func fiveHundredDevicesAtQoS1LoseNothing() async throws {
        let broker = try await TestBroker.start()
        defer { broker.stop() }
        var scenario = Scenario(name: "qos1-500")
        scenario.devices = .init(mqtt: 500)
        scenario.connect.rate = 1000
        scenario.publish = .init(rate: 10, qos: 1)
        scenario.consumers = .init(count: 2, filter: "devices/+/telemetry", qos: 1)
        scenario.duration = .seconds(3)
        scenario.drain = .lossTestDrain
        let simulation = Simulation(scenario: scenario, target: .init(mqttPort: broker.port), logger: logger)
        let report = try await simulation.run()
        print(report)

        #expect(report.passed, "\(report.failures)")
        #expect(report.clients.planned == 502)
        #expect(report.clients.ready == 502)
        #expect(report.clients.connectFailures == 0)
        #expect(report.messages.published > 10_000)
        #expect(report.messages.streams == 1000)
        #expect(report.messages.expected == report.messages.published * 2)
        #expect(report.messages.expected == report.messages.delivered + report.messages.lost)
        #expect(report.messages.lost == 0)
        #expect(report.messages.unexpected == 0)
        #expect(report.messages.acknowledged == report.messages.published)
        #expect(report.latency.count == report.messages.delivered)
        #expect(report.latency.p50 > 0 && report.latency.p50 <= report.latency.p99 && report.latency.p99 <= report.latency.max)
    }
}

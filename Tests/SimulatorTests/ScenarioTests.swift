import Foundation
import Testing

@testable import Simulator

@Suite
struct ScenarioTests {
    /// `Configs/scenarios/`, found from this file's location in the checkout.
    static let scenarioDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Configs/scenarios")

    private func write(_ yaml: String) throws -> String {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("scenario-\(UUID().uuidString).yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }

    @Test func everyShippedScenarioLoads() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.scenarioDirectory.path).filter { $0.hasSuffix(".yaml") }
        #expect(files.count >= 7)
        for file in files {
            let scenario = try Scenario.load(contentsOf: Self.scenarioDirectory.appendingPathComponent(file).path)
            #expect(scenario.name + ".yaml" == file)
            #expect(!scenario.summary.isEmpty)
        }
    }

    @Test func fileValuesOverrideDefaults() throws {
        let scenario = try Scenario.load(contentsOf: Self.scenarioDirectory.appendingPathComponent("latency-5000.yaml").path)
        #expect(scenario.devices == .init(mqtt: 5000, wsMQTT: 0, wsJSON: 0))
        #expect(scenario.connect.rate == 1000)
        #expect(scenario.connect.timeout == .seconds(60))
        #expect(scenario.publish.totalRate == 1000)
        #expect(scenario.publish.qos == 1)
        #expect(scenario.publish.window == 100, "the default window")
        #expect(scenario.publish.payload == .template(#"{"device":"{id}","temperature":21.5,"humidity":40,"seq":{seq}}"#))
        #expect(scenario.consumers.count == 4)
        #expect(scenario.duration == .seconds(60))
        #expect(scenario.protocolVersion == .v311)
    }

    @Test func unknownKeyIsRejectedWithFileAndKeyPath() throws {
        let path = try write("""
            devices:
              mqtt: 10
            publish:
              qos: 1
              rat: 5
            """)
        let error = try #require(throws: ScenarioError.self) { try Scenario.load(contentsOf: path) }
        #expect(error.code == .unknownKey)
        #expect(error.file == path)
        #expect(error.keyPath == "publish.rat")
        #expect(error.description.hasPrefix("\(path): publish.rat: unknown key (line 5)"))
        #expect(error.description.contains("rate"))
    }

    @Test func badValueIsRejectedWithFileAndKeyPath() throws {
        let path = try write("""
            publish:
              qos: 3
            """)
        let error = try #require(throws: ScenarioError.self) { try Scenario.load(contentsOf: path) }
        #expect(error.code == .invalidValue)
        #expect(error.keyPath == "publish.qos")
        #expect(error.description == "\(path): publish.qos: must be 0, 1 or 2, got 3")
    }

    @Test(arguments: [
        ("duration: soon", "duration", "must be a duration"),
        ("devices:\n  mqtt: lots", "devices.mqtt", "must be an integer"),
        ("devices: 5", "devices", "must be a mapping"),
        ("consumers:\n  transport: carrier-pigeon", "consumers.transport", "must be one of mqtt, ws-mqtt, ws-json"),
        ("consumers:\n  filter: a/#/b", "consumers.filter", "not a valid MQTT topic filter"),
        ("loss-tolerance: 2", "loss-tolerance", "fraction"),
        ("publish:\n  payload:\n    template: 'not json {seq}'", "publish.payload.template", "JSON object"),
        ("publish:\n  payload:\n    size: 10", "publish.payload.size", "between 64"),
        ("protocol: \"4.0\"", "protocol", "must be \"3.1.1\" or \"5\""),
        ("devices:\n  ws-json: 5\npublish:\n  qos: 2", "publish.qos", "QoS 0 or 1 only"),
        ("requests:\n  rate: 1\n  reply-topic: r/x{id}", "requests.reply-topic", "whole topic level"),
        ("publish:\n  window: -1", "publish.window", "between 0 (no window) and 65535"),
    ])
    func invalidValuesNameTheirKey(yaml: String, keyPath: String, reason: String) throws {
        let error = try #require(throws: ScenarioError.self) { try Scenario.parse(yaml: yaml, file: "test.yaml") }
        #expect(error.keyPath == keyPath)
        #expect(error.reason.contains(reason), "\(error)")
    }

    @Test func durationsAcceptUnits() {
        #expect(DurationParser.parse("250ms") == .milliseconds(250))
        #expect(DurationParser.parse("10s") == .seconds(10))
        #expect(DurationParser.parse("2m") == .seconds(120))
        #expect(DurationParser.parse("1.5") == .milliseconds(1500))
        #expect(DurationParser.parse("ten") == nil)
    }

    @Test func partitionedConsumersShareThePublishersEvenly() throws {
        var scenario = Scenario()
        scenario.devices = .init(mqtt: 100)
        scenario.consumers = .init(count: 10, partition: true)
        let plan = try SimulationPlan(scenario: scenario, target: .init(), runTag: "t")
        let consumers = plan.clients.filter { $0.role == .consumer }
        #expect(consumers.count == 10)
        #expect(consumers.allSatisfy { $0.subscriptions.count == 10 })
        #expect(plan.receiversByPublisher.values.allSatisfy { $0.count == 1 })
        #expect(plan.receiversByPublisher[0] == [100])
        #expect(plan.receiversByPublisher[99] == [109])
    }
}

import ArgumentParser
import Foundation
import Logging
import Simulator

#if canImport(Glibc)
import Glibc
#endif

/// `iotgw simulate`: connects thousands of simulated devices to a gateway and reports rates, losses and latency.
///
/// Devices speak through libmosquitto and libwebsockets, never through iotgw's own codec, so every run is also an
/// interoperability test. A scenario comes from `--scenario FILE` (see `Configs/scenarios/`) or from the defaults,
/// and any flag given overrides the matching scenario value. Exits 0 when the scenario's tolerances held, 1 when
/// they did not, 2 when the scenario is invalid.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Simulate devices against a gateway and report rates, losses and latency.",
        discussion: """
            Examples:
              iotgw simulate --scenario Configs/scenarios/smoke.yaml
              iotgw simulate --mqtt-devices 2000 --qos 1 --rate 0.5 --duration 30s --consumers 2
              iotgw simulate --scenario Configs/scenarios/websocket-mix.yaml --ws-port 8083 --json
            """
    )

    // MARK: Target

    @Option(help: "Gateway host name or address.")
    var host = "127.0.0.1"

    @Option(help: "MQTT (TCP or TLS) port.")
    var port = 1883

    @Option(name: .customLong("ws-port"), help: "WebSocket port (MQTT on --ws-mqtt-path, JSON API on --ws-json-path).")
    var wsPort = 8083

    @Option(name: .customLong("ws-mqtt-path"), help: "Path of the MQTT-over-WebSocket endpoint.")
    var wsMQTTPath = "/mqtt"

    @Option(name: .customLong("ws-json-path"), help: "Path of the JSON API endpoint.")
    var wsJSONPath = "/ws"

    @Option(help: "MQTT username.")
    var username: String?

    @Option(help: "MQTT password (or set IOTGW_SIMULATE_PASSWORD, which stays out of the process list).")
    var password: String?

    @Option(name: .customLong("tls-ca-file"), help: "Connect with TLS, trusting the CAs in this PEM file.")
    var tlsCAFile: String?

    @Option(name: .customLong("tls-cert"), help: "Client certificate (PEM) for TLS.")
    var tlsCertificate: String?

    @Option(name: .customLong("tls-key"), help: "Client private key (PEM) for TLS.")
    var tlsKey: String?

    @Flag(name: .customLong("tls-insecure"), help: "Do not check that the server certificate matches the host (testing only).")
    var tlsInsecure = false

    // MARK: Scenario

    @Option(name: .customLong("scenario"), help: "Scenario file (YAML); flags below override its values.")
    var scenarioFile: String?

    @Option(name: .customLong("mqtt-devices"), help: "Devices speaking MQTT over TCP (libmosquitto).")
    var mqttDevices: Int?

    @Option(name: .customLong("ws-devices"), help: "Devices speaking MQTT over WebSocket (libwebsockets).")
    var wsDevices: Int?

    @Option(name: .customLong("json-devices"), help: "Devices speaking the JSON API over WebSocket (libwebsockets).")
    var jsonDevices: Int?

    @Option(name: .customLong("protocol"), help: "MQTT version: 3.1.1 or 5.")
    var protocolVersion: String?

    @Option(help: "Publish QoS (0, 1 or 2).")
    var qos: Int?

    @Option(help: "Messages per second per publishing device.")
    var rate: Double?

    @Option(name: .customLong("total-rate"), help: "Messages per second across all publishers (instead of --rate).")
    var totalRate: Double?

    @Option(help: "Most unacknowledged QoS 1/2 messages per device (at QoS 0: hold back while the socket pushes back); a message due then is held back (0: no window).")
    var window: Int?

    @Option(help: "How many devices publish (the first N); default all.")
    var publishers: Int?

    @Option(help: "Topic pattern; {id} becomes the device id.")
    var topic: String?

    @Option(name: .customLong("payload-size"), help: "Payload size in bytes (at least 64).")
    var payloadSize: Int?

    @Option(name: .customLong("payload-template"), help: "JSON object payload template with {id}, {seq} and {ts}.")
    var payloadTemplate: String?

    @Option(help: "Consumer clients subscribing to the telemetry.")
    var consumers: Int?

    @Option(name: .customLong("consumer-transport"), help: "Consumer transport: mqtt, ws-mqtt or ws-json.")
    var consumerTransport: String?

    @Option(name: .customLong("consumer-filter"), help: "Topic filter the consumers subscribe to.")
    var consumerFilter: String?

    @Option(name: .customLong("consumer-qos"), help: "Consumer subscription QoS.")
    var consumerQoS: Int?

    @Flag(help: "Divide the publishers among the consumers (exact-topic subscriptions) instead of a shared filter.")
    var partition = false

    @Option(name: .customLong("requests"), help: "Request/response round trips per second to device command topics.")
    var requestRate: Double?

    @Option(name: .customLong("connect-rate"), help: "Connect ramp in devices per second (0: all at once).")
    var connectRate: Double?

    @Option(name: .customLong("connect-timeout"), help: "Time allowed for everyone to connect, e.g. 30s.")
    var connectTimeout: String?

    @Option(help: "MQTT keep-alive in seconds.")
    var keepalive: Int?

    @Option(help: "How long devices publish, e.g. 30s or 2m.")
    var duration: String?

    @Option(help: "How long to wait for messages in flight after publishing stops.")
    var drain: String?

    @Option(name: .customLong("loss-tolerance"), help: "Fraction of deliveries that may be lost before the run fails.")
    var lossTolerance: Double?

    // MARK: Output

    @Option(help: "libmosquitto event-loop threads.")
    var threads = 2

    @Flag(help: "Print the final report as JSON on standard output.")
    var json = false

    @Flag(help: "No progress lines.")
    var quiet = false

    @Flag(help: "Log connection-level events.")
    var verbose = false

    func run() async throws {
        var logger = Logger(label: "iotgw.simulate") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = verbose ? .debug : .notice

        let scenario: Scenario
        do {
            scenario = try makeScenario()
        } catch {
            Self.printToStandardError("iotgw simulate: \(error)")
            throw ExitCode(2)
        }

        let interactive = isatty(STDERR_FILENO) != 0
        let simulation = Simulation(
            scenario: scenario,
            target: makeTarget(),
            options: .init(mqttThreads: threads, progressInterval: interactive ? .milliseconds(500) : .seconds(5)),
            logger: logger
        )
        let progress: (@Sendable (SimulationProgress) -> Void)?
        if quiet {
            progress = nil
        } else if interactive {
            // One line rewritten in place: carriage return, the line, erase to the end of the line.
            progress = { Self.printToStandardError("\r\($0.line)\u{1B}[K", newline: false) }
        } else {
            progress = { Self.printToStandardError($0.line) }
        }
        let report = try await simulation.run(progress: progress)
        if interactive && !quiet { Self.printToStandardError("") }

        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report)
        }
        if !report.passed { throw ExitCode(1) }
    }

    /// The scenario file (or the defaults) with every given flag applied, validated.
    func makeScenario() throws -> Scenario {
        var scenario = try scenarioFile.map { try Scenario.load(contentsOf: $0) } ?? Scenario(name: "command-line")
        if let mqttDevices { scenario.devices.mqtt = mqttDevices }
        if let wsDevices { scenario.devices.wsMQTT = wsDevices }
        if let jsonDevices { scenario.devices.wsJSON = jsonDevices }
        if let protocolVersion {
            guard let version = Scenario.ProtocolVersion(rawValue: protocolVersion == "5.0" ? "5" : protocolVersion) else {
                throw ScenarioError(code: .invalidValue, keyPath: "--protocol", reason: "must be 3.1.1 or 5, got '\(protocolVersion)'")
            }
            scenario.protocolVersion = version
        }
        if let qos { scenario.publish.qos = qos }
        if let rate {
            scenario.publish.rate = rate
            scenario.publish.totalRate = nil
        }
        if let totalRate { scenario.publish.totalRate = totalRate }
        if let publishers { scenario.publish.publishers = publishers }
        if let window { scenario.publish.window = window }
        if let topic { scenario.publish.topic = topic }
        if let payloadSize { scenario.publish.payload = .size(payloadSize) }
        if let payloadTemplate { scenario.publish.payload = .template(payloadTemplate) }
        if let consumers { scenario.consumers.count = consumers }
        if let consumerTransport {
            guard let transport = Scenario.Transport(rawValue: consumerTransport) else {
                throw ScenarioError(code: .invalidValue, keyPath: "--consumer-transport", reason: "must be mqtt, ws-mqtt or ws-json, got '\(consumerTransport)'")
            }
            scenario.consumers.transport = transport
        }
        if let consumerFilter { scenario.consumers.filter = consumerFilter }
        if let consumerQoS { scenario.consumers.qos = consumerQoS }
        if partition { scenario.consumers.partition = true }
        if let requestRate { scenario.requests.rate = requestRate }
        if let connectRate { scenario.connect.rate = connectRate }
        if let connectTimeout { scenario.connect.timeout = try Self.duration(connectTimeout, flag: "--connect-timeout") }
        if let keepalive { scenario.connect.keepAlive = keepalive }
        if let duration { scenario.duration = try Self.duration(duration, flag: "--duration") }
        if let drain { scenario.drain = try Self.duration(drain, flag: "--drain") }
        if let lossTolerance { scenario.lossTolerance = lossTolerance }
        try scenario.validate(file: scenarioFile)
        return scenario
    }

    func makeTarget() -> Simulation.Target {
        Simulation.Target(
            host: host,
            mqttPort: port,
            webSocketPort: wsPort,
            webSocketMQTTPath: wsMQTTPath,
            webSocketJSONPath: wsJSONPath,
            username: username,
            password: password ?? ProcessInfo.processInfo.environment["IOTGW_SIMULATE_PASSWORD"],
            tls: tlsCAFile.map {
                Simulation.TLS(caFile: $0, certificateFile: tlsCertificate, keyFile: tlsKey, skipHostnameVerification: tlsInsecure)
            }
        )
    }

    private static func duration(_ text: String, flag: String) throws -> Duration {
        guard let value = Scenario.parseDuration(text) else {
            throw ScenarioError(code: .invalidValue, keyPath: flag, reason: "must be a duration such as 10s, 500ms or 2m, got '\(text)'")
        }
        return value
    }

    private static func printToStandardError(_ text: String, newline: Bool = true) {
        FileHandle.standardError.write(Data((newline ? text + "\n" : text).utf8))
    }
}

import CMosquitto
import Foundation
public import Logging
import Synchronization

/// Runs a ``Scenario`` against a gateway (or any MQTT broker) and measures it.
///
/// MQTT devices run on one or two libmosquitto event-loop threads, WebSocket devices on one libwebsockets service
/// thread; this type only orchestrates the phases (connect, publish, drain, disconnect) and aggregates what the
/// threads measured into a ``SimulationReport``.
///
/// ```swift
/// let simulation = Simulation(scenario: try Scenario.load(contentsOf: "Configs/scenarios/smoke.yaml"),
///                             target: .init(host: "127.0.0.1", mqttPort: 1883), logger: logger)
/// let report = try await simulation.run()
/// ```
public struct Simulation: Sendable {
    /// Where the simulated clients connect.
    public struct Target: Sendable, Equatable {
        /// Host name or address of the gateway. Default `127.0.0.1`.
        public var host: String
        /// MQTT over TCP/TLS port. Default 1883.
        public var mqttPort: Int
        /// WebSocket port (MQTT subprotocol and JSON API). Default 8083.
        public var webSocketPort: Int
        /// Path of the MQTT-over-WebSocket endpoint. Default `/mqtt`.
        public var webSocketMQTTPath: String
        /// Path of the JSON API endpoint. Default `/ws`.
        public var webSocketJSONPath: String
        /// MQTT username, if the gateway requires one. Default none.
        public var username: String?
        /// MQTT password. Default none.
        public var password: String?
        /// TLS settings; `nil` (the default) connects in plain text.
        public var tls: TLS?

        /// Creates a target; defaults are on the properties.
        public init(
            host: String = "127.0.0.1",
            mqttPort: Int = 1883,
            webSocketPort: Int = 8083,
            webSocketMQTTPath: String = "/mqtt",
            webSocketJSONPath: String = "/ws",
            username: String? = nil,
            password: String? = nil,
            tls: TLS? = nil
        ) {
            self.host = host
            self.mqttPort = mqttPort
            self.webSocketPort = webSocketPort
            self.webSocketMQTTPath = webSocketMQTTPath
            self.webSocketJSONPath = webSocketJSONPath
            self.username = username
            self.password = password
            self.tls = tls
        }
    }

    /// TLS for MQTT (`mosquitto_tls_set`) and WebSocket (`wss://`) connections.
    public struct TLS: Sendable, Equatable {
        /// PEM file of the certificate authorities to trust.
        public var caFile: String
        /// Client certificate (PEM), for gateways that require one. Default none.
        public var certificateFile: String?
        /// Client private key (PEM). Default none.
        public var keyFile: String?
        /// Accept a server certificate whose name does not match the host. For tests only. Default false.
        public var skipHostnameVerification: Bool

        /// Creates TLS settings; defaults are on the properties.
        public init(caFile: String, certificateFile: String? = nil, keyFile: String? = nil, skipHostnameVerification: Bool = false) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.skipHostnameVerification = skipHostnameVerification
        }
    }

    /// How the simulator itself runs.
    public struct Options: Sendable, Equatable {
        /// libmosquitto event-loop threads. Default 2 (one per core of a small machine); clamped to 1...16.
        public var mqttThreads: Int
        /// How often the progress callback is called. Default 1 s.
        public var progressInterval: Duration

        /// Creates options; defaults are on the properties.
        public init(mqttThreads: Int = 2, progressInterval: Duration = .seconds(1)) {
            self.mqttThreads = mqttThreads
            self.progressInterval = progressInterval
        }
    }

    /// The scenario to run.
    public var scenario: Scenario
    /// Where to connect.
    public var target: Target
    /// How to run.
    public var options: Options
    private let logger: Logger

    /// Creates a simulation.
    /// - Parameters:
    ///   - scenario: what to simulate.
    ///   - target: where the clients connect.
    ///   - options: threads and progress interval.
    ///   - logger: receives connection-level events at debug and engine trouble at error.
    public init(scenario: Scenario, target: Target = Target(), options: Options = Options(), logger: Logger) {
        self.scenario = scenario
        self.target = target
        self.options = options
        self.logger = logger
    }

    /// Spreads the MQTT clients (`indices` into `roles`) over `loops` event-loop threads.
    ///
    /// When the devices outnumber the consumers (and the controller), those measuring clients get the first
    /// loop to themselves and the devices share the others: on a loop shared with devices publishing as fast as
    /// the broker reads them, a consumer got only the time they left it, and the run measured how the
    /// simulator's own threads were scheduled instead of how fast the broker delivers (a fleet's consumers
    /// do not run on its devices either). Otherwise, and with one loop, clients go round-robin.
    static func assign(_ indices: [Int], roles: [ClientPlan.Role], loops: Int) -> [[Int]] {
        guard loops > 0 else { return [] }
        var assignments: [[Int]] = Array(repeating: [], count: loops)
        let measuring = indices.filter { roles[$0] != .device }
        let devices = indices.filter { roles[$0] == .device }
        if loops >= 2 && !measuring.isEmpty && devices.count > measuring.count {
            assignments[0] = measuring
            for (position, index) in devices.enumerated() { assignments[1 + position % (loops - 1)].append(index) }
        } else {
            for (position, index) in indices.enumerated() { assignments[position % loops].append(index) }
        }
        return assignments
    }

    /// Runs the scenario to the end and returns its report.
    ///
    /// The run never throws for losses or refused connections: those are in the report, whose
    /// ``SimulationReport/passed`` says whether the scenario's tolerances held.
    /// - Parameter progress: called about every ``Options/progressInterval`` with live counters.
    /// - Throws: ``ScenarioError`` when the scenario is invalid.
    public func run(progress: (@Sendable (SimulationProgress) -> Void)? = nil) async throws -> SimulationReport {
        Self.initializeLibraries
        let runTag = "\(getpid())-\(UInt32.random(in: 0..<UInt32.max) & 0xffff)"
        let plan = try SimulationPlan(scenario: scenario, target: target, runTag: runTag)

        // Engines: MQTT loops take the libmosquitto clients round-robin, one WebSocket engine takes the rest.
        let mqttIndices = plan.clients.indices.filter { plan.clients[$0].transport == .mqtt }
        let webSocketIndices = plan.clients.indices.filter { plan.clients[$0].transport != .mqtt }
        let loopCount = mqttIndices.isEmpty ? 0 : Swift.max(1, Swift.min(options.mqttThreads, 16, mqttIndices.count))
        let assignments = Self.assign(mqttIndices, roles: plan.clients.map(\.role), loops: loopCount)
        let engineCount = loopCount + (webSocketIndices.isEmpty ? 0 : 1)
        let control = RunControl(engines: engineCount, clients: plan.clients.count)
        let connectStart = MonotonicClock.now()
        control.setPhase(.connecting(start: connectStart))

        let logger = self.logger
        let results = Mutex<[EngineResult?]>(Array(repeating: nil, count: engineCount))
        let finished = Mutex(0)
        var threads: [Thread] = []
        for (engine, slots) in assignments.enumerated() {
            threads.append(Thread {
                let result = MosquittoLoop.run(plan: plan, control: control, engineIndex: engine, slots: slots, logger: logger)
                results.withLock { $0[engine] = result }
                finished.withLock { $0 += 1 }
            })
        }
        if !webSocketIndices.isEmpty {
            let engine = loopCount
            threads.append(Thread {
                let result = WebSocketEngine.run(plan: plan, control: control, engineIndex: engine, slots: webSocketIndices, logger: logger)
                results.withLock { $0[engine] = result }
                finished.withLock { $0 += 1 }
            })
        }
        for (number, thread) in threads.enumerated() {
            thread.name = "iotgw-sim-\(number)"
            thread.start()
        }

        var monitor = ProgressMonitor(control: control, interval: options.progressInterval, callback: progress, start: connectStart)
        let total = plan.clients.count
        let connectDeadline = connectStart + UInt64(plan.scenario.connect.timeout.nanoseconds)

        // Phase 1: connect. Done when every client is ready or has failed, or at the connect timeout.
        await monitor.wait(phase: "connecting") { counters, now in
            counters.ready + counters.connectFailures >= total || now >= connectDeadline
        }
        let connectEnd = MonotonicClock.now()
        let readySet = control.readiness

        // Phase 2: publish. Fix the receivers now: only clients ready at this point count.
        var fanout = Array(repeating: 0, count: total)
        var streams = 0
        for (publisher, receivers) in plan.receiversByPublisher {
            guard readySet[publisher] else { continue }
            let count = receivers.reduce(0) { $0 + (readySet[$1] ? 1 : 0) }
            fanout[publisher] = count
            streams += count
        }
        let responders = plan.clients.filter { $0.role == .device && $0.commandTopic != nil && readySet[$0.index] }.map(\.index)
        let publishStart = MonotonicClock.now() + 20_000_000
        let publishEnd = publishStart + UInt64(plan.scenario.duration.nanoseconds)
        control.setPhase(.publishing(PublishOrder(start: publishStart, end: publishEnd, fanout: fanout, responders: responders, ready: readySet)))
        await monitor.wait(phase: "publishing") { _, now in now >= publishEnd }

        // Phase 3: drain until everything expected arrived and, at QoS 1/2, every publish was acknowledged
        // (a gateway with `ack: persisted` delivers before the PUBACK, which waits for the commit), or the
        // drain time is up. "Expected" counts only once every engine has reported after its last publish:
        // an engine reports its counters every 50 ms, and a consumer that caught up with a publisher's
        // older report would otherwise end the drain with that publisher's last messages still in flight.
        control.setPhase(.draining)
        let drainDeadline = MonotonicClock.now() + UInt64(plan.scenario.drain.nanoseconds)
        let awaitAcknowledgements = plan.scenario.publish.qos > 0
        await monitor.wait(phase: "draining") { counters, now in
            (counters.publishingOver >= engineCount && counters.delivered >= counters.expected
                && counters.repliesReceived >= counters.requestsSent
                && (!awaitAcknowledgements || counters.acknowledged >= counters.published)) || now >= drainDeadline
        }

        // Phase 4: disconnect and collect.
        control.setPhase(.disconnecting)
        await monitor.wait(phase: "disconnecting") { _, _ in finished.withLock { $0 } == engineCount }
        let engineResults = results.withLock { $0.compactMap { $0 } }
        return Self.report(
            plan: plan, results: engineResults, readySet: readySet, streams: streams,
            connectSeconds: Double(connectEnd - connectStart) / 1e9,
            publishStart: publishStart,
            publishSeconds: Double(publishEnd - publishStart) / 1e9
        )
    }

    private static let initializeLibraries: Void = {
        mosquitto_lib_init()
    }()
}

extension Duration {
    /// The duration in whole nanoseconds (negative durations become 0).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return Swift.max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

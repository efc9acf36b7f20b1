import Foundation

/// One simulated client and everything it does during a run. Built once by ``SimulationPlan`` and never mutated,
/// so engines on other threads may read it freely.
struct ClientPlan: Sendable {
    /// What the client is for.
    enum Role: Sendable, Equatable {
        /// A device: may publish telemetry and answer requests on its command topic.
        case device
        /// A telemetry consumer: subscribes and counts deliveries.
        case consumer
        /// The single request sender: publishes requests and measures round trips.
        case controller
    }

    /// An MQTT subscription (or JSON API subscribe).
    struct Subscription: Sendable, Equatable {
        var filter: String
        var qos: Int
    }

    var index: Int
    var role: Role
    var transport: Scenario.Transport
    /// The MQTT client identifier, unique per run so parallel runs do not take over each other's sessions.
    var clientID: String
    /// The `{id}` of topics and templates.
    var deviceID: String
    var subscriptions: [Subscription]
    /// The topic this client publishes telemetry on, when it is a publisher.
    var telemetryTopic: String?
    /// The publisher's position among all publishers, used to stagger publish times evenly.
    var publisherRank: Int
    /// The command topic this device answers requests on, if requests are enabled.
    var commandTopic: String?
    /// Where this device sends its replies.
    var replyTopic: String?
    /// When this client connects, in nanoseconds after the connect phase starts.
    var connectOffset: UInt64
}

/// Everything the engines need to know about a run, fixed before the first client connects.
///
/// A `final class` holding only `let` properties of `Sendable` types, so it is `Sendable` as is.
final class SimulationPlan: Sendable {
    let scenario: Scenario
    let target: Simulation.Target
    let clients: [ClientPlan]
    /// Nanoseconds between two messages of one publisher; `nil` when nobody publishes.
    let publishInterval: UInt64?
    let publisherCount: Int
    /// Nanoseconds between two requests of the controller; `nil` when requests are off.
    let requestInterval: UInt64?
    /// The controller's client index, if there is one.
    let controllerIndex: Int?
    let template: PayloadTemplate?
    /// For each publisher (by client index), the clients whose subscriptions match its telemetry topic.
    let receiversByPublisher: [Int: [Int]]
    /// The largest sequence number a receiver accepts; larger ones are corrupt and counted as unexpected.
    let maximumSequence: UInt64

    /// Lays out the clients of `scenario`: devices first (MQTT, then WebSocket MQTT, then JSON), then consumers,
    /// then the controller; publishers are the first devices; connect offsets follow the connect ramp.
    init(scenario: Scenario, target: Simulation.Target, runTag: String) throws(ScenarioError) {
        try scenario.validate()
        self.scenario = scenario
        self.target = target
        let publishers = scenario.publish.publishers ?? scenario.devices.total
        publisherCount = publishers
        let requestsEnabled = scenario.requests.rate > 0 && scenario.devices.total > 0

        var clients: [ClientPlan] = []
        var transports: [Scenario.Transport] = []
        transports += repeatElement(.mqtt, count: scenario.devices.mqtt)
        transports += repeatElement(.wsMQTT, count: scenario.devices.wsMQTT)
        transports += repeatElement(.wsJSON, count: scenario.devices.wsJSON)
        for (index, transport) in transports.enumerated() {
            let deviceID = "sim-\(index)"
            let command = requestsEnabled ? scenario.requests.commandTopic.replacingOccurrences(of: "{id}", with: deviceID) : nil
            clients.append(ClientPlan(
                index: index, role: .device, transport: transport,
                clientID: "sim-\(runTag)-\(index)", deviceID: deviceID,
                subscriptions: command.map { [ClientPlan.Subscription(filter: $0, qos: scenario.requests.qos)] } ?? [],
                telemetryTopic: index < publishers ? scenario.publish.topic.replacingOccurrences(of: "{id}", with: deviceID) : nil,
                publisherRank: index,
                commandTopic: command,
                replyTopic: requestsEnabled ? scenario.requests.replyTopic.replacingOccurrences(of: "{id}", with: deviceID) : nil,
                connectOffset: 0
            ))
        }
        let consumerCount = scenario.consumers.count
        for consumer in 0..<consumerCount {
            let index = clients.count
            var subscriptions: [ClientPlan.Subscription] = []
            if scenario.consumers.partition {
                // Publisher p goes to consumer p * consumers / publishers: contiguous, even shares.
                for publisher in 0..<publishers where publisher * consumerCount / Swift.max(publishers, 1) == consumer {
                    subscriptions.append(.init(filter: clients[publisher].telemetryTopic!, qos: scenario.consumers.qos))
                }
            } else {
                subscriptions = [.init(filter: scenario.consumers.filter, qos: scenario.consumers.qos)]
            }
            clients.append(ClientPlan(
                index: index, role: .consumer, transport: scenario.consumers.transport,
                clientID: "sim-\(runTag)-c\(consumer)", deviceID: "consumer-\(consumer)",
                subscriptions: subscriptions, telemetryTopic: nil, publisherRank: 0,
                commandTopic: nil, replyTopic: nil, connectOffset: 0
            ))
        }
        if requestsEnabled {
            let filter = scenario.requests.replyTopic.replacingOccurrences(of: "{id}", with: "+")
            controllerIndex = clients.count
            clients.append(ClientPlan(
                index: clients.count, role: .controller, transport: .mqtt,
                clientID: "sim-\(runTag)-controller", deviceID: "controller",
                subscriptions: [.init(filter: filter, qos: scenario.requests.qos)],
                telemetryTopic: nil, publisherRank: 0, commandTopic: nil, replyTopic: nil, connectOffset: 0
            ))
            requestInterval = UInt64(1e9 / scenario.requests.rate)
        } else {
            controllerIndex = nil
            requestInterval = nil
        }

        // Listeners (consumers, controller) connect first so they are subscribed when devices start; then the ramp.
        let listenersFirst = clients.indices.filter { clients[$0].role != .device } + clients.indices.filter { clients[$0].role == .device }
        for (position, index) in listenersFirst.enumerated() {
            clients[index].connectOffset = scenario.connect.rate > 0 ? UInt64(Double(position) / scenario.connect.rate * 1e9) : 0
        }
        self.clients = clients

        let perPublisherRate: Double
        if let total = scenario.publish.totalRate {
            perPublisherRate = publishers > 0 ? total / Double(publishers) : 0
        } else {
            perPublisherRate = scenario.publish.rate
        }
        publishInterval = (publishers > 0 && perPublisherRate > 0) ? Swift.max(1, UInt64(1e9 / perPublisherRate)) : nil

        if case .template(let text) = scenario.publish.payload {
            do { template = try PayloadTemplate(text) } catch {
                throw ScenarioError(code: .invalidValue, keyPath: "publish.payload.template", reason: error.reason)
            }
        } else {
            template = nil
        }

        // Who should receive each publisher's telemetry. Consumers are few, so test each consumer subscription
        // against each publisher topic; device command subscriptions are exact topics, so a set lookup suffices.
        var receivers: [Int: [Int]] = [:]
        let listeners = clients.filter { $0.role != .device }
        var commandOwners: [String: [Int]] = [:]
        for client in clients where client.role == .device {
            for subscription in client.subscriptions { commandOwners[subscription.filter, default: []].append(client.index) }
        }
        var matchCache: [String: Bool] = [:]
        for publisher in clients.prefix(publishers) {
            guard let topic = publisher.telemetryTopic else { continue }
            var list: [Int] = []
            for listener in listeners {
                let matches = listener.subscriptions.contains { subscription in
                    let key = subscription.filter + "\u{0}" + topic
                    if let cached = matchCache[key] { return cached }
                    let result = TopicFilter.matches(subscription.filter, topic: topic)
                    if matchCache.count < 100_000 { matchCache[key] = result }
                    return result
                }
                if matches { list.append(listener.index) }
            }
            list += commandOwners[topic] ?? []
            receivers[publisher.index] = list
        }
        receiversByPublisher = receivers

        let durationSeconds = Double(scenario.duration.components.seconds) + Double(scenario.duration.components.attoseconds) / 1e18
        // Publisher sequence numbers and request ids both stay below this bound in any honest run.
        let perPublisher = Swift.max(publishInterval.map { 1e9 / Double($0) } ?? 0, scenario.requests.rate)
        maximumSequence = UInt64(perPublisher * (durationSeconds + 60) * 2) + 1_000
    }

    /// The number of clients of each transport.
    func count(of transport: Scenario.Transport) -> Int {
        clients.reduce(0) { $0 + ($1.transport == transport ? 1 : 0) }
    }
}

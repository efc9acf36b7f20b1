/// The outcome of a simulation: counts, rates, latency and whether the scenario's tolerances held.
///
/// `Codable` so `iotgw simulate --json` can print it for machines. Invariant, checked by the tests:
/// `messages.expected == messages.delivered + messages.lost` (duplicates are counted apart).
public struct SimulationReport: Sendable, Codable, Equatable {
    /// The scenario's name.
    public var scenario: String
    /// `"3.1.1"` or `"5"`.
    public var protocolVersion: String
    /// Whether losses and connection failures stayed within the scenario's tolerances.
    public var passed: Bool
    /// Why the run failed, one sentence each; empty when it passed.
    public var failures: [String]
    /// Connection figures.
    public var clients: Clients
    /// Telemetry figures.
    public var messages: Messages
    /// Publish-to-delivery latency of telemetry.
    public var latency: Latency
    /// Request/response round trips.
    public var requests: Requests

    /// Connection figures.
    public struct Clients: Sendable, Codable, Equatable {
        /// Clients the scenario asked for (devices, consumers and the controller).
        public var planned: Int
        /// Clients per transport (`mqtt`, `ws-mqtt`, `ws-json`).
        public var byTransport: [String: Int]
        /// Clients connected and subscribed when publishing started.
        public var ready: Int
        /// Clients that failed to connect or subscribe (refused, unreachable, timed out).
        public var connectFailures: Int
        /// Clients that were ready and later lost their connection before the end.
        public var disconnects: Int
        /// Seconds from the first connect attempt until every client was ready or had failed.
        public var connectSeconds: Double
        /// Ready clients per connect second.
        public var connectRate: Double
    }

    /// Telemetry figures, summed over every (publisher, receiver) stream.
    public struct Messages: Sendable, Codable, Equatable {
        /// Messages the client libraries accepted for sending.
        public var published: UInt64
        /// Publish calls the client libraries refused (not connected, queue full, ...).
        public var publishErrors: UInt64
        /// Messages not sent because their device was held back (`publish.window`): at QoS 1/2 its window of
        /// unacknowledged messages was full, at QoS 0 its socket was; the broker took less than was offered.
        public var heldBack: UInt64
        /// QoS 1/2 messages acknowledged by the broker (PUBACK, PUBCOMP, or a JSON API ack).
        public var acknowledged: UInt64
        /// (publisher, receiver) streams that should have carried messages.
        public var streams: Int
        /// Deliveries the streams should have carried: for each stream, what its publisher sent.
        public var expected: UInt64
        /// Distinct messages delivered on expected streams.
        public var delivered: UInt64
        /// `expected - delivered`.
        public var lost: UInt64
        /// Deliveries of a message the receiver already had.
        public var duplicates: UInt64
        /// Deliveries no stream expected: unparsable payloads, unknown publishers, unsubscribed receivers.
        public var unexpected: UInt64
        /// Retained messages ignored because they predate the subscription.
        public var retainedIgnored: UInt64
        /// `lost / expected`, 0 when nothing was expected.
        public var lossRatio: Double
        /// Seconds publishers were publishing.
        public var publishSeconds: Double
        /// Published messages per publishing second.
        public var publishRate: Double
        /// Delivered messages per publishing second.
        public var deliveryRate: Double
        /// Seconds from the first publish to the last delivery (publishing plus however much of the drain was used).
        public var deliverySeconds: Double
        /// Delivered messages per delivery second: the rate the broker sustained, backlog included. The figure
        /// `make bench` reports as throughput.
        public var sustainedDeliveryRate: Double
    }

    /// A latency distribution in milliseconds.
    public struct Latency: Sendable, Codable, Equatable {
        /// Samples recorded.
        public var count: UInt64
        public var min: Double
        public var mean: Double
        public var p50: Double
        public var p90: Double
        public var p99: Double
        public var p999: Double
        public var max: Double
    }

    /// Request/response round trips.
    public struct Requests: Sendable, Codable, Equatable {
        /// Requests the controller sent.
        public var sent: UInt64
        /// Requests answered.
        public var answered: UInt64
        /// `sent - answered`.
        public var lost: UInt64
        /// Round-trip time.
        public var roundTrip: Latency
    }
}

extension SimulationReport: CustomStringConvertible {
    /// The human-readable report `iotgw simulate` prints.
    public var description: String {
        func number(_ value: Double, _ digits: Int = 1) -> String {
            let scale = Double(Int(pow10(digits)))
            return String((value * scale).rounded() / scale)
        }
        func latencyLine(_ latency: Latency) -> String {
            guard latency.count > 0 else { return "no samples" }
            return "p50 \(number(latency.p50, 3)) ms  p90 \(number(latency.p90, 3)) ms  p99 \(number(latency.p99, 3)) ms  "
                + "p99.9 \(number(latency.p999, 3)) ms  max \(number(latency.max, 3)) ms  (\(latency.count) samples)"
        }
        let transports = clients.byTransport.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        var lines = [
            "scenario \(scenario) (MQTT \(protocolVersion)): \(passed ? "PASSED" : "FAILED")",
            "clients      planned \(clients.planned) (\(transports)), ready \(clients.ready), connect failures \(clients.connectFailures), "
                + "disconnects \(clients.disconnects), connected in \(number(clients.connectSeconds, 2)) s (\(number(clients.connectRate)) /s)",
            "published    \(messages.published) in \(number(messages.publishSeconds, 2)) s (\(number(messages.publishRate)) msg/s), "
                + "errors \(messages.publishErrors), acknowledged \(messages.acknowledged), held back \(messages.heldBack)",
            "delivered    \(messages.delivered) of \(messages.expected) expected on \(messages.streams) streams "
                + "(\(number(messages.deliveryRate)) msg/s), lost \(messages.lost) (\(number(messages.lossRatio * 100, 3))%), "
                + "duplicates \(messages.duplicates), unexpected \(messages.unexpected)",
            "latency      \(latencyLine(latency))",
        ]
        if requests.sent > 0 {
            lines.append("requests     sent \(requests.sent), answered \(requests.answered), lost \(requests.lost); round trip \(latencyLine(requests.roundTrip))")
        }
        for failure in failures { lines.append("failure      \(failure)") }
        return lines.joined(separator: "\n")
    }

}

private func pow10(_ digits: Int) -> Double { (0..<digits).reduce(1.0) { value, _ in value * 10 } }

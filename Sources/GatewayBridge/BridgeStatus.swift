import Metrics
import Synchronization

/// The connection state of a bridge, as logs, metrics, the stats API and readiness report it.
public enum BridgeState: String, Sendable, Hashable {
    /// Connected to the upstream, subscriptions acknowledged: messages flow both ways.
    case connected
    /// A connection attempt is in progress.
    case connecting
    /// Not connected; the next attempt waits for its backoff delay. See ``BridgeStatus/Snapshot/lastError``.
    case down

    /// The value of the `iotgw_bridge_state` gauge: 0 down, 1 connecting, 2 connected.
    var gaugeValue: Int {
        switch self {
        case .down: 0
        case .connecting: 1
        case .connected: 2
        }
    }
}

/// A bridge's live state and counters, written by its worker thread and read by anyone.
///
/// Metrics (swift-metrics, so Prometheus in the daemon), all labelled `bridge="NAME"`:
/// `iotgw_bridge_state` (0 down, 1 connecting, 2 connected), `iotgw_bridge_messages_total{direction="out"|"in"}`,
/// `iotgw_bridge_dropped_total{reason=...}`, `iotgw_bridge_queue_depth`, `iotgw_bridge_connects_total{result="success"|"failure"}`.
public final class BridgeStatus: Sendable {
    /// Why a message did not cross the bridge.
    public enum DropReason: String, Sendable, CaseIterable {
        /// An MQTT 3.1.1 upstream sent back a message this bridge published (see `EchoFilter`).
        case echo
        /// No rule maps the topic (an upstream delivery outside the bridge's filters).
        case noRule = "no_rule"
        /// The upstream refused the message (MQTT 5 reason code ≥ 0x80) or libmosquitto rejected it
        /// (too large, invalid topic): it is not retried.
        case refused
    }

    /// A consistent copy of the status.
    public struct Snapshot: Sendable, Hashable {
        public var name: String
        public var state: BridgeState
        /// The last connection failure or loss, for operators; nil after a clean start.
        public var lastError: String?
        /// Messages the upstream acknowledged (QoS 1/2) or that were written to it (QoS 0).
        public var forwarded: Int
        /// Messages received from the upstream and published on the gateway.
        public var received: Int
        /// Messages dropped, by reason.
        public var dropped: [DropReason: Int]
        /// Messages waiting in the bridge queue (queued or in flight).
        public var queued: Int
        /// Successful connections since start.
        public var connects: Int
    }

    public let name: String
    private let state: Mutex<Snapshot>
    private let stateGauge: Gauge
    private let queueGauge: Gauge
    private let forwardedCounter: Counter
    private let receivedCounter: Counter
    private let droppedCounters: [DropReason: Counter]
    private let connectSuccess: Counter
    private let connectFailure: Counter

    public init(name: String) {
        self.name = name
        state = Mutex(Snapshot(name: name, state: .connecting, lastError: nil, forwarded: 0, received: 0, dropped: [:], queued: 0, connects: 0))
        let bridge = ("bridge", name)
        stateGauge = Gauge(label: "iotgw_bridge_state", dimensions: [bridge])
        queueGauge = Gauge(label: "iotgw_bridge_queue_depth", dimensions: [bridge])
        forwardedCounter = Counter(label: "iotgw_bridge_messages_total", dimensions: [bridge, ("direction", "out")])
        receivedCounter = Counter(label: "iotgw_bridge_messages_total", dimensions: [bridge, ("direction", "in")])
        droppedCounters = Dictionary(
            uniqueKeysWithValues: DropReason.allCases.map { ($0, Counter(label: "iotgw_bridge_dropped_total", dimensions: [bridge, ("reason", $0.rawValue)])) }
        )
        connectSuccess = Counter(label: "iotgw_bridge_connects_total", dimensions: [bridge, ("result", "success")])
        connectFailure = Counter(label: "iotgw_bridge_connects_total", dimensions: [bridge, ("result", "failure")])
        stateGauge.record(BridgeState.connecting.gaugeValue)
        queueGauge.record(0)
    }

    public var snapshot: Snapshot { state.withLock { $0 } }

    /// Records a state change. Returns the previous state.
    @discardableResult
    func set(_ new: BridgeState, error: String? = nil) -> BridgeState {
        let previous = state.withLock { state -> BridgeState in
            let previous = state.state
            state.state = new
            if let error { state.lastError = error }
            if new == .connected && previous != .connected { state.connects += 1 }
            return previous
        }
        stateGauge.record(new.gaugeValue)
        if new == .connected && previous != .connected { connectSuccess.increment() }
        if error != nil && new != .connected { connectFailure.increment() }
        return previous
    }

    /// Records a problem that does not change the state (a refused subscription).
    func noteError(_ error: String) {
        state.withLock { $0.lastError = error }
    }

    func forwarded(_ count: Int = 1) {
        state.withLock { $0.forwarded += count }
        forwardedCounter.increment(by: count)
    }

    func received() {
        state.withLock { $0.received += 1 }
        receivedCounter.increment()
    }

    func dropped(_ reason: DropReason) {
        state.withLock { $0.dropped[reason, default: 0] += 1 }
        droppedCounters[reason]?.increment()
    }

    func queueDepth(_ depth: Int) {
        state.withLock { $0.queued = depth }
        queueGauge.record(depth)
    }
}

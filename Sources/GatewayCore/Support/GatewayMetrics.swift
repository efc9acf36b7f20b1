import Metrics
public import MQTTCodec
import Synchronization

/// Every metric the core records, created once and shared. Metric names follow Prometheus conventions
/// (`_total` counters, units in the name); labels never carry client ids or topics.
///
/// This is the core's single observability point: the core calls these methods instead of scattering
/// `Counter(label:)` look-ups through the code.
public final class GatewayMetrics: Sendable {
    private let connectionsGauges: [Transport: Gauge]
    private let connects: Counter
    private let connectRejections: [UInt8: Counter]
    private let disconnects: [DisconnectReason: Counter]
    private let received: [Int: Counter]
    private let receivedBytes: Counter
    private let sent: [Int: Counter]
    private let sentBytes: Counter
    private let dropped: [DropReason: Counter]
    private let queuedMessagesGauge: Gauge
    private let queuedBytesGauge: Gauge
    private let sessionsGauge: Gauge
    private let retainedGauge: Gauge
    private let malformed: Counter
    private let aclRevoked: Counter
    private let publisherPauses: Counter
    private let floodRefusals: [FloodRefusal: Counter]
    private let congestedGauge: Gauge
    /// Totals kept in-process as well (the metrics backend may be a no-op), for `$SYS` and the stats API.
    private let totals = Totals()

    private final class Totals: Sendable {
        let messagesReceived = Atomic<Int>(0)
        let messagesSent = Atomic<Int>(0)
        let bytesReceived = Atomic<Int>(0)
        let bytesSent = Atomic<Int>(0)
    }

    /// Message and byte totals since start.
    public struct Snapshot: Sendable, Hashable {
        public var messagesReceived: Int
        public var messagesSent: Int
        public var bytesReceived: Int
        public var bytesSent: Int
    }

    /// The totals since start.
    public var snapshot: Snapshot {
        Snapshot(
            messagesReceived: totals.messagesReceived.load(ordering: .relaxed),
            messagesSent: totals.messagesSent.load(ordering: .relaxed),
            bytesReceived: totals.bytesReceived.load(ordering: .relaxed),
            bytesSent: totals.bytesSent.load(ordering: .relaxed)
        )
    }

    /// How a client reached the gateway; a label on connection and message metrics.
    public enum Transport: String, Sendable, CaseIterable {
        case tcp, tls, ws, wss
    }

    /// Why a connection ended; a label on `iotgw_disconnects_total`.
    public enum DisconnectReason: String, Sendable, CaseIterable {
        case clientDisconnect = "client_disconnect"
        case connectionLost = "connection_lost"
        case keepAliveTimeout = "keep_alive_timeout"
        case protocolError = "protocol_error"
        case takenOver = "taken_over"
        case slowConsumer = "slow_consumer"
        case serverShutdown = "server_shutdown"
        case administrative
    }

    /// Why a message was not delivered to a subscriber; a label on `iotgw_messages_dropped_total`.
    public enum DropReason: String, Sendable, CaseIterable {
        /// A QoS 0 message pushed out of a full per-client queue.
        case queueFullQoS0 = "queue_full_qos0"
        /// A QoS 1/2 message that did not fit a full per-client queue (the consumer is disconnected).
        case queueFullQoS12 = "queue_full_qos12"
        /// A message dropped because the global queued-bytes cap was reached.
        case globalCap = "global_cap"
        /// A message that expired before delivery (MQTT 5 Message Expiry Interval).
        case expired
        /// A message larger than the subscriber's Maximum Packet Size.
        case tooLarge = "too_large"
        /// A session expired with messages still queued.
        case sessionExpired = "session_expired"
        /// A queued message whose subscription an ACL change revoked.
        case aclRevoked = "acl_revoked"
        /// A message a wildcard subscription matched but the subscriber may not read (ACL read check).
        case aclFiltered = "acl_filtered"
    }

    public init() {
        var gauges: [Transport: Gauge] = [:]
        for transport in Transport.allCases {
            gauges[transport] = Gauge(label: "iotgw_connections", dimensions: [("transport", transport.rawValue)])
        }
        connectionsGauges = gauges
        connects = Counter(label: "iotgw_connects_total")
        var rejections: [UInt8: Counter] = [:]
        for code: UInt8 in [1, 2, 3, 4, 5] {
            rejections[code] = Counter(label: "iotgw_connect_rejections_total", dimensions: [("code", String(code))])
        }
        connectRejections = rejections
        var disconnects: [DisconnectReason: Counter] = [:]
        for reason in DisconnectReason.allCases {
            disconnects[reason] = Counter(label: "iotgw_disconnects_total", dimensions: [("reason", reason.rawValue)])
        }
        self.disconnects = disconnects
        var received: [Int: Counter] = [:]
        var sent: [Int: Counter] = [:]
        for qos in 0...2 {
            received[qos] = Counter(label: "iotgw_messages_received_total", dimensions: [("qos", String(qos))])
            sent[qos] = Counter(label: "iotgw_messages_sent_total", dimensions: [("qos", String(qos))])
        }
        self.received = received
        self.sent = sent
        receivedBytes = Counter(label: "iotgw_received_bytes_total")
        sentBytes = Counter(label: "iotgw_sent_bytes_total")
        var dropped: [DropReason: Counter] = [:]
        for reason in DropReason.allCases {
            dropped[reason] = Counter(label: "iotgw_messages_dropped_total", dimensions: [("reason", reason.rawValue)])
        }
        self.dropped = dropped
        queuedMessagesGauge = Gauge(label: "iotgw_queued_messages")
        queuedBytesGauge = Gauge(label: "iotgw_queued_bytes")
        sessionsGauge = Gauge(label: "iotgw_sessions")
        retainedGauge = Gauge(label: "iotgw_retained_messages")
        malformed = Counter(label: "iotgw_malformed_packets_total")
        aclRevoked = Counter(label: "iotgw_acl_subscriptions_revoked_total")
        publisherPauses = Counter(label: "iotgw_publisher_pauses_total")
        var refusals: [FloodRefusal: Counter] = [:]
        for reason in FloodRefusal.allCases {
            refusals[reason] = Counter(label: "iotgw_connections_refused_total", dimensions: [("reason", reason.rawValue)])
        }
        floodRefusals = refusals
        congestedGauge = Gauge(label: "iotgw_congested_sessions")
    }

    /// Why a connection was refused by a flood limit; a label on `iotgw_connections_refused_total`.
    public enum FloodRefusal: String, Sendable, CaseIterable {
        /// `limits.max_connections_per_address`.
        case addressLimit = "address_limit"
        /// `limits.connect_rate_per_address`.
        case connectRate = "connect_rate"
    }

    func refusedByFloodLimit(_ reason: FloodRefusal) { floodRefusals[reason]?.increment() }

    /// Records a publisher whose reading was paused by back-pressure (`limits.slow_consumer: backpressure`).
    func publisherPaused() { publisherPauses.increment() }

    /// Records how many subscribers' full queues hold publishers back.
    func congestedSessions(_ count: Int) { congestedGauge.record(count) }

    func connectionOpened(_ transport: Transport, current: Int) {
        connectionsGauges[transport]?.record(current)
    }

    func connectionClosed(_ transport: Transport, current: Int) {
        connectionsGauges[transport]?.record(current)
    }

    func connectAccepted() { connects.increment() }

    func connectRejected(returnCode: UInt8) {
        connectRejections[returnCode]?.increment()
    }

    func disconnected(_ reason: DisconnectReason) { disconnects[reason]?.increment() }

    func messageReceived(qos: MQTTQoS, bytes: Int) {
        received[Int(qos.rawValue)]?.increment()
        receivedBytes.increment(by: bytes)
        totals.messagesReceived.add(1, ordering: .relaxed)
        totals.bytesReceived.add(bytes, ordering: .relaxed)
    }

    /// Records a message written to a subscriber.
    public func messageSent(qos: MQTTQoS, bytes: Int) {
        sent[Int(qos.rawValue)]?.increment()
        sentBytes.increment(by: bytes)
        totals.messagesSent.add(1, ordering: .relaxed)
        totals.bytesSent.add(bytes, ordering: .relaxed)
    }

    func messageDropped(_ reason: DropReason, count: Int = 1) {
        dropped[reason]?.increment(by: count)
    }

    func queueLevels(messages: Int, bytes: Int) {
        queuedMessagesGauge.record(messages)
        queuedBytesGauge.record(bytes)
    }

    func sessions(_ count: Int) { sessionsGauge.record(count) }
    func retained(_ count: Int) { retainedGauge.record(count) }

    /// Records subscriptions removed because the ACL in effect no longer allows them.
    func subscriptionsRevoked(_ count: Int) { aclRevoked.increment(by: count) }

    /// Records a packet that failed to decode.
    public func malformedPacket() { malformed.increment() }
}

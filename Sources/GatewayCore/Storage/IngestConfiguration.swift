/// How published messages flow into the telemetry store.
public struct IngestConfiguration: Sendable, Hashable {
    /// When a QoS 1/2 message on a stored topic is acknowledged.
    public enum AckMode: String, Sendable, Hashable, CaseIterable {
        /// PUBACK/PUBREC only after the message's batch has committed: nothing acknowledged is lost.
        case persisted
        /// Acknowledge at once: lower latency, but a crash can lose acknowledged messages still queued.
        case received
    }

    /// What a full ingest queue does to publishers.
    public enum Overflow: String, Sendable, Hashable, CaseIterable {
        /// Stop reading from the publisher until there is room (TCP back-pressure). Nothing is lost.
        case backpressure
        /// Refuse the message: MQTT 5 PUBACK/PUBREC 0x97 (quota exceeded), MQTT 3.1.1 disconnect (3.1.1
        /// has no negative acknowledgement). QoS 0 messages are dropped and counted.
        case reject
    }

    /// Topic filters selecting what is stored. Default `#` (every topic but `$`-topics, as `#` never
    /// matches those).
    public var topics: [String] = ["#"]
    /// Messages the ingest queue holds. Default 10,000.
    public var maxQueuedMessages: Int = 10_000
    /// Bytes the ingest queue holds. Default 16 MiB.
    public var maxQueuedBytes: Int = 16 * 1_048_576
    /// The most rows one transaction writes. Default 2000.
    public var batchMaxRows: Int = 2000
    /// The longest a message waits for its batch to fill, in seconds. Default 0.01 (10 ms).
    public var batchMaxDelay: Double = 0.01
    public var ack: AckMode = .persisted
    public var overflow: Overflow = .backpressure

    public init() {}
}

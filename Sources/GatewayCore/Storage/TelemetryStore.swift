public import MQTTCodec
public import NIOCore

/// A published message as the telemetry store records it (table `messages`).
public struct TelemetryRecord: Sendable, Hashable {
    /// Milliseconds since the Unix epoch when the gateway received it.
    public var receivedAt: Int64
    public var clientID: String
    public var topic: String
    public var qos: MQTTQoS
    public var retain: Bool
    public var payload: ByteBuffer
    /// The MQTT 5 properties as encoded on the wire (length prefix included), or nil when there were none.
    public var properties: ByteBuffer?

    public init(
        receivedAt: Int64,
        clientID: String,
        topic: String,
        qos: MQTTQoS,
        retain: Bool,
        payload: ByteBuffer,
        properties: ByteBuffer?
    ) {
        self.receivedAt = receivedAt
        self.clientID = clientID
        self.topic = topic
        self.qos = qos
        self.retain = retain
        self.payload = payload
        self.properties = properties
    }

    /// The bytes this record holds while queued (what the ingest queue's byte cap counts).
    public var byteCount: Int {
        topic.utf8.count + clientID.utf8.count + payload.readableBytes + (properties?.readableBytes ?? 0) + 48
    }
}

/// Where telemetry is persisted. Implementations (SQLite, PostgreSQL) live in GatewayStorage; the core
/// knows no SQL.
public protocol TelemetryStore: Sendable {
    /// Writes `records` in one transaction: either all are committed when this returns, or it throws
    /// and none are.
    func insert(_ records: [TelemetryRecord]) async throws

    /// Whether the store currently answers (for readiness); cheap.
    var isReachable: Bool { get }
}

/// A stored message with its row id (for paging).
public struct StoredTelemetry: Sendable, Hashable {
    public var id: Int64
    public var record: TelemetryRecord

    public init(id: Int64, record: TelemetryRecord) {
        self.id = id
        self.record = record
    }
}

/// Reads stored telemetry (the admin API's `/api/v1/messages`), through the same pool as writes.
public protocol TelemetryReader: Sendable {
    /// Messages in id order (oldest first), optionally on one exact `topic`, received at or after
    /// `since` (milliseconds since the epoch), with an id above `afterID`, at most `limit`.
    func messages(topic: String?, since: Int64?, afterID: Int64?, limit: Int) async throws -> [StoredTelemetry]
}

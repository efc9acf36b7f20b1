public import GatewayCore
import MQTTCodec
import NIOCore
import Synchronization

/// Telemetry (table `messages`) on any ``SQLDatabase``: batches inserted in one transaction by the
/// backend's bulk path (``SQLDatabase/insertTelemetry(_:)``), and the paged reads of `/api/v1/messages`.
public final class SQLTelemetryStore: TelemetryStore, TelemetryReader {
    public let database: any SQLDatabase
    private let reachable = Atomic<Bool>(true)

    public init(database: any SQLDatabase) {
        self.database = database
    }

    public var isReachable: Bool { reachable.load(ordering: .relaxed) }

    public func insert(_ records: [TelemetryRecord]) async throws {
        guard !records.isEmpty else { return }
        do {
            try await database.insertTelemetry(records)
            reachable.store(true, ordering: .relaxed)
        } catch {
            reachable.store(false, ordering: .relaxed)
            throw error
        }
    }

    public func messages(topic: String?, since: Int64?, afterID: Int64?, limit: Int) async throws -> [StoredTelemetry] {
        var conditions: [String] = []
        var binds: [SQLValue] = []
        if let topic {
            binds.append(.text(topic))
            conditions.append("topic = $\(binds.count)")
        }
        if let since {
            binds.append(.integer(since))
            conditions.append("received_at >= $\(binds.count)")
        }
        if let afterID {
            binds.append(.integer(afterID))
            conditions.append("id > $\(binds.count)")
        }
        binds.append(.integer(Int64(limit)))
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let rows = try await database.query(
            "SELECT id, received_at, client_id, topic, qos, retain, payload, properties FROM messages \(whereClause) ORDER BY id LIMIT $\(binds.count)",
            binds
        )
        return rows.compactMap { row in
            guard let id = row["id"].integer, let receivedAt = row["received_at"].integer,
                let clientID = row["client_id"].text, let topic = row["topic"].text,
                let qosValue = row["qos"].integer, let qos = MQTTQoS(rawValue: UInt8(clamping: qosValue))
            else { return nil }
            return StoredTelemetry(
                id: id,
                record: TelemetryRecord(
                    receivedAt: receivedAt,
                    clientID: clientID,
                    topic: topic,
                    qos: qos,
                    retain: row["retain"].bool ?? false,
                    payload: row["payload"].blob ?? ByteBuffer(),
                    properties: row["properties"].blob
                )
            )
        }
    }
}

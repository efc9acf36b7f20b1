public import GatewayCore
import MQTTCodec
import NIOCore
import Synchronization

/// Telemetry (table `messages`) on any ``SQLDatabase``: batched multi-row inserts in one transaction,
/// and the paged reads of `/api/v1/messages`.
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
            try await database.transaction { connection in
                // One multi-row INSERT per chunk: far fewer statement preparations than a row at a
                // time. Chunks are capped in rows and bytes, since binding copies the payloads.
                var start = records.startIndex
                while start < records.endIndex {
                    var end = start
                    var bytes = 0
                    while end < records.endIndex && end - start < Self.maxRowsPerStatement
                        && (end == start || bytes + records[end].byteCount <= Self.maxBytesPerStatement)
                    {
                        bytes += records[end].byteCount
                        end += 1
                    }
                    try await Self.insertRows(records[start..<end], on: connection)
                    start = end
                }
            }
            reachable.store(true, ordering: .relaxed)
        } catch {
            reachable.store(false, ordering: .relaxed)
            throw error
        }
    }

    static let maxRowsPerStatement = 200
    static let maxBytesPerStatement = 1_048_576

    private static func insertRows(_ rows: ArraySlice<TelemetryRecord>, on connection: any SQLConnection) async throws {
        var binds: [SQLValue] = []
        binds.reserveCapacity(rows.count * 7)
        var values: [String] = []
        values.reserveCapacity(rows.count)
        for record in rows {
            let n = binds.count
            values.append("($\(n + 1), $\(n + 2), $\(n + 3), $\(n + 4), $\(n + 5), $\(n + 6), $\(n + 7))")
            binds.append(.integer(record.receivedAt))
            binds.append(.text(record.clientID))
            binds.append(.text(record.topic))
            binds.append(.integer(Int64(record.qos.rawValue)))
            binds.append(.flag(record.retain))
            binds.append(.blob(record.payload))
            binds.append(.optional(record.properties))
        }
        _ = try await connection.query(
            "INSERT INTO messages (received_at, client_id, topic, qos, retain, payload, properties) VALUES \(values.joined(separator: ", "))",
            binds
        )
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

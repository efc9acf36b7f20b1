public import GatewayCore
public import Logging
import MQTTCodec
import NIOCore
import NIOPosix
public import SQLiteNIO
import Synchronization

/// The embedded default store: SQLite in WAL mode, under the configured data directory.
///
/// Every libsqlite3 call runs on NIO's thread pool (sqlite-nio), never on an event loop. All database
/// use goes through one ``ConnectionPool`` of `pool.size` connections.
public final class SQLiteStore: TelemetryStore, TelemetryReader {
    /// How the SQLite store is set up.
    public struct Configuration: Sendable, Hashable {
        /// The database file.
        public var path: String
        /// Connections in the pool. Default 4.
        public var poolSize: Int = 4
        /// The longest a caller waits for a free connection, in seconds. Default 5.
        public var acquireTimeout: Double = 5
        /// `PRAGMA synchronous`: `full` survives power loss, `normal` survives process crashes only
        /// (WAL). Default full.
        public var synchronous: String = "full"

        public init(path: String) {
            self.path = path
        }
    }

    let pool: ConnectionPool<SQLiteConnection>
    let logger: Logger
    /// The store's own blocking-I/O threads, one per connection. A connection waiting for SQLite's
    /// write lock (busy_timeout) sleeps on its thread; with fewer threads than connections, waiters
    /// could occupy every thread while the lock holder's next statement waits for one.
    let threadPool: NIOThreadPool
    private let reachable = Atomic<Bool>(true)

    private init(pool: ConnectionPool<SQLiteConnection>, threadPool: NIOThreadPool, logger: Logger) {
        self.pool = pool
        self.threadPool = threadPool
        self.logger = logger
    }

    /// Opens the database (creating it), applies the migrations and fills the pool.
    public static func open(_ configuration: Configuration, logger: Logger) async throws -> SQLiteStore {
        let size = max(1, configuration.poolSize)
        let threadPool = NIOThreadPool(numberOfThreads: size)
        threadPool.start()
        var connections: [SQLiteConnection] = []
        for _ in 0..<size {
            let connection = try await SQLiteConnection.open(
                storage: .file(path: configuration.path),
                threadPool: threadPool,
                logger: logger,
                on: MultiThreadedEventLoopGroup.singleton.any()
            )
            // A connection waits up to 5 s for another's write lock instead of failing at once.
            _ = try await connection.query("PRAGMA busy_timeout = 5000")
            _ = try await connection.query("PRAGMA synchronous = \(configuration.synchronous == "normal" ? "NORMAL" : "FULL")")
            connections.append(connection)
        }
        _ = try await connections[0].query("PRAGMA journal_mode = WAL")
        try await SQLMigrations.apply(to: SQLiteExecutor(connection: connections[0]), dialect: .sqlite, logger: logger)
        let pool = ConnectionPool(connections: connections, acquireTimeout: .seconds(configuration.acquireTimeout))
        logger.info(
            "telemetry store open",
            metadata: ["iotgw.storage.backend": "sqlite", "iotgw.storage.path": "\(configuration.path)", "iotgw.storage.pool.size": "\(connections.count)"]
        )
        return SQLiteStore(pool: pool, threadPool: threadPool, logger: logger)
    }

    public var isReachable: Bool { reachable.load(ordering: .relaxed) }

    /// The most pool connections lent out at once since start.
    public var peakConnectionsInUse: Int { pool.peakInUse }

    public func insert(_ records: [TelemetryRecord]) async throws {
        guard !records.isEmpty else { return }
        do {
            try await pool.withConnection { connection in
                _ = try await connection.query("BEGIN IMMEDIATE")
                do {
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
                    _ = try await connection.query("COMMIT")
                } catch {
                    _ = try? await connection.query("ROLLBACK")
                    throw error
                }
            }
            reachable.store(true, ordering: .relaxed)
        } catch {
            reachable.store(false, ordering: .relaxed)
            throw error
        }
    }

    private static let maxRowsPerStatement = 200
    private static let maxBytesPerStatement = 1_048_576

    private static func insertRows(_ rows: ArraySlice<TelemetryRecord>, on connection: SQLiteConnection) async throws {
        var binds: [SQLiteData] = []
        binds.reserveCapacity(rows.count * 7)
        for record in rows {
            binds.append(.integer(Int(record.receivedAt)))
            binds.append(.text(record.clientID))
            binds.append(.text(record.topic))
            binds.append(.integer(Int(record.qos.rawValue)))
            binds.append(.integer(record.retain ? 1 : 0))
            binds.append(.blob(record.payload))
            binds.append(record.properties.map { .blob($0) } ?? .null)
        }
        let values = Array(repeating: "(?, ?, ?, ?, ?, ?, ?)", count: rows.count).joined(separator: ", ")
        _ = try await connection.query(
            "INSERT INTO messages (received_at, client_id, topic, qos, retain, payload, properties) VALUES \(values)",
            binds
        )
    }

    public func messages(topic: String?, since: Int64?, afterID: Int64?, limit: Int) async throws -> [StoredTelemetry] {
        var conditions: [String] = []
        var binds: [SQLiteData] = []
        if let topic {
            conditions.append("topic = ?")
            binds.append(.text(topic))
        }
        if let since {
            conditions.append("received_at >= ?")
            binds.append(.integer(Int(since)))
        }
        if let afterID {
            conditions.append("id > ?")
            binds.append(.integer(Int(afterID)))
        }
        binds.append(.integer(limit))
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let rows = try await query(
            "SELECT id, received_at, client_id, topic, qos, retain, payload, properties FROM messages \(whereClause) ORDER BY id LIMIT ?",
            binds
        )
        return rows.compactMap { row in
            guard let id = row.column("id")?.integer, let receivedAt = row.column("received_at")?.integer,
                let clientID = row.column("client_id")?.string, let topic = row.column("topic")?.string,
                let qosValue = row.column("qos")?.integer, let qos = MQTTQoS(rawValue: UInt8(clamping: qosValue))
            else { return nil }
            let payload = row.column("payload")?.blob ?? ByteBuffer()
            let properties = row.column("properties")?.blob
            return StoredTelemetry(
                id: Int64(id),
                record: TelemetryRecord(
                    receivedAt: Int64(receivedAt),
                    clientID: clientID,
                    topic: topic,
                    qos: qos,
                    retain: (row.column("retain")?.integer ?? 0) != 0,
                    payload: payload,
                    properties: properties
                )
            )
        }
    }

    /// Runs a read query through the pool (admin API, tests).
    public func query(_ sql: String, _ binds: [SQLiteData] = []) async throws -> [SQLiteRow] {
        try await pool.withConnection { connection in
            try await connection.query(sql, binds)
        }
    }

    /// Closes every connection.
    public func close() async {
        for connection in pool.drain() {
            try? await connection.close()
        }
        try? await threadPool.shutdownGracefully()
    }
}

/// Runs migration statements on one SQLite connection.
struct SQLiteExecutor: SQLExecutor {
    let connection: SQLiteConnection

    func execute(_ sql: String) async throws {
        _ = try await connection.query(sql)
    }

    func appliedVersions() async throws -> Set<Int> {
        let rows = try await connection.query("SELECT version FROM schema_migrations")
        return Set(rows.compactMap { $0.column("version")?.integer })
    }

    func recordVersion(_ version: Int, name: String) async throws {
        _ = try await connection.query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, strftime('%s','now'))",
            [.integer(version), .text(name)]
        )
    }
}

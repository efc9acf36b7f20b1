public import GatewayCore
public import Logging
import NIOCore
import NIOPosix
import SQLiteNIO
import Synchronization

/// The embedded default backend: SQLite in WAL mode, under the configured data directory.
///
/// Every libsqlite3 call runs on the database's own thread pool (sqlite-nio), never on an event loop.
/// All use goes through one ``ConnectionPool`` of `pool.size` connections.
public final class SQLiteBackend: SQLDatabase {
    /// How the SQLite database is set up.
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
    /// The database's own blocking-I/O threads, one per connection. A connection waiting for SQLite's
    /// write lock (busy_timeout) sleeps on its thread; with fewer threads than connections, waiters
    /// could occupy every thread while the lock holder's next statement waits for one.
    let threadPool: NIOThreadPool
    /// Telemetry's own connection and thread (``SQLiteTelemetryWriter``): one of the `pool.size`
    /// connections when there are at least two; with one, telemetry shares it (the generic path).
    let telemetryWriter: SQLiteTelemetryWriter?
    /// The close in progress or done (``close()``).
    private let closingTask = Mutex<Task<Void, Never>?>(nil)

    public var dialect: SQLDialect { .sqlite }
    public var poolSize: Int { pool.size + (telemetryWriter == nil ? 0 : 1) }
    public var peakConnectionsInUse: Int { pool.peakInUse }

    private init(pool: ConnectionPool<SQLiteConnection>, threadPool: NIOThreadPool, telemetryWriter: SQLiteTelemetryWriter?, logger: Logger) {
        self.pool = pool
        self.threadPool = threadPool
        self.telemetryWriter = telemetryWriter
        self.logger = logger
    }

    /// Opens the database (creating it and its directory), applies the migrations and fills the pool.
    public static func open(_ configuration: Configuration, logger: Logger) async throws -> SQLiteBackend {
        let directory = configuration.path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty { try FileSystem.createDirectory(directory) }
        let size = max(1, configuration.poolSize)
        // With two or more connections, one is the telemetry writer's; the rest are pooled.
        let pooled = size >= 2 ? size - 1 : 1
        let threadPool = NIOThreadPool(numberOfThreads: pooled)
        threadPool.start()
        var connections: [SQLiteConnection] = []
        do {
            for _ in 0..<pooled {
                let connection = try await SQLiteConnection.open(
                    storage: .file(path: configuration.path),
                    threadPool: threadPool,
                    logger: logger,
                    on: MultiThreadedEventLoopGroup.singleton.any()
                )
                connections.append(connection)
                // A connection waits up to 5 s for another's write lock instead of failing at once.
                _ = try await connection.query("PRAGMA busy_timeout = 5000")
                _ = try await connection.query("PRAGMA synchronous = \(configuration.synchronous == "normal" ? "NORMAL" : "FULL")")
            }
            _ = try await connections[0].query("PRAGMA journal_mode = WAL")
        } catch {
            for connection in connections { try? await connection.close() }
            try? await threadPool.shutdownGracefully()
            throw error
        }
        let pool = ConnectionPool(connections: connections, acquireTimeout: .seconds(configuration.acquireTimeout))
        do {
            try await SQLMigrations.apply(to: MigrationDatabase(pool: pool), logger: logger)
        } catch {
            _ = await pool.close(waitingAtMost: .zero) { try? await $0.close() }
            try? await threadPool.shutdownGracefully()
            throw error
        }
        var writer: SQLiteTelemetryWriter?
        do {
            if size >= 2 {
                writer = try await SQLiteTelemetryWriter.open(path: configuration.path, synchronous: configuration.synchronous)
            }
        } catch {
            _ = await pool.close(waitingAtMost: .zero) { try? await $0.close() }
            try? await threadPool.shutdownGracefully()
            throw error
        }
        let database = SQLiteBackend(pool: pool, threadPool: threadPool, telemetryWriter: writer, logger: logger)
        logger.info(
            "database open",
            metadata: ["iotgw.storage.backend": "sqlite", "iotgw.storage.path": "\(configuration.path)", "iotgw.storage.pool.size": "\(size)"]
        )
        return database
    }

    public func withConnection<T: Sendable>(_ body: (any SQLConnection) async throws -> T) async throws -> T {
        try await pool.withConnection { connection in
            try await body(PooledSQLiteConnection(connection: connection))
        }
    }

    public func insertTelemetry(_ records: [TelemetryRecord]) async throws {
        if let telemetryWriter {
            try await telemetryWriter.insert(records)
        } else {
            try await insertTelemetryOnPool(records)
        }
    }

    /// Closes every connection and stops the thread pools. Safe to call more than once and from several
    /// tasks: the first call closes, the others wait for it (a second close stopping the thread pool
    /// under the first left connections open).
    public func close() async {
        let closing = closingTask.withLock { task in
            if let task { return task }
            let started = Task { await self.closeOnce() }
            task = started
            return started
        }
        await closing.value
    }

    private func closeOnce() async {
        await telemetryWriter?.close()
        let abandoned = await pool.close(waitingAtMost: .seconds(5)) { connection in
            do {
                try await connection.close()
            } catch {
                logger.warning("closing a database connection failed", metadata: ["error": "\(error)"])
            }
        }
        if abandoned > 0 {
            logger.warning("database connections still in use at close", metadata: ["iotgw.db.connections": "\(abandoned)"])
        }
        try? await threadPool.shutdownGracefully()
    }
}

/// The pool alone as an ``SQLDatabase``, for the migrations, which run before the telemetry writer
/// opens (its statement needs the `messages` table).
private struct MigrationDatabase: SQLDatabase {
    let pool: ConnectionPool<SQLiteConnection>

    var dialect: SQLDialect { .sqlite }
    var poolSize: Int { pool.size }
    var peakConnectionsInUse: Int { pool.peakInUse }

    func withConnection<T: Sendable>(_ body: (any SQLConnection) async throws -> T) async throws -> T {
        try await pool.withConnection { connection in
            try await body(PooledSQLiteConnection(connection: connection))
        }
    }

    func close() async {}
}

/// A borrowed SQLite connection speaking ``SQLValue``.
struct PooledSQLiteConnection: SQLConnection {
    let connection: SQLiteConnection

    func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow] {
        let rows = try await connection.query(sql, binds.map(Self.sqliteData))
        guard let first = rows.first else { return [] }
        let columns = first.columns.map(\.name)
        return rows.map { row in SQLRow(columns: columns, values: row.columns.map { Self.value($0.data) }) }
    }

    static func sqliteData(_ value: SQLValue) -> SQLiteData {
        switch value {
        case .null: .null
        case .integer(let value): .integer(Int(value))
        case .real(let value): .float(value)
        case .text(let value): .text(value)
        case .blob(let value): .blob(value)
        }
    }

    static func value(_ data: SQLiteData) -> SQLValue {
        switch data {
        case .null: .null
        case .integer(let value): .integer(Int64(value))
        case .float(let value): .real(value)
        case .text(let value): .text(value)
        case .blob(let value): .blob(value)
        }
    }
}

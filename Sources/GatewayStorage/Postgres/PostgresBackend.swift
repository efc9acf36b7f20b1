public import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization

/// PostgreSQL behind postgres-nio's `PostgresClient` (its connection pool reconnects with backoff).
///
/// Every use goes through a permit pool, a ``ConnectionPool`` of `poolSize` permits, so waits for a
/// connection are bounded by the acquire timeout and measured by the same `iotgw_db_pool_*` metrics as
/// SQLite; the client itself is capped at `poolSize` connections (minimum and maximum), so the server
/// never sees more sessions from one gateway, whatever the number of devices.
///
/// The client's background work (`PostgresClient.run()`) runs in a task this backend owns: started by
/// ``open(_:logger:)``, cancelled and awaited by ``close()``. It is a detached task on purpose: it must
/// not inherit a ServiceGroup's graceful-shutdown signal, since the ingest queue still commits its last
/// batches after graceful shutdown began; the store closes last (``IngestService``).
public final class PostgresBackend: SQLDatabase {
    /// How to reach the PostgreSQL server.
    public struct Configuration: Sendable, Hashable {
        /// Whether and how the connection is encrypted.
        public enum TLSMode: String, Sendable, Hashable, CaseIterable {
            /// Plain TCP.
            case disable
            /// TLS when the server offers it (verified as with `require`), plain TCP otherwise.
            case prefer
            /// TLS or no connection; the server certificate is verified against the system's trust
            /// roots and the host name (NIOSSL's default client verification).
            case require
        }

        /// Server host name or address. Default `127.0.0.1`.
        public var host: String = "127.0.0.1"
        /// Server port. Default 5432.
        public var port: Int = 5432
        /// Role to log in as.
        public var user: String
        /// Password; nil when the server asks for none.
        public var password: String?
        /// Database to open.
        public var database: String
        /// Encryption. Default `disable`.
        public var tls: TLSMode = .disable
        /// How long start-up keeps trying to reach the server, and the TCP connect timeout of each
        /// attempt, in seconds. Default 10.
        public var connectTimeout: Double = 10
        /// Connections in the pool (the client's minimum and maximum). Default 4.
        public var poolSize: Int = 4
        /// The longest a caller waits for a connection, in seconds (for a free permit, and again for
        /// the client to hand over a live connection while it reconnects). Default 5.
        public var acquireTimeout: Double = 5
        /// `application_name` of every session, as `pg_stat_activity` shows it. Default `iotgw`.
        public var applicationName: String = "iotgw"

        public init(user: String, password: String?, database: String) {
            self.user = user
            self.password = password
            self.database = database
        }

        /// `host:port`, for logs and error messages.
        public var endpoint: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// Thrown when the server cannot be reached: at start-up after `connect_timeout`, at run time when
    /// the client has no live connection to hand over within the acquire timeout (an outage; the ingest
    /// queue retries with backoff and readiness reports it).
    public struct Unavailable: Error, CustomStringConvertible {
        public var endpoint: String
        public var reason: String
        public var description: String { "PostgreSQL at \(endpoint) is unavailable: \(reason)" }
    }

    let client: PostgresClient
    let permits: ConnectionPool<Int>
    let configuration: Configuration
    let logger: Logger
    private let runTask: Task<Void, Never>
    private let leaseTimeout: Duration

    public var dialect: SQLDialect { .postgres }
    public var poolSize: Int { permits.size }
    public var peakConnectionsInUse: Int { permits.peakInUse }

    private init(client: PostgresClient, runTask: Task<Void, Never>, configuration: Configuration, logger: Logger) {
        self.client = client
        self.runTask = runTask
        self.configuration = configuration
        self.logger = logger
        let size = max(1, configuration.poolSize)
        self.permits = ConnectionPool(connections: Array(0..<size), acquireTimeout: .seconds(configuration.acquireTimeout))
        self.leaseTimeout = .seconds(configuration.acquireTimeout)
    }

    /// Checks that the server is reachable (retrying connection failures until `connect_timeout`;
    /// authentication and other server errors fail at once), starts the client, and applies the
    /// migrations (under an advisory lock, so gateways starting together on one database do not race).
    /// - Throws: ``Unavailable`` naming `host:port` when the server cannot be reached or refuses us.
    public static func open(_ configuration: Configuration, logger: Logger) async throws -> PostgresBackend {
        let tls = try tlsSettings(configuration.tls)
        try await probe(configuration, tls: tls.connection, logger: logger)

        var clientConfiguration = PostgresClient.Configuration(
            host: configuration.host,
            port: configuration.port,
            username: configuration.user,
            password: configuration.password,
            database: configuration.database,
            tls: tls.client
        )
        let size = max(1, configuration.poolSize)
        clientConfiguration.options.minimumConnections = size
        clientConfiguration.options.maximumConnections = size
        clientConfiguration.options.connectTimeout = .seconds(configuration.connectTimeout)
        clientConfiguration.options.additionalStartupParameters = [("application_name", configuration.applicationName)]
        // The connections get an event loop of their own. On the gateway's loops every round trip waits
        // behind whatever MQTT reads are queued there: a BEGIN (in a staged-batch experiment that was
        // dropped) took 3-22 ms while 10 publishers sent at full speed, and the telemetry commit p50 was
        // 20-28 ms there against 18-20 ms on its own loop.
        let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = PostgresClient(configuration: clientConfiguration, eventLoopGroup: eventLoopGroup, backgroundLogger: logger)
        // Owned by the backend: cancelled and awaited in close(). Detached, so that it does not inherit
        // a graceful-shutdown signal (see the type's documentation).
        let runTask = Task.detached {
            await client.run()
            try? await eventLoopGroup.shutdownGracefully()
        }
        let database = PostgresBackend(client: client, runTask: runTask, configuration: configuration, logger: logger)
        do {
            // The pool connects in the background: wait for its first connection as long as start-up
            // may take (connect_timeout), not just acquire_timeout, before the migrations lease one.
            try await database.permits.withConnection { _ in
                try await database.withLease(timeout: .seconds(configuration.connectTimeout)) { connection in
                    _ = try await PooledPostgresConnection(connection: connection, logger: logger).query("SELECT 1", [])
                }
            }
            try await SQLMigrations.apply(to: database, logger: logger)
        } catch {
            await database.close()
            throw error
        }
        logger.info(
            "database open",
            metadata: [
                "iotgw.storage.backend": "postgres", "iotgw.storage.endpoint": "\(configuration.endpoint)",
                "iotgw.storage.database": "\(configuration.database)", "iotgw.storage.pool.size": "\(size)",
            ]
        )
        return database
    }

    public func withConnection<T: Sendable>(_ body: (any SQLConnection) async throws -> T) async throws -> T {
        try await withPostgresConnection { connection in
            try await body(PooledPostgresConnection(connection: connection, logger: logger))
        }
    }

    /// Lends a pooled connection as postgres-nio's own type, for what ``SQLConnection`` cannot express
    /// (array binds of the telemetry insert); bounded, counted and timed out like ``withConnection(_:)``.
    func withPostgresConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await permits.withConnection { _ in
            try await withLease(timeout: leaseTimeout, body)
        }
    }

    /// Stops the client (closing its connections); waiting callers fail.
    public func close() async {
        _ = permits.drain()
        runTask.cancel()
        await runTask.value
    }

    // MARK: - Leasing with a bound

    /// Where a lease stands: the first of "leased" and "expired" wins, exactly once.
    private final class LeaseRace: Sendable {
        static let waiting = 0
        static let leased = 1
        static let expired = 2
        let state = Atomic<Int>(waiting)

        func win(_ outcome: Int) -> Bool {
            state.compareExchange(expected: Self.waiting, desired: outcome, ordering: .acquiringAndReleasing).exchanged
        }
    }

    /// `body` as the child task that runs it can hold it.
    ///
    /// `@unchecked Sendable` because the closure is not: it is called exactly once, in one child task of
    /// a task group that ``withLease(timeout:_:)`` awaits before returning, so it never runs
    /// concurrently with its caller, and `withoutActuallyEscaping` checks that it does not outlive the call.
    private struct LeaseBody<T>: @unchecked Sendable {
        let call: (PostgresConnection) async throws -> T
    }

    /// Runs `body` on a connection leased from the client, waiting at most `timeout` (the acquire
    /// timeout, or connect_timeout at start-up) for the lease. The client's own wait is not bounded
    /// that way: while the server is down it queues requests until its circuit breaker opens (a
    /// minute), which would hide an outage from the ingest queue and readiness for that long.
    private func withLease<T: Sendable>(timeout: Duration, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await withoutActuallyEscaping(body) { body in
            let body = LeaseBody(call: body)
            let race = LeaseRace()
            let client = client
            let endpoint = configuration.endpoint
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask {
                    try await client.withConnection { connection in
                        guard race.win(LeaseRace.leased) else {
                            throw Unavailable(endpoint: endpoint, reason: "no connection within \(timeout)")
                        }
                        return try await body.call(connection)
                    }
                }
                group.addTask {
                    do {
                        try await Task.sleep(for: timeout)
                    } catch {
                        return nil  // cancelled: the body finished
                    }
                    if race.win(LeaseRace.expired) {
                        throw Unavailable(endpoint: endpoint, reason: "no connection within \(timeout)")
                    }
                    return nil
                }
                // The lease's result (a value or its error), or the timer's error; a timer that found
                // the lease in time returns nil.
                while let result = try await group.next() {
                    if let value = result {
                        group.cancelAll()
                        return value
                    }
                }
                preconditionFailure("the lease task ended without a result")
            }
        }
    }

    // MARK: - Start-up

    private static func tlsSettings(
        _ mode: Configuration.TLSMode
    ) throws -> (client: PostgresClient.Configuration.TLS, connection: PostgresConnection.Configuration.TLS) {
        switch mode {
        case .disable:
            return (.disable, .disable)
        case .prefer:
            let tls = TLSConfiguration.makeClientConfiguration()
            return (.prefer(tls), .prefer(try NIOSSLContext(configuration: tls)))
        case .require:
            let tls = TLSConfiguration.makeClientConfiguration()
            return (.require(tls), .require(try NIOSSLContext(configuration: tls)))
        }
    }

    /// One connection, opened and closed, before the pool starts: the only way to surface why the
    /// server cannot be used (the pool's lease only waits), and to refuse to start instead of
    /// acknowledging nothing. Connection-level failures (refused, timed out, reset) are retried until
    /// `connectTimeout`, since the database may be starting beside the gateway; anything the server
    /// answers (authentication, unknown database, TLS not offered with `require`) fails at once.
    private static func probe(_ configuration: Configuration, tls: PostgresConnection.Configuration.TLS, logger: Logger) async throws {
        var connectionConfiguration = PostgresConnection.Configuration(
            host: configuration.host,
            port: configuration.port,
            username: configuration.user,
            password: configuration.password,
            database: configuration.database,
            tls: tls
        )
        connectionConfiguration.options.connectTimeout = .nanoseconds(Int64(configuration.connectTimeout * 1_000_000_000))
        connectionConfiguration.options.additionalStartupParameters = [("application_name", configuration.applicationName)]
        let deadline = ContinuousClock.now + .seconds(configuration.connectTimeout)
        var attempt = 0
        while true {
            attempt += 1
            do {
                let connection = try await PostgresConnection.connect(configuration: connectionConfiguration, id: 0, logger: logger)
                try? await connection.close()
                return
            } catch let error as PSQLError where error.code != .connectionError {
                // The server answered: a refusal (authentication, unknown database, no TLS) is not
                // going to change by waiting.
                throw Unavailable(endpoint: configuration.endpoint, reason: Self.describe(error))
            } catch {
                let remaining = ContinuousClock.now.duration(to: deadline)
                if remaining <= .zero {
                    throw Unavailable(
                        endpoint: configuration.endpoint,
                        reason: "not reachable within connect_timeout (\(configuration.connectTimeout) s, \(attempt) attempts): \(Self.describe(error))"
                    )
                }
                if attempt == 1 {
                    logger.notice(
                        "PostgreSQL not reachable yet; retrying until connect_timeout",
                        metadata: ["iotgw.storage.endpoint": "\(configuration.endpoint)", "error": "\(Self.describe(error))"]
                    )
                }
                try await Task.sleep(for: min(.milliseconds(500), remaining))
            }
        }
    }

    /// A readable reason: the server's message for server errors, the underlying network error otherwise.
    /// (PSQLError's own description hides details on purpose.)
    static func describe(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        if let info = error.serverInfo, let message = info[.message] {
            return "\(message) (SQLSTATE \(info[.sqlState] ?? "?"))"
        }
        if let underlying = error.underlying { return "\(error.code): \(underlying)" }
        return "\(error.code)"
    }
}

/// A borrowed PostgreSQL connection speaking ``SQLValue``.
struct PooledPostgresConnection: SQLConnection {
    let connection: PostgresConnection
    let logger: Logger

    /// A column type this layer does not map to ``SQLValue``.
    struct UnsupportedColumnType: Error, CustomStringConvertible {
        var column: String
        var type: PostgresDataType
        var description: String { "column \(column) has type \(type), which the storage layer does not read" }
    }

    func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow] {
        var bindings = PostgresBindings(capacity: binds.count)
        for value in binds {
            switch value {
            case .null: bindings.appendNull()
            case .integer(let value): bindings.append(value)
            case .real(let value): bindings.append(value)
            case .text(let value): bindings.append(value)
            case .blob(let value): bindings.append(value)
            }
        }
        let query = PostgresQuery(unsafeSQL: sql, binds: bindings)
        let (connection, logger) = (connection, logger)
        return try await ClosedConnectionGuard.run(on: connection) {
            let rows = try await connection.query(query, logger: logger)
            var result: [SQLRow] = []
            var columns: [String]?
            for try await row in rows {
                var values: [SQLValue] = []
                values.reserveCapacity(row.count)
                for cell in row {
                    values.append(try Self.value(cell))
                }
                if columns == nil { columns = row.map(\.columnName) }
                result.append(SQLRow(columns: columns ?? [], values: values))
            }
            return result
        }
    }

    /// Decodes a cell by its column's data type.
    static func value(_ cell: PostgresCell) throws -> SQLValue {
        guard let bytes = cell.bytes else { return .null }
        switch cell.dataType {
        case .int2: return .integer(Int64(try cell.decode(Int16.self)))
        case .int4: return .integer(Int64(try cell.decode(Int32.self)))
        case .int8: return .integer(try cell.decode(Int64.self))
        case .float4, .float8: return .real(try cell.decode(Double.self))
        case .bool: return .integer(try cell.decode(Bool.self) ? 1 : 0)
        case .bytea: return .blob(bytes)
        case .text, .varchar, .bpchar, .name: return .text(try cell.decode(String.self))
        case .void: return .null
        default: throw UnsupportedColumnType(column: cell.columnName, type: cell.dataType)
        }
    }
}

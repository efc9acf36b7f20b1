public import GatewayCore
public import Logging
public import ServiceLifecycle

/// Runs the ingest queue's batch writer as a `Service`.
///
/// On graceful shutdown it stops accepting records, commits everything queued (so every acknowledged
/// message is in the database), then closes the store. List it before the network service in the
/// ServiceGroup: groups shut down in reverse order, so connections drain first and the store closes last.
public struct IngestService: Service {
    let queue: IngestQueue
    let close: @Sendable () async -> Void
    let logger: Logger

    /// - Parameters:
    ///   - queue: the ingest queue whose writer this runs.
    ///   - close: closes the store once the queue is flushed.
    public init(queue: IngestQueue, logger: Logger, close: @escaping @Sendable () async -> Void) {
        self.queue = queue
        self.logger = logger
        self.close = close
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await queue.run()
        } onGracefulShutdown: {
            queue.close()
        }
        logger.info("ingest queue flushed; closing the telemetry store")
        await close()
    }
}

/// Which database backs the stores, and how to reach it.
public enum DatabaseConfiguration: Sendable {
    /// The embedded default: one SQLite file.
    case sqlite(SQLiteBackend.Configuration)
    /// A PostgreSQL server, shared by any number of gateways.
    case postgres(PostgresBackend.Configuration)

    /// Opens the database, applies pending migrations and fills the pool.
    public func open(logger: Logger) async throws -> any SQLDatabase {
        switch self {
        case .sqlite(let configuration):
            try await SQLiteBackend.open(configuration, logger: logger)
        case .postgres(let configuration):
            try await PostgresBackend.open(configuration, logger: logger)
        }
    }

    /// Where the database is, for logs and error messages.
    public var location: String {
        switch self {
        case .sqlite(let configuration): configuration.path
        case .postgres(let configuration): "postgres://\(configuration.endpoint)/\(configuration.database)"
        }
    }
}

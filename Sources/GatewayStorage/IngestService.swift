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

extension SQLiteStore {
    /// Opens the SQLite store described by the configuration, creating `dataDirectory` if needed.
    public static func open(
        dataDirectory: String,
        file: String,
        synchronous: String,
        poolSize: Int,
        acquireTimeout: Double,
        logger: Logger
    ) async throws -> SQLiteStore {
        try FileSystem.createDirectory(dataDirectory)
        var configuration = Configuration(path: dataDirectory + "/" + file)
        configuration.poolSize = poolSize
        configuration.acquireTimeout = acquireTimeout
        configuration.synchronous = synchronous
        return try await open(configuration, logger: logger)
    }
}

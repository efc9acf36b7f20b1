public import GatewayCore
public import Logging
public import ServiceLifecycle

/// Runs the broker state journal's batch writer as a `Service`, and closes the database last.
///
/// On graceful shutdown it stops accepting changes, commits everything queued (so every session
/// change, stored message and retained change the broker made is in the database), then closes the
/// database. List it before ``IngestService`` in the ServiceGroup: groups shut down in reverse order,
/// so connections drain first, then telemetry is flushed, then this flushes and closes the pool.
public struct StateJournalService: Service, CustomStringConvertible {
    let journal: StateJournal
    let close: @Sendable () async -> Void
    let logger: Logger

    /// - Parameters:
    ///   - journal: the journal whose writer this runs.
    ///   - close: closes the database once the journal is flushed.
    public init(journal: StateJournal, logger: Logger, close: @escaping @Sendable () async -> Void) {
        self.journal = journal
        self.logger = logger
        self.close = close
    }

    public var description: String { "StateJournalService" }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await journal.run()
        } onGracefulShutdown: {
            journal.close()
        }
        logger.info("session store flushed; closing the database")
        await close()
    }
}

public import GatewayCore
import Logging
import PostgresNIO

extension PostgresBackend {
    /// Inserts `records` with one statement on one pooled connection: every row of the batch in seven
    /// array binds, zipped back into rows by `unnest` (``TelemetryArrayColumn``).
    ///
    /// The generic path (``SQLDatabase/insertTelemetryOnPool(_:)``) needs BEGIN, a 1,400-parameter
    /// INSERT per 200 rows, and COMMIT: a dozen round trips and statement parses for a 2,000-row batch.
    /// One statement is its own transaction, so the batch is committed entirely or not at all, and the
    /// ingest queue's retry after a thrown error never finds half a batch stored.
    ///
    /// Why the success of this one statement means "committed": without BEGIN, the server runs it in an
    /// implicit transaction that it commits on the Sync postgres-nio sends with it, and it holds the
    /// statement's CommandComplete in its output buffer until the ReadyForQuery that follows the commit
    /// (a pipelined extended query is only flushed at Sync or Flush). The errors a commit can still
    /// raise after the statement ran (deferred constraints, serialisation failures) do not exist for
    /// this table at the default isolation level.
    ///
    /// `COPY messages (...) FROM STDIN` was measured against this on the same build and server
    /// (`Benchmarks/scripts/ingest_rate.py`, QoS 0, 3 runs each): unnest 46,600–49,700 rows/s, COPY
    /// 31,900–41,700 rows/s; on batches of 2,000 rows straight from a test: unnest 41,000 rows/s, COPY
    /// 33,000 rows/s, the generic path 14,800 rows/s. postgres-nio 1.33.2's `copyFrom` offers only
    /// COPY's text format, in which every payload byte travels as two hex digits and the server parses
    /// text back into integers and bytea, and it costs an event-loop hop per written chunk and one more
    /// round trip (CopyInResponse before the data); the binary array binds carry the payload bytes as
    /// they are.
    public func insertTelemetry(_ records: [TelemetryRecord]) async throws {
        guard !records.isEmpty else { return }
        let query = PostgresQuery(unsafeSQL: TelemetryArrayColumn.insertSQL, binds: TelemetryArrayColumn.bindings(for: records))
        let logger = logger
        try await withPostgresConnection { connection in
            try await ClosedConnectionGuard.run(on: connection) {
                // Draining the (empty) result surfaces any error the server sends after the statement.
                let rows = try await connection.query(query, logger: logger)
                for try await _ in rows {}
            }
        }
    }
}

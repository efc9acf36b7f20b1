import Metrics

/// Deletes old telemetry (table `messages`) in bounded chunks, oldest first, so a gateway left running for
/// months does not fill its disk.
///
/// Rows are deleted by id range: `id` grows with every insert (and with `received_at`, since the ingest
/// queue commits in arrival order), so the oldest rows are the lowest ids, found through the primary
/// key without scanning the table, and each chunk is one short transaction of at most
/// ``Policy/chunkRows`` rows. Between chunks the writer gets the database back (SQLite has one writer at
/// a time). A pass stops as soon as the lowest id left is young enough and within the row limit.
public final class TelemetryRetention: Sendable {
    /// What is kept.
    public struct Policy: Sendable, Hashable {
        /// Rows older than this many seconds are deleted; 0 keeps them whatever their age.
        public var maxAge: Double
        /// At most this many of the newest rows are kept; 0 means no limit. Counted by id, so gaps
        /// left by rolled-back batches only make the table smaller.
        public var maxRows: Int
        /// Rows deleted per transaction.
        public var chunkRows: Int

        public init(maxAge: Double = 0, maxRows: Int = 0, chunkRows: Int = 5000) {
            self.maxAge = maxAge
            self.maxRows = maxRows
            self.chunkRows = chunkRows
        }

        /// Whether anything is ever deleted.
        public var isEnabled: Bool { maxAge > 0 || maxRows > 0 }
    }

    let database: any SQLDatabase
    public let policy: Policy
    private let deleted = Counter(label: "iotgw_retention_deleted_rows_total")
    private let chunks = Counter(label: "iotgw_retention_chunks_total")

    public init(database: any SQLDatabase, policy: Policy) {
        self.database = database
        self.policy = policy
    }

    /// One pass: deletes chunk after chunk until what is left is within the policy, `maxChunks` chunks
    /// were deleted, or the task is cancelled. Returns the rows deleted.
    /// - Parameters:
    ///   - nowMilliseconds: the current time (ms since the Unix epoch), as `received_at` counts it.
    ///   - pause: awaited between chunks, so inserts are not held off for a whole pass.
    @discardableResult
    public func apply(
        nowMilliseconds: Int64,
        maxChunks: Int = 1000,
        pause: @Sendable () async -> Void = { await Task.yield() }
    ) async throws -> Int {
        guard policy.isEnabled else { return 0 }
        let cutoff = policy.maxAge > 0 ? nowMilliseconds - Int64(policy.maxAge * 1000) : Int64.min
        var total = 0
        for _ in 0..<maxChunks where !Task.isCancelled {
            let bounds = try await database.query("SELECT MIN(id) AS lo, MAX(id) AS hi FROM messages")
            guard let lo = bounds.first?["lo"].integer, let hi = bounds.first?["hi"].integer else { break }
            // Ids below `keepFrom` are over the row limit.
            let keepFrom = policy.maxRows > 0 ? hi - Int64(policy.maxRows) + 1 : Int64.min
            let upper = lo + Int64(policy.chunkRows)
            let range: [SQLValue] = [.integer(lo), .integer(upper)]
            let before = try await database.query("SELECT COUNT(*) AS n FROM messages WHERE id >= $1 AND id < $2", range)
            try await database.query(
                "DELETE FROM messages WHERE id >= $1 AND id < $2 AND (id < $3 OR received_at < $4)",
                [.integer(lo), .integer(upper), .integer(keepFrom), .integer(cutoff)]
            )
            let after = try await database.query("SELECT COUNT(*) AS n FROM messages WHERE id >= $1 AND id < $2", range)
            let left = after.first?["n"].integer ?? 0
            let removed = Int(max(0, (before.first?["n"].integer ?? 0) - left))
            if removed > 0 {
                chunks.increment()
                deleted.increment(by: removed)
            }
            total += removed
            // Rows kept inside this chunk: the oldest row left is young enough, the pass is done.
            if left > 0 || removed == 0 { break }
            await pause()
        }
        return total
    }
}

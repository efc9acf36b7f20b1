import GatewayCore
import GatewayStorage
import Logging
import NIOCore
import Testing

/// Retention on both backends (``TelemetryRetention``), and the ingest queue's intake pause (what low
/// disk space does).
@Suite("Retention and intake pause", .timeLimit(.minutes(2)))
struct RetentionTests {
    /// Rows 0..<count, `received_at` = base + index seconds.
    func insertRows(_ store: SQLTelemetryStore, count: Int, base: Int64) async throws {
        var rows: [TelemetryRecord] = []
        for i in 0..<count {
            var row = record(i)
            row.receivedAt = base + Int64(i) * 1000
            rows.append(row)
        }
        try await store.insert(rows)
    }

    func remaining(_ store: SQLTelemetryStore) async throws -> [Int64] {
        try await store.database.query("SELECT received_at FROM messages ORDER BY id").compactMap { $0["received_at"].integer }
    }

    @Test("max_age deletes exactly the rows older than the cutoff, oldest first, in chunks", arguments: StorageBackend.available)
    func maxAge(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                let base: Int64 = 1_700_000_000_000
                try await insertRows(store, count: 2_345, base: base)
                // Now is base + 3,000 s; max_age 1,000 s: rows 0..<2,000 are older than base + 2,000 s.
                let retention = TelemetryRetention(database: store.database, policy: .init(maxAge: 1000, chunkRows: 300))
                let pauses = Recorder<Int>()
                let deleted = try await retention.apply(nowMilliseconds: base + 3_000_000, pause: { pauses.append(1) })
                #expect(deleted == 2_000)
                let left = try await remaining(store)
                #expect(left == (2_000..<2_345).map { base + Int64($0) * 1000 })
                // 2,000 rows in chunks of 300: 6 full chunks with a pause after each, then the partial one ends the pass.
                #expect(pauses.count == 6)
                // A second pass finds nothing to do.
                #expect(try await retention.apply(nowMilliseconds: base + 3_000_000) == 0)
            }
        }
    }

    @Test("max_rows keeps the newest rows; inserts during the pass are kept", arguments: StorageBackend.available)
    func maxRows(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                let base: Int64 = 1_700_000_000_000
                try await insertRows(store, count: 1_000, base: base)
                let retention = TelemetryRetention(database: store.database, policy: .init(maxRows: 400, chunkRows: 100))
                // A publisher keeps inserting between chunks.
                let inserted = Recorder<Int>()
                let deleted = try await retention.apply(nowMilliseconds: base, pause: {
                    var row = record(10_000 + inserted.count)
                    row.receivedAt = base + 10_000_000
                    try? await store.insert([row])
                    inserted.append(1)
                })
                let left = try await remaining(store)
                // Never fewer than the newest 400 rows; the oldest rows went first.
                #expect(left.count >= 400)
                #expect(deleted == 1_000 + inserted.count - left.count)
                #expect(left.last == base + 10_000_000)
                // The original rows kept are the newest of them, with no gap.
                let kept = left.filter { $0 < base + 10_000_000 }
                let first = Int(((kept.first ?? base) - base) / 1000)
                #expect(kept == (first..<1_000).map { base + Int64($0) * 1000 })
                #expect(first >= 600)
            }
        }
    }

    @Test("A paused intake holds publishers (backpressure) or refuses them (reject); resuming lets them in")
    func intakePause() async {
        for overflow in [IngestConfiguration.Overflow.backpressure, .reject] {
            let store = FakeTelemetryStore()
            var configuration = IngestConfiguration()
            configuration.batchMaxDelay = 0.001
            configuration.overflow = overflow
            let queue = IngestQueue(configuration: configuration, store: store, logger: silentLogger)
            let writer = Task { await queue.run() }
            #expect(await queue.submit(record(0), onCommit: nil) == .accepted)
            queue.setIntakePaused(true)
            #expect(queue.isIntakePaused)
            if overflow == .reject {
                #expect(await queue.submit(record(1), onCommit: nil) == .rejected)
                queue.setIntakePaused(false)
                #expect(await queue.submit(record(2), onCommit: nil) == .accepted)
                await store.waitUntil("2 records committed") { $0.committedRecords.count == 2 }
                #expect(payloads(store.snapshot.committedRecords) == ["m0", "m2"])
            } else {
                let returned = Recorder<Int>()
                let publisher = Task {
                    #expect(await queue.submit(record(1), onCommit: nil) == .accepted)
                    returned.append(1)
                }
                // What was queued before the pause is still written.
                await store.waitUntil("the first record committed") { $0.committedRecords.count == 1 }
                #expect(await staysFalse(for: .milliseconds(200)) { returned.count > 0 }, "submit returned while paused")
                queue.setIntakePaused(false)
                await publisher.value
                await store.waitUntil("both records committed") { $0.committedRecords.count == 2 }
                #expect(payloads(store.snapshot.committedRecords) == ["m0", "m1"])
            }
            queue.close()
            await writer.value
        }
    }
}

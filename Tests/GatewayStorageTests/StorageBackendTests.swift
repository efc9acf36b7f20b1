import Foundation
import GatewayCore
@testable import GatewayStorage
import Logging
import MQTTCodec
import NIOCore
import SQLiteNIO
import Testing

/// `SQLTelemetryStore` on every backend (``StorageBackend/available``): SQLite in a fresh temporary
/// directory, PostgreSQL in a fresh database on the test server. Backend-specific checks are marked.
@Suite("Storage backends", .timeLimit(.minutes(1)))
struct StorageBackendTests {
    /// File descriptors of this process open on exactly `path` (each SQLite connection holds its own).
    func descriptorsOpen(on path: String) -> Int {
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return -1 }
        return entries.filter { entry in
            let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")
            return target == resolved || target == path
        }.count
    }

    @Test("Migrations on an empty database: schema_migrations records them, messages and its index exist", arguments: StorageBackend.available)
    func migrationsFromEmpty(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                let versions = try await store.database.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0["version"].int } == SQLMigrations.all.map(\.version))
                #expect(versions.first?["name"].text?.isEmpty == false)
                #expect(versions.allSatisfy { ($0["applied_at"].int ?? 0) > 1_600_000_000 })
                let expectedColumns = ["id", "received_at", "client_id", "topic", "qos", "retain", "payload", "properties"]
                switch backend {
                case .sqlite:
                    let tables = try await store.database.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                    #expect(Set(tables.compactMap { $0["name"].text }).isSuperset(of: ["messages", "schema_migrations"]))
                    let columns = try await store.database.query("PRAGMA table_info(messages)")
                    #expect(columns.compactMap { $0["name"].text } == expectedColumns)
                    let indexes = try await store.database.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
                    #expect(indexes.compactMap { $0["name"].text }.contains("messages_topic_time"))
                    let indexColumns = try await store.database.query("PRAGMA index_info(messages_topic_time)")
                    #expect(indexColumns.compactMap { $0["name"].text } == ["topic", "received_at"])
                    let journal = try await store.database.query("PRAGMA journal_mode")
                    #expect(journal.first?["journal_mode"].text?.lowercased() == "wal")
                case .postgres:
                    let tables = try await store.database.query(
                        "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = 'public'"
                    )
                    #expect(Set(tables.compactMap { $0["name"].text }).isSuperset(of: ["messages", "schema_migrations"]))
                    let columns = try await store.database.query(
                        """
                        SELECT column_name::text AS name, data_type::text AS type FROM information_schema.columns
                        WHERE table_schema = 'public' AND table_name = 'messages' ORDER BY ordinal_position
                        """
                    )
                    #expect(columns.compactMap { $0["name"].text } == expectedColumns)
                    #expect(
                        columns.compactMap { $0["type"].text }
                            == ["bigint", "bigint", "text", "text", "smallint", "smallint", "bytea", "bytea"]
                    )
                    let indexes = try await store.database.query(
                        "SELECT indexname::text AS name, indexdef FROM pg_indexes WHERE tablename = 'messages'"
                    )
                    let definitions = indexes.map { ($0["name"].text ?? "", $0["indexdef"].text ?? "") }
                    let definition = definitions.first(where: { $0.0 == "messages_topic_time" })?.1 ?? ""
                    #expect(definition.hasSuffix("(topic, received_at)"), "\(definitions)")
                }
            }
        }
    }

    @Test("A second open applies nothing again and keeps the data", arguments: StorageBackend.available)
    func reopenDoesNotReapply(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            let before = try await database.withStore { first in
                try await first.insert([record(1), record(2)])
                return try await first.database.query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
            }

            try await database.withStore { second in
                let after = try await second.database.query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
                #expect(after.count == SQLMigrations.all.count)
                #expect(after.compactMap { $0["version"].int } == before.compactMap { $0["version"].int })
                #expect(after.compactMap { $0["applied_at"].int } == before.compactMap { $0["applied_at"].int })
                let count = try await second.database.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?["n"].int == 2)
                try await second.insert([record(3)])
                let ids = try await second.database.query("SELECT id FROM messages ORDER BY id")
                #expect(ids.compactMap { $0["id"].int } == [1, 2, 3])
            }
        }
    }

    @Test("A batch round-trips every column: payload blob, properties blob or NULL", arguments: StorageBackend.available)
    func roundTrip(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                var properties = ByteBuffer()
                properties.writeBytes([0x05, 0x01, 0x01, 0x03, 0x00, 0x00])  // arbitrary wire bytes, stored as-is
                let records = [
                    TelemetryRecord(
                        receivedAt: 1_700_000_000_123, clientID: "dev-1", topic: "sensors/1/temp", qos: .atLeastOnce,
                        retain: true, payload: ByteBuffer(bytes: [0x00, 0xFF, 0x10, 0x00]), properties: properties
                    ),
                    TelemetryRecord(
                        receivedAt: 1_700_000_000_124, clientID: "dév-2 ✓", topic: "a/b/ü", qos: .exactlyOnce,
                        retain: false, payload: ByteBuffer(string: "21.5"), properties: nil
                    ),
                    TelemetryRecord(
                        receivedAt: 1_700_000_000_125, clientID: "dev-3", topic: "empty", qos: .atMostOnce,
                        retain: false, payload: ByteBuffer(), properties: nil
                    ),
                    TelemetryRecord(
                        receivedAt: 1_700_000_000_126, clientID: "dev-4", topic: "all-bytes", qos: .atLeastOnce,
                        retain: false, payload: ByteBuffer(bytes: Array(0...255)), properties: ByteBuffer()
                    ),
                ]
                try await store.insert(records)
                let rows = try await store.database.query(
                    "SELECT id, received_at, client_id, topic, qos, retain, payload, properties FROM messages ORDER BY id"
                )
                #expect(rows.count == records.count)
                for (row, expected) in zip(rows, records) {
                    #expect(row["received_at"] == .integer(expected.receivedAt))
                    #expect(row["client_id"] == .text(expected.clientID))
                    #expect(row["topic"] == .text(expected.topic))
                    #expect(row["qos"] == .integer(Int64(expected.qos.rawValue)))
                    #expect(row["retain"] == .integer(expected.retain ? 1 : 0))
                    // Binary columns come back as blobs (never as text), the empty payload as an empty blob.
                    #expect(row["payload"] == .blob(expected.payload))
                    if let properties = expected.properties {
                        #expect(row["properties"] == .blob(properties))
                    } else {
                        #expect(row["properties"].isNull == true)
                    }
                }
                // And through the store's own reader (the admin API's path).
                let stored = try await store.messages(topic: nil, since: nil, afterID: nil, limit: 10)
                #expect(stored.map(\.record) == records)
            }
        }
    }

    @Test("Rows with 64 KiB payloads (several statements per transaction) round-trip byte for byte", arguments: StorageBackend.available)
    func largePayloads(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                let records = (0..<40).map { record($0, payloadBytes: 64 * 1024) }
                try await store.insert(records)
                let rows = try await store.database.query("SELECT payload, length(payload) AS n FROM messages ORDER BY id")
                #expect(rows.count == 40)
                #expect(rows.allSatisfy { $0["n"].int == 64 * 1024 })
                for (row, expected) in zip(rows, records) {
                    #expect(row["payload"].blob == expected.payload)
                }
            }
        }
    }

    @Test("Empty insert is a no-op", arguments: StorageBackend.available)
    func emptyInsert(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                try await store.insert([])
                let count = try await store.database.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?["n"].int == 0)
            }
        }
    }

    @Test("The pool lends at most pool.size connections under 50 concurrent inserts", arguments: StorageBackend.available)
    func poolBound(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            let poolSize = 3
            // This test is about the bound, not speed: a generous acquire timeout keeps a loaded machine
            // (the whole suite runs in parallel) from failing waits that are only slow.
            try await database.withStore(poolSize: poolSize, acquireTimeout: 120) { store in
                #expect(store.database.poolSize == poolSize)
                if case .sqlite(let path) = database {
                    #expect(descriptorsOpen(on: path) == poolSize, "one file descriptor per pooled connection")
                }
                let started = ContinuousClock.now
                let errors = await insertConcurrently(store, clients: 50)
                #expect(errors.isEmpty, "\(errors.count) of 50 inserts failed: \(Dictionary(errors.map { ($0, 1) }, uniquingKeysWith: +))")
                print("pool (\(backend)): 50 concurrent 4-row inserts in \(ContinuousClock.now - started)")
                print("pool (\(backend)): size \(poolSize), peak in use \(store.database.peakConnectionsInUse) under 50 concurrent inserts")
                #expect(store.database.peakConnectionsInUse <= poolSize)
                #expect(store.database.peakConnectionsInUse >= 1)
                if case .sqlite(let path) = database {
                    #expect(descriptorsOpen(on: path) == poolSize, "connections opened beyond the pool")
                }
                let count = try await store.database.query("SELECT COUNT(*) AS n, COUNT(DISTINCT client_id) AS c FROM messages")
                #expect(count.first?["n"].int == 200)
                #expect(count.first?["c"].int == 50)
            }
            if case .sqlite(let path) = database {
                #expect(descriptorsOpen(on: path) == 0, "close() leaves connections open")
            }
        }
    }

    @Test("Waiting for a connection is bounded by acquire_timeout", arguments: StorageBackend.available)
    func acquireTimeout(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore(poolSize: 1, acquireTimeout: 0.2) { store in
                let gate = AsyncStream<Void>.makeStream()
                let entered = AsyncStream<Void>.makeStream()
                let holder = Task {
                    try await store.database.withConnection { _ in
                        entered.continuation.yield()
                        for await _ in gate.stream { break }
                    }
                }
                for await _ in entered.stream { break }
                let started = ContinuousClock.now
                let error = await #expect(throws: (any Error).self) {
                    try await store.insert([record(0)])
                }
                #expect(
                    error is ConnectionPool<SQLiteConnection>.AcquireTimeout || error is ConnectionPool<Int>.AcquireTimeout,
                    "\(String(reflecting: error))"
                )
                let waited = ContinuousClock.now - started
                #expect(waited >= .milliseconds(150) && waited < .seconds(3), "waited \(waited)")
                gate.continuation.yield()
                try await holder.value
                // The connection is back: inserts work again.
                try await store.insert([record(1)])
                #expect(store.isReachable)
            }
        }
    }
}

/// `clients` concurrent 4-row inserts into `store`; the errors of those that failed.
func insertConcurrently(_ store: SQLTelemetryStore, clients: Int) async -> [String] {
    await withTaskGroup(of: (any Error)?.self) { group in
        for i in 0..<clients {
            group.addTask {
                do {
                    try await store.insert((0..<4).map { record(i * 4 + $0, clientID: "client-\(i)") })
                    return nil
                } catch {
                    return error
                }
            }
        }
        var errors: [String] = []
        for await error in group {
            if let error { errors.append(String(reflecting: error)) }
        }
        return errors
    }
}

import Foundation
import GatewayCore
@testable import GatewayStorage
import Logging
import MQTTCodec
import NIOCore
import SQLiteNIO
import Testing

/// `SQLiteBackend` and `SQLTelemetryStore` against a database file in a fresh temporary directory.
@Suite("SQLiteBackend", .timeLimit(.minutes(1)))
struct SQLiteBackendTests {
    /// A new empty directory under the system's temporary directory, removed after `body`.
    func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("iotgw-storage-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        return try await body(directory)
    }

    func open(_ path: String, poolSize: Int = 4, acquireTimeout: Double = 5) async throws -> SQLTelemetryStore {
        var configuration = SQLiteBackend.Configuration(path: path)
        configuration.poolSize = poolSize
        configuration.acquireTimeout = acquireTimeout
        return SQLTelemetryStore(database: try await SQLiteBackend.open(configuration, logger: silentLogger))
    }

    /// Opens a store, runs `body`, and closes the store whether `body` threw or not (a pooled
    /// `SQLiteConnection` must be closed before it is deinitialized).
    func withStore<T>(
        _ path: String, poolSize: Int = 4, acquireTimeout: Double = 5, _ body: (SQLTelemetryStore) async throws -> T
    ) async throws -> T {
        let store = try await open(path, poolSize: poolSize, acquireTimeout: acquireTimeout)
        do {
            let result = try await body(store)
            await store.database.close()
            return result
        } catch {
            await store.database.close()
            throw error
        }
    }

    /// File descriptors of this process open on exactly `path` (each SQLite connection holds its own).
    func descriptorsOpen(on path: String) -> Int {
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return -1 }
        return entries.filter { entry in
            let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")
            return target == resolved || target == path
        }.count
    }

    @Test("Migrations on an empty database: schema_migrations holds version 1, messages and its index exist")
    func migrationsFromEmpty() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/iotgw.db"
            try await withStore(path) { store in
                let versions = try await store.database.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0["version"].int } == SQLMigrations.all.map(\.version))
                #expect(SQLMigrations.all.map(\.version) == Array(1...SQLMigrations.all.count))
                #expect(versions.first?["name"].text?.isEmpty == false)
                let tables = try await store.database.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                let tableNames = Set(tables.compactMap { $0["name"].text })
                #expect(tableNames.isSuperset(of: ["messages", "schema_migrations"]))
                let columns = try await store.database.query("PRAGMA table_info(messages)")
                #expect(
                    columns.compactMap { $0["name"].text }
                        == ["id", "received_at", "client_id", "topic", "qos", "retain", "payload", "properties"]
                )
                let indexes = try await store.database.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
                let indexNames = indexes.compactMap { $0["name"].text }
                #expect(indexNames.contains("messages_topic_time"))
                let indexColumns = try await store.database.query("PRAGMA index_info(messages_topic_time)")
                #expect(indexColumns.compactMap { $0["name"].text } == ["topic", "received_at"])
                let journal = try await store.database.query("PRAGMA journal_mode")
                #expect(journal.first?["journal_mode"].text?.lowercased() == "wal")
            }
        }
    }

    @Test("A second open applies nothing again and keeps the data")
    func reopenDoesNotReapply() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/iotgw.db"
            let before = try await withStore(path) { first in
                try await first.insert([record(1), record(2)])
                return try await first.database.query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
            }

            try await withStore(path) { second in
                let after = try await second.database.query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
                #expect(after.count == SQLMigrations.all.count)
                #expect(after.compactMap { $0["version"].int } == SQLMigrations.all.map(\.version))
                #expect(after.map { $0["applied_at"].int } == before.map { $0["applied_at"].int })
                let count = try await second.database.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?["n"].int == 2)
                try await second.insert([record(3)])
                let ids = try await second.database.query("SELECT id FROM messages ORDER BY id")
                #expect(ids.compactMap { $0["id"].int } == [1, 2, 3])
            }
        }
    }

    @Test("A batch round-trips every column: payload blob, properties blob or NULL")
    func roundTrip() async throws {
        try await withTemporaryDirectory { directory in
            try await withStore(directory + "/iotgw.db") { store in
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
                ]
                try await store.insert(records)
                let rows = try await store.database.query(
                    "SELECT id, received_at, client_id, topic, qos, retain, payload, properties FROM messages ORDER BY id"
                )
                #expect(rows.count == 3)
                for (row, expected) in zip(rows, records) {
                    #expect(row["received_at"].int == Int(expected.receivedAt))
                    #expect(row["client_id"].text == expected.clientID)
                    #expect(row["topic"].text == expected.topic)
                    #expect(row["qos"].int == Int(expected.qos.rawValue))
                    #expect(row["retain"].int == (expected.retain ? 1 : 0))
                    // An empty blob may come back as an empty blob or as NULL-free zero bytes; never as text.
                    let payload = row["payload"]
                    #expect(payload.isNull == false, "payload is NOT NULL")
                    #expect(Array((payload.blob ?? ByteBuffer()).readableBytesView) == Array(expected.payload.readableBytesView))
                    if let properties = expected.properties {
                        #expect(row["properties"].blob == properties)
                    } else {
                        #expect(row["properties"].isNull == true)
                    }
                }
            }
        }
    }

    @Test("Rows with 64 KiB payloads (several statements per transaction) round-trip byte for byte")
    func largePayloads() async throws {
        try await withTemporaryDirectory { directory in
            try await withStore(directory + "/iotgw.db") { store in
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

    @Test("Empty insert is a no-op")
    func emptyInsert() async throws {
        try await withTemporaryDirectory { directory in
            try await withStore(directory + "/iotgw.db") { store in
                try await store.insert([])
                let count = try await store.database.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?["n"].int == 0)
            }
        }
    }

    @Test("The pool opens pool.size connections, never more; 50 concurrent inserts use at most pool.size")
    func poolBound() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/iotgw.db"
            let poolSize = 3
            try await withStore(path, poolSize: poolSize) { store in
                #expect(store.database.poolSize == poolSize)
                #expect(descriptorsOpen(on: path) == poolSize, "one file descriptor per pooled connection")
                let started = ContinuousClock.now
                let errors = await withTaskGroup(of: (any Error)?.self) { group in
                    for i in 0..<50 {
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
                #expect(errors.isEmpty, "\(errors.count) of 50 inserts failed: \(Dictionary(errors.map { ($0, 1) }, uniquingKeysWith: +))")
                print("pool: 50 concurrent 4-row inserts in \(ContinuousClock.now - started)")
                print("pool: size \(poolSize), peak in use \(store.database.peakConnectionsInUse) under 50 concurrent inserts")
                #expect(store.database.peakConnectionsInUse <= poolSize)
                #expect(store.database.peakConnectionsInUse >= 1)
                #expect(descriptorsOpen(on: path) == poolSize, "connections opened beyond the pool")
                let count = try await store.database.query("SELECT COUNT(*) AS n, COUNT(DISTINCT client_id) AS c FROM messages")
                #expect(count.first?["n"].int == 200)
                #expect(count.first?["c"].int == 50)
            }
            #expect(descriptorsOpen(on: path) == 0, "close() leaves connections open")
        }
    }

    @Test("Waiting for a connection is bounded by acquire_timeout")
    func acquireTimeout() async throws {
        try await withTemporaryDirectory { directory in
            try await withStore(directory + "/iotgw.db", poolSize: 1, acquireTimeout: 0.2) { store in
                let gate = AsyncStream<Void>.makeStream()
                let entered = AsyncStream<Void>.makeStream()
                let holder = Task {
                    try await store.sqlite.pool.withConnection { _ in
                        entered.continuation.yield()
                        for await _ in gate.stream { break }
                    }
                }
                for await _ in entered.stream { break }
                let started = ContinuousClock.now
                await #expect(throws: ConnectionPool<SQLiteConnection>.AcquireTimeout.self) {
                    try await store.insert([record(0)])
                }
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

extension SQLTelemetryStore {
    /// The SQLite database under this store (these tests open nothing else).
    var sqlite: SQLiteBackend { database as! SQLiteBackend }
}

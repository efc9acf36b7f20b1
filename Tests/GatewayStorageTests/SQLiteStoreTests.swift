import Foundation
import GatewayCore
@testable import GatewayStorage
import Logging
import MQTTCodec
import NIOCore
import SQLiteNIO
import Testing

/// `SQLiteStore` against a database file in a fresh temporary directory.
@Suite("SQLiteStore", .timeLimit(.minutes(1)))
struct SQLiteStoreTests {
    /// A new empty directory under the system's temporary directory, removed after `body`.
    func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("iotgw-storage-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        return try await body(directory)
    }

    func open(_ path: String, poolSize: Int = 4, acquireTimeout: Double = 5) async throws -> SQLiteStore {
        var configuration = SQLiteStore.Configuration(path: path)
        configuration.poolSize = poolSize
        configuration.acquireTimeout = acquireTimeout
        return try await SQLiteStore.open(configuration, logger: silentLogger)
    }

    /// Opens a store, runs `body`, and closes the store whether `body` threw or not (a pooled
    /// `SQLiteConnection` must be closed before it is deinitialized).
    func withStore<T>(
        _ path: String, poolSize: Int = 4, acquireTimeout: Double = 5, _ body: (SQLiteStore) async throws -> T
    ) async throws -> T {
        let store = try await open(path, poolSize: poolSize, acquireTimeout: acquireTimeout)
        do {
            let result = try await body(store)
            await store.close()
            return result
        } catch {
            await store.close()
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
                let versions = try await store.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0.column("version")?.integer } == [1])
                #expect(versions.first?.column("name")?.string?.isEmpty == false)
                let tables = try await store.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                let tableNames = Set(tables.compactMap { $0.column("name")?.string })
                #expect(tableNames.isSuperset(of: ["messages", "schema_migrations"]))
                let columns = try await store.query("PRAGMA table_info(messages)")
                #expect(
                    columns.compactMap { $0.column("name")?.string }
                        == ["id", "received_at", "client_id", "topic", "qos", "retain", "payload", "properties"]
                )
                let indexes = try await store.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
                let indexNames = indexes.compactMap { $0.column("name")?.string }
                #expect(indexNames.contains("messages_topic_time"))
                let indexColumns = try await store.query("PRAGMA index_info(messages_topic_time)")
                #expect(indexColumns.compactMap { $0.column("name")?.string } == ["topic", "received_at"])
                let journal = try await store.query("PRAGMA journal_mode")
                #expect(journal.first?.column("journal_mode")?.string?.lowercased() == "wal")
            }
        }
    }

    @Test("A second open applies nothing again and keeps the data")
    func reopenDoesNotReapply() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/iotgw.db"
            let before = try await withStore(path) { first in
                try await first.insert([record(1), record(2)])
                return try await first.query("SELECT version, applied_at FROM schema_migrations")
            }

            try await withStore(path) { second in
                let after = try await second.query("SELECT version, applied_at FROM schema_migrations")
                #expect(after.count == 1)
                #expect(after.first?.column("version")?.integer == 1)
                #expect(after.first?.column("applied_at")?.integer == before.first?.column("applied_at")?.integer)
                let count = try await second.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?.column("n")?.integer == 2)
                try await second.insert([record(3)])
                let ids = try await second.query("SELECT id FROM messages ORDER BY id")
                #expect(ids.compactMap { $0.column("id")?.integer } == [1, 2, 3])
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
                let rows = try await store.query(
                    "SELECT id, received_at, client_id, topic, qos, retain, payload, properties FROM messages ORDER BY id"
                )
                #expect(rows.count == 3)
                for (row, expected) in zip(rows, records) {
                    #expect(row.column("received_at")?.integer == Int(expected.receivedAt))
                    #expect(row.column("client_id")?.string == expected.clientID)
                    #expect(row.column("topic")?.string == expected.topic)
                    #expect(row.column("qos")?.integer == Int(expected.qos.rawValue))
                    #expect(row.column("retain")?.integer == (expected.retain ? 1 : 0))
                    // An empty blob may come back as an empty blob or as NULL-free zero bytes; never as text.
                    let payload = row.column("payload")
                    #expect(payload?.isNull == false, "payload is NOT NULL")
                    #expect(Array((payload?.blob ?? ByteBuffer()).readableBytesView) == Array(expected.payload.readableBytesView))
                    if let properties = expected.properties {
                        #expect(row.column("properties")?.blob == properties)
                    } else {
                        #expect(row.column("properties")?.isNull == true)
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
                let rows = try await store.query("SELECT payload, length(payload) AS n FROM messages ORDER BY id")
                #expect(rows.count == 40)
                #expect(rows.allSatisfy { $0.column("n")?.integer == 64 * 1024 })
                for (row, expected) in zip(rows, records) {
                    #expect(row.column("payload")?.blob == expected.payload)
                }
            }
        }
    }

    @Test("Empty insert is a no-op")
    func emptyInsert() async throws {
        try await withTemporaryDirectory { directory in
            try await withStore(directory + "/iotgw.db") { store in
                try await store.insert([])
                let count = try await store.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?.column("n")?.integer == 0)
            }
        }
    }

    @Test("The pool opens pool.size connections, never more; 50 concurrent inserts use at most pool.size")
    func poolBound() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/iotgw.db"
            let poolSize = 3
            try await withStore(path, poolSize: poolSize) { store in
                #expect(store.pool.size == poolSize)
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
                print("pool: size \(poolSize), peak in use \(store.peakConnectionsInUse) under 50 concurrent inserts")
                #expect(store.peakConnectionsInUse <= poolSize)
                #expect(store.peakConnectionsInUse >= 1)
                #expect(descriptorsOpen(on: path) == poolSize, "connections opened beyond the pool")
                let count = try await store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT client_id) AS c FROM messages")
                #expect(count.first?.column("n")?.integer == 200)
                #expect(count.first?.column("c")?.integer == 50)
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
                    try await store.pool.withConnection { _ in
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

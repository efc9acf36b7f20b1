import GatewayCore
import MQTTCodec
import NIOCore
import NIOPosix
import VaporCSQLite

/// The SQLite backend's telemetry writer: a connection of its own with the `messages` INSERT prepared
/// once, one transaction per batch, and a thread of its own.
///
/// The generic path (``SQLDatabase/insertTelemetry(_:)``) builds a multi-row statement per chunk through
/// sqlite-nio: SQL text, a prepare and an `SQLiteData` per value each time. Here each row is seven binds
/// and one step of the same statement, with the strings and blobs bound straight from the record's
/// storage, and one thread-pool hop per batch.
///
/// It uses the SQLite library that sqlite-nio bundles (`VaporCSQLite`): a second copy of SQLite in the
/// process must never open the same file, or the two would not see each other's POSIX locks.
final class SQLiteTelemetryWriter: @unchecked Sendable {
    // Only touched on `thread`'s one thread, one batch at a time (callers serialise through `insert`,
    // which the ingest queue's single writer calls).
    private let handle: OpaquePointer
    private let insertStatement: OpaquePointer
    private let thread: NIOThreadPool

    private init(handle: OpaquePointer, insertStatement: OpaquePointer, thread: NIOThreadPool) {
        self.handle = handle
        self.insertStatement = insertStatement
        self.thread = thread
    }

    /// Opens the database file (already created and migrated by the backend) for writing telemetry.
    static func open(path: String, synchronous: String) async throws -> SQLiteTelemetryWriter {
        let thread = NIOThreadPool(numberOfThreads: 1)
        thread.start()
        do {
            return try await thread.runIfActive {
                var handle: OpaquePointer?
                let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX
                guard sqlite_nio_sqlite3_open_v2(path, &handle, flags, nil) == SQLITE_OK, let handle else {
                    let message = handle.map { String(cString: sqlite_nio_sqlite3_errmsg($0)) } ?? "out of memory"
                    sqlite_nio_sqlite3_close(handle)
                    throw SQLiteWriterError(operation: "open \(path)", message: message)
                }
                do {
                    // The same rules as the pool's connections: wait up to 5 s for another connection's
                    // write lock, and the configured durability.
                    try execute(handle, "PRAGMA busy_timeout = 5000")
                    try execute(handle, "PRAGMA synchronous = \(synchronous == "normal" ? "NORMAL" : "FULL")")
                    var statement: OpaquePointer?
                    let sql = "INSERT INTO messages (received_at, client_id, topic, qos, retain, payload, properties) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    guard sqlite_nio_sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK,
                        let statement
                    else {
                        throw SQLiteWriterError(operation: "prepare the telemetry insert", message: String(cString: sqlite_nio_sqlite3_errmsg(handle)))
                    }
                    return SQLiteTelemetryWriter(handle: handle, insertStatement: statement, thread: thread)
                } catch {
                    sqlite_nio_sqlite3_close_v2(handle)
                    throw error
                }
            }
        } catch {
            try? await thread.shutdownGracefully()
            throw error
        }
    }

    /// Inserts `records` in one transaction: all are committed when this returns, or it throws and none
    /// are.
    func insert(_ records: [TelemetryRecord]) async throws {
        guard !records.isEmpty else { return }
        try await thread.runIfActive { try self.insertOnThread(records) }
    }

    func close() async {
        _ = try? await thread.runIfActive {
            sqlite_nio_sqlite3_finalize(self.insertStatement)
            sqlite_nio_sqlite3_close_v2(self.handle)
        }
        try? await thread.shutdownGracefully()
    }

    private func insertOnThread(_ records: [TelemetryRecord]) throws {
        // IMMEDIATE takes the write lock now (waiting up to busy_timeout), so the batch cannot fail
        // halfway for a lock another connection took first.
        try Self.execute(handle, "BEGIN IMMEDIATE")
        do {
            for record in records {
                try bindAndStep(record)
            }
            try Self.execute(handle, "COMMIT")
        } catch {
            _ = sqlite_nio_sqlite3_exec(handle, "ROLLBACK", nil, nil, nil)
            throw error
        }
    }

    private func bindAndStep(_ record: TelemetryRecord) throws {
        let statement = insertStatement
        // Every one of the seven parameters is bound again for each row (NULL included), so resetting is
        // enough: clearing the bindings as well would only be work thrown away.
        defer { sqlite_nio_sqlite3_reset(statement) }
        // SQLITE_STATIC: the bound bytes stay valid until the step below, which runs inside every
        // closure that exposes them; nothing is copied on the way into SQLite.
        sqlite_nio_sqlite3_bind_int64(statement, 1, record.receivedAt)
        sqlite_nio_sqlite3_bind_int64(statement, 4, Int64(record.qos.rawValue))
        sqlite_nio_sqlite3_bind_int64(statement, 5, record.retain ? 1 : 0)
        var clientID = record.clientID
        var topic = record.topic
        let result: Int32 = clientID.withUTF8 { clientID in
            topic.withUTF8 { topic in
                record.payload.withUnsafeReadableBytes { payload in
                    Self.withOptionalBytes(record.properties) { properties in
                        sqlite_nio_sqlite3_bind_text(statement, 2, Self.pointer(clientID), Int32(clientID.count), Self.static)
                        sqlite_nio_sqlite3_bind_text(statement, 3, Self.pointer(topic), Int32(topic.count), Self.static)
                        // A zero-length blob needs a non-null pointer, or SQLite stores NULL.
                        sqlite_nio_sqlite3_bind_blob(statement, 6, payload.baseAddress ?? Self.emptyBlob, Int32(payload.count), Self.static)
                        if let properties {
                            sqlite_nio_sqlite3_bind_blob(statement, 7, properties.baseAddress ?? Self.emptyBlob, Int32(properties.count), Self.static)
                        } else {
                            sqlite_nio_sqlite3_bind_null(statement, 7)
                        }
                        return sqlite_nio_sqlite3_step(statement)
                    }
                }
            }
        }
        guard result == SQLITE_DONE else {
            throw SQLiteWriterError(operation: "insert a telemetry row", message: String(cString: sqlite_nio_sqlite3_errmsg(handle)))
        }
    }

    private static func withOptionalBytes<T>(_ buffer: ByteBuffer?, _ body: (UnsafeRawBufferPointer?) -> T) -> T {
        guard let buffer else { return body(nil) }
        return buffer.withUnsafeReadableBytes { body($0) }
    }

    private static func pointer(_ bytes: UnsafeBufferPointer<UInt8>) -> UnsafePointer<CChar>? {
        UnsafeRawPointer(bytes.baseAddress ?? empty.utf8Start).assumingMemoryBound(to: CChar.self)
    }

    /// `SQLITE_STATIC` (a null destructor): SQLite neither copies nor frees the bound bytes.
    private static let `static`: sqlite3_destructor_type? = nil
    /// Where an empty string or blob points (never read: its length is 0).
    private static let empty: StaticString = "-"
    private static var emptyBlob: UnsafeRawPointer { UnsafeRawPointer(empty.utf8Start) }

    private static func execute(_ handle: OpaquePointer, _ sql: String) throws {
        guard sqlite_nio_sqlite3_exec(handle, sql, nil, nil, nil) == SQLITE_OK else {
            throw SQLiteWriterError(operation: sql, message: String(cString: sqlite_nio_sqlite3_errmsg(handle)))
        }
    }
}

/// A failed SQLite call of the telemetry writer.
struct SQLiteWriterError: Error, CustomStringConvertible {
    var operation: String
    var message: String

    var description: String { "SQLite: \(operation): \(message)" }
}

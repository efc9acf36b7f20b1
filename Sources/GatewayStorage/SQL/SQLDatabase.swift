public import GatewayCore
import MQTTCodec
public import NIOCore

/// A value bound to, or read from, a SQL statement: the same on every backend.
///
/// Statements use `$1`, `$2`, … placeholders on both SQLite and PostgreSQL (SQLite numbers `$N`
/// parameters by first appearance, so write them in ascending order of first use).
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob(ByteBuffer)

    public var integer: Int64? {
        switch self {
        case .integer(let value): value
        case .real(let value): Int64(exactly: value)
        case .text(let value): Int64(value)
        default: nil
        }
    }

    public var int: Int? { integer.map { Int($0) } }

    public var real: Double? {
        switch self {
        case .real(let value): value
        case .integer(let value): Double(value)
        default: nil
        }
    }

    public var text: String? {
        switch self {
        case .text(let value): value
        case .blob(let value): String(buffer: value)
        default: nil
        }
    }

    public var blob: ByteBuffer? {
        switch self {
        case .blob(let value): value
        case .text(let value): ByteBuffer(string: value)
        default: nil
        }
    }

    public var bool: Bool? { integer.map { $0 != 0 } }

    public var isNull: Bool { self == .null }

    /// A flag as the schema stores it (SMALLINT/INTEGER 0 or 1 on both backends).
    public static func flag(_ value: Bool) -> SQLValue { .integer(value ? 1 : 0) }

    /// An optional text, NULL when nil.
    public static func optional(_ value: String?) -> SQLValue { value.map { .text($0) } ?? .null }

    /// An optional blob, NULL when nil.
    public static func optional(_ value: ByteBuffer?) -> SQLValue { value.map { .blob($0) } ?? .null }

    /// An optional integer, NULL when nil.
    public static func optional(_ value: Int64?) -> SQLValue { value.map { .integer($0) } ?? .null }
}

/// One result row: column names and values in select order.
public struct SQLRow: Sendable {
    public let columns: [String]
    public let values: [SQLValue]

    public init(columns: [String], values: [SQLValue]) {
        self.columns = columns
        self.values = values
    }

    /// The value of the column named `name` (NULL when absent).
    public subscript(_ name: String) -> SQLValue {
        guard let index = columns.firstIndex(of: name) else { return .null }
        return values[index]
    }
}

/// The SQL dialects the stores speak. DDL differs per dialect; DML is written to run on both.
public enum SQLDialect: String, Sendable {
    case sqlite
    case postgres
}

/// One pooled database connection, lent by ``SQLDatabase/withConnection(_:)``.
public protocol SQLConnection: Sendable {
    /// Runs one statement with `$N` placeholders bound to `binds`; returns its rows.
    func query(_ sql: String, _ binds: [SQLValue]) async throws -> [SQLRow]
}

/// A database behind a small, fixed pool of connections: every use (ingestion, sessions, retained
/// messages, auth look-ups, admin queries) borrows one of `poolSize` connections.
public protocol SQLDatabase: Sendable {
    var dialect: SQLDialect { get }
    /// The connections in the pool.
    var poolSize: Int { get }
    /// The most pool connections lent out at once since the database was opened.
    var peakConnectionsInUse: Int { get }
    /// Lends a pooled connection to `body`; waits (bounded by the pool's acquire timeout) when all are busy.
    func withConnection<T: Sendable>(_ body: (any SQLConnection) async throws -> T) async throws -> T
    /// Closes every connection; later uses throw.
    func close() async
    /// Inserts telemetry rows (table `messages`) in one transaction: all are committed when this
    /// returns, or it throws and none are. A backend overrides it with its fastest bulk path; the
    /// default is multi-row INSERTs on a pooled connection.
    func insertTelemetry(_ records: [TelemetryRecord]) async throws
}

extension SQLDatabase {
    public func insertTelemetry(_ records: [TelemetryRecord]) async throws {
        try await insertTelemetryOnPool(records)
    }

    /// The generic telemetry insert: multi-row INSERTs in one transaction on a pooled connection.
    public func insertTelemetryOnPool(_ records: [TelemetryRecord]) async throws {
        guard !records.isEmpty else { return }
        try await transaction { connection in
            // One multi-row INSERT per chunk: far fewer statement preparations than a row at a time.
            // Chunks are capped in rows and bytes, since binding copies the payloads.
            var start = records.startIndex
            while start < records.endIndex {
                var end = start
                var bytes = 0
                while end < records.endIndex && end - start < multiRowInsertMaxRows
                    && (end == start || bytes + records[end].byteCount <= multiRowInsertMaxBytes)
                {
                    bytes += records[end].byteCount
                    end += 1
                }
                try await insertTelemetryRows(records[start..<end], on: connection)
                start = end
            }
        }
    }

    /// Runs one statement on a pooled connection.
    @discardableResult
    public func query(_ sql: String, _ binds: [SQLValue] = []) async throws -> [SQLRow] {
        try await withConnection { connection in try await connection.query(sql, binds) }
    }

    /// Runs `body` in one transaction on one pooled connection: committed when `body` returns, rolled
    /// back when it throws. On SQLite the write lock is taken up front (`BEGIN IMMEDIATE`), so two
    /// writers never deadlock upgrading read locks.
    public func transaction<T: Sendable>(_ body: (any SQLConnection) async throws -> T) async throws -> T {
        try await withConnection { connection in
            _ = try await connection.query(dialect == .sqlite ? "BEGIN IMMEDIATE" : "BEGIN", [])
            do {
                let result = try await body(connection)
                _ = try await connection.query("COMMIT", [])
                return result
            } catch {
                _ = try? await connection.query("ROLLBACK", [])
                throw error
            }
        }
    }
}

let multiRowInsertMaxRows = 200
let multiRowInsertMaxBytes = 1_048_576

private func insertTelemetryRows(_ rows: ArraySlice<TelemetryRecord>, on connection: any SQLConnection) async throws {
    var binds: [SQLValue] = []
    binds.reserveCapacity(rows.count * 7)
    var values: [String] = []
    values.reserveCapacity(rows.count)
    for record in rows {
        let n = binds.count
        values.append("($\(n + 1), $\(n + 2), $\(n + 3), $\(n + 4), $\(n + 5), $\(n + 6), $\(n + 7))")
        binds.append(.integer(record.receivedAt))
        binds.append(.text(record.clientID))
        binds.append(.text(record.topic))
        binds.append(.integer(Int64(record.qos.rawValue)))
        binds.append(.flag(record.retain))
        binds.append(.blob(record.payload))
        binds.append(.optional(record.properties))
    }
    _ = try await connection.query(
        "INSERT INTO messages (received_at, client_id, topic, qos, retain, payload, properties) VALUES \(values.joined(separator: ", "))",
        binds
    )
}

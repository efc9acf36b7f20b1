import GatewayCore
import Logging

/// Versioned schema migrations, the same schema on SQLite and PostgreSQL.
///
/// Each migration runs once, in order, and is recorded in `schema_migrations`; start-up applies the
/// ones a database has not seen. Never edit a shipped migration: add a new one.
enum SQLMigrations {
    struct Migration {
        var version: Int
        var name: String
        /// Statements per dialect (types differ: BLOB/BYTEA, INTEGER PRIMARY KEY/BIGSERIAL).
        var sqlite: [String]
        var postgres: [String]
    }

    static let all: [Migration] = [
        Migration(
            version: 1,
            name: "telemetry messages",
            sqlite: [
                """
                CREATE TABLE messages (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    received_at INTEGER NOT NULL,
                    client_id TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    qos INTEGER NOT NULL,
                    retain INTEGER NOT NULL,
                    payload BLOB NOT NULL,
                    properties BLOB
                )
                """,
                "CREATE INDEX messages_topic_time ON messages (topic, received_at)",
            ],
            postgres: [
                """
                CREATE TABLE messages (
                    id BIGSERIAL PRIMARY KEY,
                    received_at BIGINT NOT NULL,
                    client_id TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    qos SMALLINT NOT NULL,
                    retain SMALLINT NOT NULL,
                    payload BYTEA NOT NULL,
                    properties BYTEA
                )
                """,
                "CREATE INDEX messages_topic_time ON messages (topic, received_at)",
            ]
        ),
        users,
        sessions,
        sessionUser,
        inboundQoS2,
    ]

    /// The `pg_advisory_lock` key that serialises migrations of gateways sharing one PostgreSQL database
    /// (any constant works; this one is "iotgw" in ASCII).
    static let advisoryLockKey: Int64 = 0x69_6F_74_67_77

    /// Applies, in order and each in its own transaction, every migration `database` has not seen.
    ///
    /// Everything runs on one connection. On PostgreSQL that connection holds a session-level advisory
    /// lock meanwhile, so two gateways starting together on one database never both apply a migration
    /// (the second waits, then finds it recorded); the lock goes with the session if the process dies.
    /// SQLite serialises writers itself (`BEGIN IMMEDIATE`).
    static func apply(to database: any SQLDatabase, logger: Logger) async throws {
        let dialect = database.dialect
        try await database.withConnection { connection in
            if dialect == .postgres {
                _ = try await connection.query("SELECT pg_advisory_lock($1)", [.integer(advisoryLockKey)])
            }
            do {
                try await applyPending(on: connection, dialect: dialect, logger: logger)
            } catch {
                if dialect == .postgres {
                    _ = try? await connection.query("SELECT pg_advisory_unlock($1)", [.integer(advisoryLockKey)])
                }
                throw error
            }
            if dialect == .postgres {
                _ = try await connection.query("SELECT pg_advisory_unlock($1)", [.integer(advisoryLockKey)])
            }
        }
    }

    private static func applyPending(on connection: any SQLConnection, dialect: SQLDialect, logger: Logger) async throws {
        _ = try await connection.query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            []
        )
        let applied = Set(try await connection.query("SELECT version FROM schema_migrations", []).compactMap { $0["version"].int })
        for migration in all where !applied.contains(migration.version) {
            _ = try await connection.query(dialect == .sqlite ? "BEGIN IMMEDIATE" : "BEGIN", [])
            do {
                for statement in dialect == .sqlite ? migration.sqlite : migration.postgres {
                    _ = try await connection.query(statement, [])
                }
                _ = try await connection.query(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    [.integer(Int64(migration.version)), .text(migration.name), .integer(WallClock.millisecondsSinceEpoch() / 1000)]
                )
                _ = try await connection.query("COMMIT", [])
            } catch {
                _ = try? await connection.query("ROLLBACK", [])
                throw error
            }
            logger.info("applied schema migration", metadata: ["iotgw.migration.version": "\(migration.version)", "iotgw.migration.name": "\(migration.name)"])
        }
    }
}

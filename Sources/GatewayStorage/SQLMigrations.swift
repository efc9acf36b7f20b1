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
    ]

    /// Applies, in order and each in its own transaction, every migration `database` has not seen.
    static func apply(to database: any SQLDatabase, logger: Logger) async throws {
        try await database.query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        let applied = Set(try await database.query("SELECT version FROM schema_migrations").compactMap { $0["version"].int })
        for migration in all where !applied.contains(migration.version) {
            try await database.transaction { connection in
                for statement in database.dialect == .sqlite ? migration.sqlite : migration.postgres {
                    _ = try await connection.query(statement, [])
                }
                _ = try await connection.query(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    [.integer(Int64(migration.version)), .text(migration.name), .integer(WallClock.millisecondsSinceEpoch() / 1000)]
                )
            }
            logger.info("applied schema migration", metadata: ["iotgw.migration.version": "\(migration.version)", "iotgw.migration.name": "\(migration.name)"])
        }
    }
}

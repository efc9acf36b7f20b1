import Logging

/// Where migrations run: one connection of either backend.
protocol SQLExecutor: Sendable {
    func execute(_ sql: String) async throws
    func appliedVersions() async throws -> Set<Int>
    func recordVersion(_ version: Int, name: String) async throws
}

/// Versioned schema migrations, the same schema on SQLite and PostgreSQL.
///
/// Each migration runs once, in order, and is recorded in `schema_migrations`; start-up applies the
/// ones a database has not seen. Never edit a shipped migration: add a new one.
enum SQLMigrations {
    enum Dialect { case sqlite, postgres }

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
                    retain BOOLEAN NOT NULL,
                    payload BYTEA NOT NULL,
                    properties BYTEA
                )
                """,
                "CREATE INDEX messages_topic_time ON messages (topic, received_at)",
            ]
        )
    ]

    static func apply(to executor: some SQLExecutor, dialect: Dialect, logger: Logger) async throws {
        try await executor.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        let applied = try await executor.appliedVersions()
        for migration in all where !applied.contains(migration.version) {
            try await executor.execute("BEGIN")
            do {
                for statement in dialect == .sqlite ? migration.sqlite : migration.postgres {
                    try await executor.execute(statement)
                }
                try await executor.recordVersion(migration.version, name: migration.name)
                try await executor.execute("COMMIT")
            } catch {
                try? await executor.execute("ROLLBACK")
                throw error
            }
            logger.info("applied schema migration", metadata: ["iotgw.migration.version": "\(migration.version)", "iotgw.migration.name": "\(migration.name)"])
        }
    }
}

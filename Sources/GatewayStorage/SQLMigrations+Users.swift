extension SQLMigrations {
    /// v2: the users devices authenticate as (`auth.backend: database`, `iotgw user ...`).
    ///
    /// `password_hash` is the self-describing string of ``PasswordHash`` (algorithm, parameters, salt,
    /// hash); times are milliseconds since the Unix epoch. The DDL is identical on both dialects (TEXT and
    /// BIGINT mean the same on SQLite and PostgreSQL); usernames compare byte for byte on both.
    static let users = Migration(
        version: 2,
        name: "users",
        sqlite: [usersTable],
        postgres: [usersTable]
    )

    private static let usersTable = """
        CREATE TABLE users (
            username TEXT NOT NULL PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )
        """
}

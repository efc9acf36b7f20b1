extension SQLMigrations {
    /// v4: the username each persistent session's client authenticated as (`sessions.username`, NULL
    /// for anonymous clients and for sessions stored before this migration), so a session restored at
    /// start-up has its subscriptions checked against the ACL with the right `%u`.
    ///
    /// `ALTER TABLE ... ADD COLUMN` of a nullable column without a default: identical on both dialects,
    /// and cheap on both (no table rewrite).
    static let sessionUser = Migration(
        version: 4,
        name: "session usernames",
        sqlite: [addUsernameColumn],
        postgres: [addUsernameColumn]
    )

    private static let addUsernameColumn = "ALTER TABLE sessions ADD COLUMN username TEXT"
}

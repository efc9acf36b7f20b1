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

extension SQLMigrations {
    /// v5: inbound QoS 2 exchanges awaiting PUBREL (`session_inbound_qos2`), so that after a restart a
    /// retransmitted PUBLISH is not routed twice and a PUBREL is still known. Identical on both dialects.
    static let inboundQoS2 = Migration(
        version: 5,
        name: "inbound QoS 2 exchanges",
        sqlite: [createInboundQoS2],
        postgres: [createInboundQoS2]
    )

    private static let createInboundQoS2 = """
        CREATE TABLE session_inbound_qos2 (
            client_id TEXT NOT NULL,
            packet_id INTEGER NOT NULL,
            PRIMARY KEY (client_id, packet_id)
        )
        """
}

extension SQLMigrations {
    /// v3: durable broker state — persistent sessions, their subscriptions, the messages queued or in
    /// flight for them, and retained messages (see ``SQLBrokerStateStore``).
    ///
    /// `session_messages.seq` is a broker-wide sequence number: the row key and, within a session, the
    /// delivery order. `state`: 0 queued, 1 awaiting PUBACK, 2 awaiting PUBREC, 3 awaiting PUBCOMP.
    /// Times are wall-clock milliseconds since the epoch; `expiry_interval` is in seconds (NULL: never).
    static let sessions = Migration(
        version: 3,
        name: "durable sessions and retained messages",
        sqlite: [
            """
            CREATE TABLE sessions (
                client_id TEXT PRIMARY KEY,
                expiry_interval REAL,
                disconnected_at INTEGER,
                updated_at INTEGER NOT NULL
            )
            """,
            """
            CREATE TABLE subscriptions (
                client_id TEXT NOT NULL,
                topic_key TEXT NOT NULL,
                topic_filter TEXT NOT NULL,
                share_group TEXT,
                qos INTEGER NOT NULL,
                no_local INTEGER NOT NULL,
                retain_as_published INTEGER NOT NULL,
                retain_handling INTEGER NOT NULL,
                subscription_id INTEGER,
                PRIMARY KEY (client_id, topic_key)
            )
            """,
            """
            CREATE TABLE session_messages (
                seq INTEGER PRIMARY KEY,
                client_id TEXT NOT NULL,
                state INTEGER NOT NULL,
                packet_id INTEGER,
                qos INTEGER NOT NULL,
                retain INTEGER NOT NULL,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                message_qos INTEGER NOT NULL,
                message_retain INTEGER NOT NULL,
                properties BLOB,
                publisher TEXT,
                expires_at INTEGER,
                subscription_ids TEXT,
                share_group TEXT,
                share_filter TEXT
            )
            """,
            "CREATE INDEX session_messages_client ON session_messages (client_id, seq)",
            """
            CREATE TABLE retained (
                topic TEXT PRIMARY KEY,
                payload BLOB NOT NULL,
                qos INTEGER NOT NULL,
                properties BLOB,
                publisher TEXT,
                expires_at INTEGER,
                stored_at INTEGER NOT NULL
            )
            """,
        ],
        postgres: [
            """
            CREATE TABLE sessions (
                client_id TEXT PRIMARY KEY,
                expiry_interval DOUBLE PRECISION,
                disconnected_at BIGINT,
                updated_at BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE subscriptions (
                client_id TEXT NOT NULL,
                topic_key TEXT NOT NULL,
                topic_filter TEXT NOT NULL,
                share_group TEXT,
                qos SMALLINT NOT NULL,
                no_local SMALLINT NOT NULL,
                retain_as_published SMALLINT NOT NULL,
                retain_handling SMALLINT NOT NULL,
                subscription_id BIGINT,
                PRIMARY KEY (client_id, topic_key)
            )
            """,
            """
            CREATE TABLE session_messages (
                seq BIGINT PRIMARY KEY,
                client_id TEXT NOT NULL,
                state SMALLINT NOT NULL,
                packet_id INTEGER,
                qos SMALLINT NOT NULL,
                retain SMALLINT NOT NULL,
                topic TEXT NOT NULL,
                payload BYTEA NOT NULL,
                message_qos SMALLINT NOT NULL,
                message_retain SMALLINT NOT NULL,
                properties BYTEA,
                publisher TEXT,
                expires_at BIGINT,
                subscription_ids TEXT,
                share_group TEXT,
                share_filter TEXT
            )
            """,
            "CREATE INDEX session_messages_client ON session_messages (client_id, seq)",
            """
            CREATE TABLE retained (
                topic TEXT PRIMARY KEY,
                payload BYTEA NOT NULL,
                qos SMALLINT NOT NULL,
                properties BYTEA,
                publisher TEXT,
                expires_at BIGINT,
                stored_at BIGINT NOT NULL
            )
            """,
        ]
    )
}

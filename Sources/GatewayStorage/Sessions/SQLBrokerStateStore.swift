public import GatewayCore
import MQTTCodec
import NIOCore

/// The durable broker state (tables `sessions`, `subscriptions`, `session_messages`, `retained`,
/// `session_inbound_qos2`, migrations v3 to v5) on any ``SQLDatabase``. Written only through the broker's ``StateJournal``, one
/// transaction per batch; read once, at start-up. Portable SQL only: `$N` placeholders and
/// `INSERT ... ON CONFLICT ... DO UPDATE`, which SQLite (3.24+) and PostgreSQL both accept.
public final class SQLBrokerStateStore: BrokerStateStore {
    public let database: any SQLDatabase

    public init(database: any SQLDatabase) {
        self.database = database
    }

    /// Rows per multi-row INSERT of session messages (16 binds each, far below SQLite's 32,766).
    static let messagesPerStatement = 100
    /// Rows per page when reading `session_messages` at start-up.
    static let loadPageRows = 10_000
    /// Sequence numbers per batched DELETE.
    static let deletesPerStatement = 500

    public func apply(_ operations: [BrokerStateOperation]) async throws {
        guard !operations.isEmpty else { return }
        let now = WallClock.millisecondsSinceEpoch()
        try await database.transaction { connection in
            var index = operations.startIndex
            while index < operations.endIndex {
                switch operations[index] {
                case .insertMessage:
                    // Consecutive inserts (a fan-out, a burst for offline subscribers) in one statement.
                    var rows: [StoredSessionMessage] = []
                    while index < operations.endIndex, rows.count < Self.messagesPerStatement,
                        case .insertMessage(let message) = operations[index]
                    {
                        rows.append(message)
                        index += 1
                    }
                    try await Self.insertMessages(rows, on: connection)
                    continue
                case .deleteMessage:
                    var seqs: [Int64] = []
                    while index < operations.endIndex, seqs.count < Self.deletesPerStatement,
                        case .deleteMessage(let seq) = operations[index]
                    {
                        seqs.append(seq)
                        index += 1
                    }
                    let placeholders = (1...seqs.count).map { "$\($0)" }.joined(separator: ", ")
                    _ = try await connection.query("DELETE FROM session_messages WHERE seq IN (\(placeholders))", seqs.map { .integer($0) })
                    continue
                case .upsertSession(let session):
                    _ = try await connection.query(
                        """
                        INSERT INTO sessions (client_id, expiry_interval, disconnected_at, updated_at, username) VALUES ($1, $2, $3, $4, $5)
                        ON CONFLICT (client_id) DO UPDATE SET expiry_interval = excluded.expiry_interval,
                            disconnected_at = excluded.disconnected_at, updated_at = excluded.updated_at, username = excluded.username
                        """,
                        [
                            .text(session.clientID), session.expiryInterval.map { .real($0) } ?? .null, .optional(session.disconnectedAt),
                            .integer(now), .optional(session.username),
                        ]
                    )
                case .deleteSession(let clientID):
                    _ = try await connection.query("DELETE FROM session_inbound_qos2 WHERE client_id = $1", [.text(clientID)])
                    _ = try await connection.query("DELETE FROM session_messages WHERE client_id = $1", [.text(clientID)])
                    _ = try await connection.query("DELETE FROM subscriptions WHERE client_id = $1", [.text(clientID)])
                    _ = try await connection.query("DELETE FROM sessions WHERE client_id = $1", [.text(clientID)])
                case .upsertSubscription(let subscription):
                    _ = try await connection.query(
                        """
                        INSERT INTO subscriptions (client_id, topic_key, topic_filter, share_group, qos, no_local,
                            retain_as_published, retain_handling, subscription_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                        ON CONFLICT (client_id, topic_key) DO UPDATE SET topic_filter = excluded.topic_filter,
                            share_group = excluded.share_group, qos = excluded.qos, no_local = excluded.no_local,
                            retain_as_published = excluded.retain_as_published, retain_handling = excluded.retain_handling,
                            subscription_id = excluded.subscription_id
                        """,
                        [
                            .text(subscription.clientID), .text(subscription.key), .text(subscription.options.topicFilter),
                            .optional(subscription.group), .integer(Int64(subscription.options.qos.rawValue)),
                            .flag(subscription.options.noLocal), .flag(subscription.options.retainAsPublished),
                            .integer(Int64(subscription.options.retainHandling.rawValue)),
                            .optional(subscription.subscriptionIdentifier.map { Int64($0) }),
                        ]
                    )
                case .deleteSubscription(let clientID, let key):
                    _ = try await connection.query(
                        "DELETE FROM subscriptions WHERE client_id = $1 AND topic_key = $2",
                        [.text(clientID), .text(key)]
                    )
                case .updateMessage(let seq, let state, let packetID):
                    _ = try await connection.query(
                        "UPDATE session_messages SET state = $1, packet_id = $2 WHERE seq = $3",
                        [.integer(Int64(state.rawValue)), .optional(packetID.map { Int64($0) }), .integer(seq)]
                    )
                case .setRetained(let message):
                    _ = try await connection.query(
                        """
                        INSERT INTO retained (topic, payload, qos, properties, publisher, expires_at, stored_at)
                        VALUES ($1, $2, $3, $4, $5, $6, $7)
                        ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos,
                            properties = excluded.properties, publisher = excluded.publisher,
                            expires_at = excluded.expires_at, stored_at = excluded.stored_at
                        """,
                        [
                            .text(message.topic), .blob(message.payload), .integer(Int64(message.qos.rawValue)),
                            .optional(message.properties), .optional(message.publisherClientID), .optional(message.expiresAt),
                            .integer(now),
                        ]
                    )
                case .deleteRetained(let topic):
                    _ = try await connection.query("DELETE FROM retained WHERE topic = $1", [.text(topic)])
                case .insertInboundQoS2(let clientID, let packetID):
                    _ = try await connection.query(
                        "INSERT INTO session_inbound_qos2 (client_id, packet_id) VALUES ($1, $2) ON CONFLICT (client_id, packet_id) DO NOTHING",
                        [.text(clientID), .integer(Int64(packetID))]
                    )
                case .deleteInboundQoS2(let clientID, let packetID):
                    _ = try await connection.query(
                        "DELETE FROM session_inbound_qos2 WHERE client_id = $1 AND packet_id = $2",
                        [.text(clientID), .integer(Int64(packetID))]
                    )
                }
                index += 1
            }
        }
    }

    private static func insertMessages(_ rows: [StoredSessionMessage], on connection: any SQLConnection) async throws {
        var binds: [SQLValue] = []
        binds.reserveCapacity(rows.count * 16)
        var values: [String] = []
        values.reserveCapacity(rows.count)
        for row in rows {
            let n = binds.count
            values.append("(" + (1...16).map { "$\(n + $0)" }.joined(separator: ", ") + ")")
            binds.append(.integer(row.seq))
            binds.append(.text(row.clientID))
            binds.append(.integer(Int64(row.state.rawValue)))
            binds.append(.optional(row.packetID.map { Int64($0) }))
            binds.append(.integer(Int64(row.qos.rawValue)))
            binds.append(.flag(row.retain))
            binds.append(.text(row.topic))
            binds.append(.blob(row.payload))
            binds.append(.integer(Int64(row.messageQoS.rawValue)))
            binds.append(.flag(row.messageRetain))
            binds.append(.optional(row.properties))
            binds.append(.optional(row.publisherClientID))
            binds.append(.optional(row.expiresAt))
            binds.append(row.subscriptionIdentifiers.isEmpty ? .null : .text(row.subscriptionIdentifiers.map(String.init).joined(separator: ",")))
            binds.append(.optional(row.sharedGroup))
            binds.append(.optional(row.sharedFilter))
        }
        _ = try await connection.query(
            """
            INSERT INTO session_messages (seq, client_id, state, packet_id, qos, retain, topic, payload, message_qos,
                message_retain, properties, publisher, expires_at, subscription_ids, share_group, share_filter)
            VALUES \(values.joined(separator: ", "))
            """,
            binds
        )
    }

    /// Thrown when a stored row cannot be read back (a value out of range).
    public struct CorruptRow: Error, CustomStringConvertible {
        public var table: String
        public var detail: String
        public var description: String { "unreadable row in \(table): \(detail)" }
    }

    public func load() async throws -> BrokerStateSnapshot {
        var snapshot = BrokerStateSnapshot()
        for row in try await database.query("SELECT client_id, expiry_interval, disconnected_at, username FROM sessions ORDER BY client_id") {
            guard let clientID = row["client_id"].text else { throw CorruptRow(table: "sessions", detail: "client_id") }
            snapshot.sessions.append(
                StoredSessionRecord(
                    clientID: clientID,
                    expiryInterval: row["expiry_interval"].real,
                    disconnectedAt: row["disconnected_at"].integer,
                    username: row["username"].text
                )
            )
        }
        for row in try await database.query(
            """
            SELECT client_id, topic_key, topic_filter, share_group, qos, no_local, retain_as_published, retain_handling,
                subscription_id FROM subscriptions ORDER BY client_id, topic_key
            """
        ) {
            guard let clientID = row["client_id"].text, let key = row["topic_key"].text, let filter = row["topic_filter"].text,
                let qos = row["qos"].integer.flatMap({ MQTTQoS(rawValue: UInt8(clamping: $0)) }),
                let handling = row["retain_handling"].integer.flatMap({ MQTTSubscription.RetainHandling(rawValue: UInt8(clamping: $0)) })
            else { throw CorruptRow(table: "subscriptions", detail: "\(row.values)") }
            snapshot.subscriptions.append(
                StoredSubscriptionRecord(
                    clientID: clientID,
                    key: key,
                    options: MQTTSubscription(
                        topicFilter: filter,
                        qos: qos,
                        noLocal: row["no_local"].bool ?? false,
                        retainAsPublished: row["retain_as_published"].bool ?? false,
                        retainHandling: handling
                    ),
                    group: row["share_group"].text,
                    subscriptionIdentifier: row["subscription_id"].integer.map { UInt32(clamping: $0) }
                )
            )
        }
        // The largest table: read in pages (bounded rows per query) and by column position rather than
        // by name.
        var after = Int64.min
        while true {
            let rows = try await database.query(
                """
                SELECT seq, client_id, state, packet_id, qos, retain, topic, payload, message_qos, message_retain, properties,
                    publisher, expires_at, subscription_ids, share_group, share_filter FROM session_messages
                WHERE seq > $1 ORDER BY seq LIMIT $2
                """,
                [.integer(after), .integer(Int64(Self.loadPageRows))]
            )
            for row in rows {
                let v = row.values
                guard v.count == 16, let seq = v[0].integer, let clientID = v[1].text,
                    let state = v[2].int.flatMap(StoredSessionMessage.State.init(rawValue:)),
                    let qos = v[4].integer.flatMap({ MQTTQoS(rawValue: UInt8(clamping: $0)) }),
                    let messageQoS = v[8].integer.flatMap({ MQTTQoS(rawValue: UInt8(clamping: $0)) }),
                    let topic = v[6].text
                else { throw CorruptRow(table: "session_messages", detail: "seq \(row["seq"])") }
                snapshot.messages.append(
                    StoredSessionMessage(
                        seq: seq,
                        clientID: clientID,
                        state: state,
                        packetID: v[3].integer.flatMap { UInt16(exactly: $0) },
                        qos: qos,
                        retain: v[5].bool ?? false,
                        topic: topic,
                        payload: v[7].blob ?? ByteBuffer(),
                        messageQoS: messageQoS,
                        messageRetain: v[9].bool ?? false,
                        properties: v[10].blob,
                        publisherClientID: v[11].text,
                        expiresAt: v[12].integer,
                        subscriptionIdentifiers: v[13].text.map { $0.split(separator: ",").compactMap { UInt32($0) } } ?? [],
                        sharedGroup: v[14].text,
                        sharedFilter: v[15].text
                    )
                )
                after = seq
            }
            if rows.count < Self.loadPageRows { break }
        }
        for row in try await database.query("SELECT topic, payload, qos, properties, publisher, expires_at FROM retained ORDER BY topic") {
            guard let topic = row["topic"].text, let qos = row["qos"].integer.flatMap({ MQTTQoS(rawValue: UInt8(clamping: $0)) }) else {
                throw CorruptRow(table: "retained", detail: "\(row.values)")
            }
            snapshot.retained.append(
                StoredRetainedMessage(
                    topic: topic,
                    payload: row["payload"].blob ?? ByteBuffer(),
                    qos: qos,
                    properties: row["properties"].blob,
                    publisherClientID: row["publisher"].text,
                    expiresAt: row["expires_at"].integer
                )
            )
        }
        for row in try await database.query("SELECT client_id, packet_id FROM session_inbound_qos2 ORDER BY client_id, packet_id") {
            guard let clientID = row["client_id"].text, let packetID = row["packet_id"].integer.flatMap({ UInt16(exactly: $0) }),
                packetID != 0
            else { throw CorruptRow(table: "session_inbound_qos2", detail: "\(row.values)") }
            snapshot.inboundQoS2.append(StoredInboundQoS2(clientID: clientID, packetID: packetID))
        }
        return snapshot
    }
}

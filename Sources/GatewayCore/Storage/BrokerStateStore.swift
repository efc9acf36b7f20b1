public import MQTTCodec
public import NIOCore

/// Where the broker's durable state goes: persistent sessions, their subscriptions, the messages queued
/// or in flight for them, and retained messages. Implementations (SQL on SQLite or PostgreSQL) live in
/// GatewayStorage; the core knows no SQL.
///
/// The store is for recovery only: the broker keeps every session in memory and mirrors its changes
/// into the store through a ``StateJournal`` (write-behind, group commit). At start-up
/// ``Broker/restore(from:)`` reads it back with ``load()``.
public protocol BrokerStateStore: Sendable {
    /// Applies `operations` in order, in one transaction: all are committed when this returns, or it
    /// throws and none are.
    func apply(_ operations: [BrokerStateOperation]) async throws

    /// Reads everything stored: sessions, subscriptions, messages in `seq` order, retained messages.
    func load() async throws -> BrokerStateSnapshot
}

/// One change to the durable broker state. Rows are keyed by client id (sessions, subscriptions),
/// by a broker-wide sequence number (session messages: also their delivery order), or by topic (retained).
public enum BrokerStateOperation: Sendable, Hashable {
    /// Creates or replaces a session row.
    case upsertSession(StoredSessionRecord)
    /// Removes a session with its subscriptions and messages.
    case deleteSession(clientID: String)
    /// Creates or replaces one subscription of a session.
    case upsertSubscription(StoredSubscriptionRecord)
    /// Removes one subscription (`key`: the filter as the client sent it, `$share/...` included).
    case deleteSubscription(clientID: String, key: String)
    /// Stores a message queued (or already in flight) for a session.
    case insertMessage(StoredSessionMessage)
    /// Moves a stored message to a new delivery state (sent with a packet id, or PUBREC received).
    case updateMessage(seq: Int64, state: StoredSessionMessage.State, packetID: UInt16?)
    /// Removes a stored message (acknowledged by the subscriber, expired, or dropped).
    case deleteMessage(seq: Int64)
    /// Stores (replaces) the retained message of a topic.
    case setRetained(StoredRetainedMessage)
    /// Clears the retained message of a topic.
    case deleteRetained(topic: String)
    /// Records an inbound QoS 2 packet id of a session: its message is committed and PUBREC is about to
    /// go; until PUBREL a retransmission (DUP) must not be routed again, also after a restart.
    case insertInboundQoS2(clientID: String, packetID: UInt16)
    /// Forgets an inbound QoS 2 packet id (PUBREL arrived).
    case deleteInboundQoS2(clientID: String, packetID: UInt16)

    /// A rough size in bytes, for the journal's byte cap.
    var byteCount: Int {
        switch self {
        case .insertMessage(let m): m.topic.utf8.count + m.payload.readableBytes + (m.properties?.readableBytes ?? 0) + 96
        case .setRetained(let m): m.topic.utf8.count + m.payload.readableBytes + (m.properties?.readableBytes ?? 0) + 64
        case .upsertSubscription(let s): s.key.utf8.count * 2 + 64
        default: 48
        }
    }
}

/// A session as stored (table `sessions`).
public struct StoredSessionRecord: Sendable, Hashable {
    public var clientID: String
    /// Seconds the session outlives its connection; nil means it never expires.
    public var expiryInterval: Double?
    /// Wall-clock milliseconds since the epoch when its connection ended; nil while connected (a
    /// session found connected at start-up after a crash counts as disconnected at start-up).
    public var disconnectedAt: Int64?
    /// The username the session's client authenticated as (nil: anonymous, or stored before migration
    /// v4): the ACL is checked against it when the session is restored.
    public var username: String?

    public init(clientID: String, expiryInterval: Double?, disconnectedAt: Int64?, username: String? = nil) {
        self.clientID = clientID
        self.expiryInterval = expiryInterval
        self.disconnectedAt = disconnectedAt
        self.username = username
    }
}

/// A subscription as stored (table `subscriptions`).
public struct StoredSubscriptionRecord: Sendable, Hashable {
    public var clientID: String
    /// The filter as the client sent it (`$share/group/filter` for shared subscriptions).
    public var key: String
    /// The options; `topicFilter` is the inner filter of a shared subscription.
    public var options: MQTTSubscription
    /// The shared group, for `$share/...` subscriptions.
    public var group: String?
    public var subscriptionIdentifier: UInt32?

    public init(clientID: String, key: String, options: MQTTSubscription, group: String?, subscriptionIdentifier: UInt32?) {
        self.clientID = clientID
        self.key = key
        self.options = options
        self.group = group
        self.subscriptionIdentifier = subscriptionIdentifier
    }
}

/// A message queued or in flight for a persistent session (table `session_messages`).
public struct StoredSessionMessage: Sendable, Hashable {
    /// Where the delivery stands.
    public enum State: Int, Sendable, Hashable {
        /// Waiting in the queue: not sent yet.
        case queued = 0
        /// Sent at QoS 1 with `packetID`; no PUBACK yet.
        case awaitingPuback = 1
        /// Sent at QoS 2 with `packetID`; no PUBREC yet.
        case awaitingPubrec = 2
        /// PUBREC received, PUBREL sent; no PUBCOMP yet.
        case awaitingPubcomp = 3
    }

    /// Broker-wide sequence number: the row's key and, within a session, its delivery order.
    public var seq: Int64
    public var clientID: String
    public var state: State
    public var packetID: UInt16?
    /// The QoS this subscriber receives it at.
    public var qos: MQTTQoS
    /// The RETAIN flag this subscriber sees.
    public var retain: Bool
    public var topic: String
    public var payload: ByteBuffer
    /// The QoS and RETAIN flag it was published with.
    public var messageQoS: MQTTQoS
    public var messageRetain: Bool
    /// The forwarded MQTT 5 properties, encoded as on the wire (length prefix included); nil if none.
    public var properties: ByteBuffer?
    public var publisherClientID: String?
    /// Wall-clock milliseconds since the epoch when the message expires (Message Expiry Interval).
    public var expiresAt: Int64?
    public var subscriptionIdentifiers: [UInt32]
    /// The shared subscription it was delivered through (group name and inner filter).
    public var sharedGroup: String?
    public var sharedFilter: String?

    public init(
        seq: Int64, clientID: String, state: State, packetID: UInt16?, qos: MQTTQoS, retain: Bool, topic: String,
        payload: ByteBuffer, messageQoS: MQTTQoS, messageRetain: Bool, properties: ByteBuffer?,
        publisherClientID: String?, expiresAt: Int64?, subscriptionIdentifiers: [UInt32], sharedGroup: String?,
        sharedFilter: String?
    ) {
        self.seq = seq
        self.clientID = clientID
        self.state = state
        self.packetID = packetID
        self.qos = qos
        self.retain = retain
        self.topic = topic
        self.payload = payload
        self.messageQoS = messageQoS
        self.messageRetain = messageRetain
        self.properties = properties
        self.publisherClientID = publisherClientID
        self.expiresAt = expiresAt
        self.subscriptionIdentifiers = subscriptionIdentifiers
        self.sharedGroup = sharedGroup
        self.sharedFilter = sharedFilter
    }
}

/// A retained message as stored (table `retained`).
public struct StoredRetainedMessage: Sendable, Hashable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    /// Encoded MQTT 5 properties (length prefix included); nil if none.
    public var properties: ByteBuffer?
    public var publisherClientID: String?
    /// Wall-clock milliseconds since the epoch when it expires.
    public var expiresAt: Int64?

    public init(topic: String, payload: ByteBuffer, qos: MQTTQoS, properties: ByteBuffer?, publisherClientID: String?, expiresAt: Int64?) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.properties = properties
        self.publisherClientID = publisherClientID
        self.expiresAt = expiresAt
    }
}

/// An inbound QoS 2 exchange awaiting PUBREL, as stored (table `session_inbound_qos2`).
public struct StoredInboundQoS2: Sendable, Hashable {
    public var clientID: String
    public var packetID: UInt16

    public init(clientID: String, packetID: UInt16) {
        self.clientID = clientID
        self.packetID = packetID
    }
}

/// Everything a ``BrokerStateStore`` holds, as read at start-up.
public struct BrokerStateSnapshot: Sendable {
    public var sessions: [StoredSessionRecord]
    public var subscriptions: [StoredSubscriptionRecord]
    /// In `seq` order.
    public var messages: [StoredSessionMessage]
    public var retained: [StoredRetainedMessage]
    public var inboundQoS2: [StoredInboundQoS2]

    public init(
        sessions: [StoredSessionRecord] = [], subscriptions: [StoredSubscriptionRecord] = [],
        messages: [StoredSessionMessage] = [], retained: [StoredRetainedMessage] = [],
        inboundQoS2: [StoredInboundQoS2] = []
    ) {
        self.sessions = sessions
        self.subscriptions = subscriptions
        self.messages = messages
        self.retained = retained
        self.inboundQoS2 = inboundQoS2
    }
}

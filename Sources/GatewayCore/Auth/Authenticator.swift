public import NIOCore

/// The credentials a client presented in CONNECT.
public struct ConnectCredentials: Sendable {
    public var clientID: String
    public var username: String?
    public var password: ByteBuffer?
    /// The peer's address, for logs and address-based rules.
    public var remoteAddress: String?
    /// The subject CN of a client certificate the TLS layer verified against `tls.ca_file`, when
    /// `tls.use_cn_as_username` made it the username (then `username` is this value). A client with a
    /// certificate identity is authenticated by its certificate: no password is needed (as mosquitto's
    /// `use_identity_as_username`).
    public var certificateIdentity: String?

    public init(clientID: String, username: String?, password: ByteBuffer?, remoteAddress: String?, certificateIdentity: String? = nil) {
        self.clientID = clientID
        self.username = username
        self.password = password
        self.remoteAddress = remoteAddress
        self.certificateIdentity = certificateIdentity
    }
}

/// The verdict of an ``Authenticator``.
public enum AuthenticationResult: Sendable, Hashable {
    /// Accept; the identity is the username the client is known by afterwards (or nil when anonymous).
    case accepted(username: String?)
    /// Wrong username or password: CONNACK return code 4 (3.1.1) or reason 0x86 (5.0).
    case badCredentials
    /// Valid credentials, but this client may not connect: return code 5 / reason 0x87.
    case notAuthorized
    /// The decision could not be made now (the user store is unreachable, or too many password checks
    /// are already queued): return code 3 / reason 0x88 (server unavailable), so the client retries
    /// later instead of treating its credentials as wrong.
    case unavailable
    /// Too many failed logins from the client's address (``LoginThrottle``): refused without a
    /// password check, reason 0x9F (connection rate exceeded) / return code 5.
    case throttled
}

/// Decides whether a CONNECT is allowed. Implementations may await (a database look-up through the pool).
public protocol Authenticator: Sendable {
    func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationResult
}

/// What a client wants to do with a topic, for ``Authorizer``.
public enum TopicAccess: Sendable, Hashable {
    case publish
    case subscribe
}

/// Decides per topic whether a connected client may publish or subscribe (ACLs).
public protocol Authorizer: Sendable {
    /// Whether the client may publish to `topic`, or (`.subscribe`) read it; for `.subscribe` with a
    /// concrete topic name this is the per-message read check of a ``SubscriptionGrant/filtered``
    /// subscription.
    func isAllowed(_ access: TopicAccess, topic: String, clientID: String, username: String?) -> Bool

    /// How a subscription to `filter` is granted. The default asks ``isAllowed(_:topic:clientID:username:)``
    /// once for the whole filter.
    func subscriptionGrant(filter: String, clientID: String, username: String?) -> SubscriptionGrant
}

extension Authorizer {
    public func subscriptionGrant(filter: String, clientID: String, username: String?) -> SubscriptionGrant {
        isAllowed(.subscribe, topic: filter, clientID: clientID, username: username) ? .allowed : .denied
    }
}

/// How a SUBSCRIBE of one topic filter is granted (what mosquitto does with a deny rule that covers part
/// of a wildcard filter: grant it and withhold, message by message, what may not be read).
public enum SubscriptionGrant: Sendable, Hashable {
    /// Refused: the filter itself is denied, or no message it can match may be read.
    case denied
    /// Granted; every message it can match may be read, so deliveries are not checked (no cost per message).
    case allowed
    /// Granted; some messages it can match may not be read: each delivery (and each retained message sent
    /// on subscribe) is checked with `isAllowed(.subscribe, topic:)`.
    case filtered
}

/// The built-in authenticator when no user store is configured: with anonymous access allowed every
/// client is accepted (a presented username is kept for ACLs and logs, as mosquitto does without a
/// password file). Without anonymous access only clients authenticated by a verified certificate
/// (``ConnectCredentials/certificateIdentity``) are accepted: a client without credentials is not
/// authorized (return code 5) and one with a username has bad credentials (4).
public struct AnonymousAuthenticator: Authenticator {
    public var allowAnonymous: Bool

    public init(allowAnonymous: Bool) {
        self.allowAnonymous = allowAnonymous
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationResult {
        if allowAnonymous { return .accepted(username: credentials.username) }
        if let identity = credentials.certificateIdentity { return .accepted(username: identity) }
        return credentials.username == nil ? .notAuthorized : .badCredentials
    }
}

/// Allows every topic access: the behaviour when no ACL rules are configured.
public struct AllowAllAuthorizer: Authorizer {
    public init() {}
    public func isAllowed(_ access: TopicAccess, topic: String, clientID: String, username: String?) -> Bool { true }
}

public import GatewayCore
import MQTTCodec

extension GatewayConfigFile {
    /// `auth`: who may connect (users), and what they may do (ACL). Every key is live on SIGHUP.
    public struct Auth: Codable, Sendable, Equatable {
        /// `auth.anonymous`: whether clients without a username may connect. Default true. `false`
        /// needs `backend: database` (otherwise no client could ever connect).
        public var anonymous = true
        /// `auth.backend`: where usernames and passwords are checked. `none` (the default): a presented
        /// username is taken as is, without a password check (it still counts for ACLs). `database`: the
        /// `users` table of the storage database (`iotgw user add ...`); a presented username must
        /// come with that user's password.
        public var backend = "none"
        /// `auth.cache_ttl`: seconds a looked-up user and a successful password check are remembered;
        /// a password change takes effect within this time (or at once on SIGHUP). 0 disables. Default 30.
        public var cacheTTL = 30.0
        /// `auth.negative_cache_ttl`: seconds an unknown username is remembered. Default 5.
        public var negativeCacheTTL = 5.0
        /// `auth.cache_size`: the most usernames (and, separately, verified passwords) remembered.
        /// Default 10000.
        public var cacheSize = 10_000
        /// `auth.hash_threads`: threads that verify passwords (scrypt, about 16 MiB each). Default 2.
        /// Read at start-up only.
        public var hashThreads = 2
        /// `auth.max_pending_hashes`: password checks that may wait for a thread; more get "server
        /// unavailable". Default 1000. Read at start-up only.
        public var maxPendingHashes = 1_000
        /// `auth.acl`: topic access rules, first match wins; empty (the default) allows everything, any
        /// rule makes the default deny.
        public var acl: [ACLEntry] = []
        /// `auth.login_throttle`: blocking addresses that fail to log in too often (`backend: database`).
        public var loginThrottle = LoginThrottleSettings()

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case anonymous, backend, acl
            case loginThrottle = "login_throttle"
            case cacheTTL = "cache_ttl"
            case negativeCacheTTL = "negative_cache_ttl"
            case cacheSize = "cache_size"
            case hashThreads = "hash_threads"
            case maxPendingHashes = "max_pending_hashes"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Auth()
            anonymous = try c.value(.anonymous, default: d.anonymous)
            backend = try c.value(.backend, default: d.backend)
            cacheTTL = try c.value(.cacheTTL, default: d.cacheTTL)
            negativeCacheTTL = try c.value(.negativeCacheTTL, default: d.negativeCacheTTL)
            cacheSize = try c.value(.cacheSize, default: d.cacheSize)
            hashThreads = try c.value(.hashThreads, default: d.hashThreads)
            maxPendingHashes = try c.value(.maxPendingHashes, default: d.maxPendingHashes)
            acl = try c.value(.acl, default: d.acl)
            loginThrottle = try c.value(.loginThrottle, default: d.loginThrottle)
        }
    }

    /// `auth.login_throttle`: an address with `max_failures` failed logins (wrong password or unknown
    /// user) within `window` seconds is refused for `block` seconds, without a password check.
    public struct LoginThrottleSettings: Codable, Sendable, Equatable {
        /// `auth.login_throttle.max_failures`: failures that block an address; 0 turns it off. Default 10.
        public var maxFailures = 10
        /// `auth.login_throttle.window`: seconds over which failures are counted. Default 60.
        public var window = 60.0
        /// `auth.login_throttle.block`: seconds a blocked address is refused. Default 300.
        public var block = 300.0

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case maxFailures = "max_failures"
            case window, block
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = LoginThrottleSettings()
            maxFailures = try c.value(.maxFailures, default: d.maxFailures)
            window = try c.value(.window, default: d.window)
            block = try c.value(.block, default: d.block)
        }

        /// The throttle's runtime settings.
        public var configuration: LoginThrottle.Configuration {
            var c = LoginThrottle.Configuration()
            c.maxFailures = maxFailures
            c.window = window
            c.block = block
            return c
        }
    }

    /// One `auth.acl` rule: `permission` (allow, deny), `access` (read = subscribe, write = publish,
    /// readwrite), `topic` (a topic filter; `%u` = username, `%c` = client id), and optionally
    /// `username` and `clientid` (the rule applies only to that exact client).
    public struct ACLEntry: Codable, Sendable, Equatable {
        public var permission: String
        public var access: String
        public var topic: String
        public var username: String?
        public var clientid: String?

        public init(permission: String, access: String, topic: String, username: String? = nil, clientid: String? = nil) {
            self.permission = permission
            self.access = access
            self.topic = topic
            self.username = username
            self.clientid = clientid
        }
        enum CodingKeys: String, CodingKey, CaseIterable { case permission, access, topic, username, clientid }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            permission = try c.decode(String.self, forKey: .permission)
            access = try c.decode(String.self, forKey: .access)
            topic = try c.decode(String.self, forKey: .topic)
            username = try c.decodeIfPresent(String.self, forKey: .username)
            clientid = try c.decodeIfPresent(String.self, forKey: .clientid)
        }
    }

    /// The values `auth.backend` accepts.
    public static let authBackends = ["none", "database"]

    /// Range and value checks of `auth`.
    func authValidationErrors() -> [(key: String, message: String)] {
        var errors: [(String, String)] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { errors.append((key, message)) }
        }
        check(Self.authBackends.contains(auth.backend), "auth.backend", "'\(auth.backend)' is not one of \(Self.authBackends.joined(separator: ", "))")
        check(
            auth.anonymous || auth.backend != "none",
            "auth.backend",
            "'none' with auth.anonymous false would refuse every client; set auth.backend: database (the users table, see `iotgw user`)"
        )
        check((0...86_400).contains(auth.cacheTTL), "auth.cache_ttl", "must be 0-86400 seconds")
        check((0...86_400).contains(auth.negativeCacheTTL), "auth.negative_cache_ttl", "must be 0-86400 seconds")
        check((1...1_000_000).contains(auth.cacheSize), "auth.cache_size", "must be 1-1000000")
        check((1...64).contains(auth.hashThreads), "auth.hash_threads", "must be 1-64")
        check((0...1_000_000).contains(auth.maxPendingHashes), "auth.max_pending_hashes", "must be 0-1000000")
        check((0...1_000_000).contains(auth.loginThrottle.maxFailures), "auth.login_throttle.max_failures", "must be 0-1000000 (0 turns the throttle off)")
        check(auth.loginThrottle.window > 0 && auth.loginThrottle.window <= 86_400, "auth.login_throttle.window", "must be above 0 and at most 86400 seconds")
        check(auth.loginThrottle.block > 0 && auth.loginThrottle.block <= 604_800, "auth.login_throttle.block", "must be above 0 and at most 604800 seconds (a week)")
        for (index, entry) in auth.acl.enumerated() {
            let key = "auth.acl[\(index)]"
            check(ACLRule.Permission(rawValue: entry.permission) != nil, "\(key).permission", "'\(entry.permission)' is not one of allow, deny")
            check(
                ACLRule.Access(rawValue: entry.access) != nil,
                "\(key).access",
                "'\(entry.access)' is not one of read (subscribe), write (publish), readwrite"
            )
            if let problem = Self.aclTopicProblem(entry.topic) { errors.append(("\(key).topic", problem)) }
            check(entry.username.map { !$0.isEmpty } ?? true, "\(key).username", "must not be empty (leave it out to match every client)")
            check(entry.clientid.map { !$0.isEmpty } ?? true, "\(key).clientid", "must not be empty (leave it out to match every client)")
        }
        return errors
    }

    /// Why `topic` is not a usable ACL pattern, or nil.
    static func aclTopicProblem(_ topic: String) -> String? {
        var rest = topic[...]
        var plain = ""
        while let percent = rest.firstIndex(of: "%") {
            plain += rest[..<percent]
            let next = rest.index(after: percent)
            guard next < rest.endIndex, rest[next] == "u" || rest[next] == "c" else {
                return "'\(topic)': only %u (username) and %c (client id) may follow %"
            }
            plain += "x"
            rest = rest[rest.index(after: next)...]
        }
        plain += rest
        if plain.hasPrefix("$share/") { return "'\(topic)': write the filter without $share/GROUP/ (shared subscriptions are checked by their filter)" }
        return MQTTTopic.isValidFilter(plain) ? nil : "'\(topic)' is not a valid topic filter"
    }

    /// `auth.acl` as the core's rules (call on a validated file).
    public var aclRules: [ACLRule] {
        auth.acl.map { entry in
            ACLRule(
                permission: ACLRule.Permission(rawValue: entry.permission) ?? .deny,
                access: ACLRule.Access(rawValue: entry.access) ?? .readwrite,
                topic: entry.topic,
                username: entry.username,
                clientID: entry.clientid
            )
        }
    }

    /// The authorizer `auth.acl` describes: allow-all without rules.
    public var authorizer: any Authorizer {
        auth.acl.isEmpty ? AllowAllAuthorizer() : ACLAuthorizer(rules: aclRules)
    }
}

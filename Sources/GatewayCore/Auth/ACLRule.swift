/// One access-control rule: `permission` (allow or deny) of `access` (read = subscribe, write =
/// publish) to topics matching `topic`, optionally only for one username or client id.
///
/// `topic` is an MQTT topic filter in which `%u` stands for the client's username and `%c` for its
/// client id, substituted at check time. A rule with `%u` never matches a client without a username,
/// and a substituted value containing `/`, `+` or `#` (or an empty one) makes the rule not match: a
/// username such as `alice/x` or `#` must not widen `devices/%u/#` into someone else's tree.
public struct ACLRule: Sendable, Hashable {
    public enum Permission: String, Sendable, Hashable {
        case allow
        case deny
    }

    public enum Access: String, Sendable, Hashable, CaseIterable {
        /// Subscribe.
        case read
        /// Publish (including Will messages).
        case write
        /// Both.
        case readwrite

        func includes(_ access: TopicAccess) -> Bool {
            switch (self, access) {
            case (.readwrite, _), (.read, .subscribe), (.write, .publish): true
            default: false
            }
        }
    }

    public var permission: Permission
    public var access: Access
    /// The topic filter pattern (`%u`, `%c`, `+`, `#`).
    public var topic: String
    /// When set, the rule applies only to this exact username.
    public var username: String?
    /// When set, the rule applies only to this exact client id.
    public var clientID: String?

    public init(permission: Permission, access: Access, topic: String, username: String? = nil, clientID: String? = nil) {
        self.permission = permission
        self.access = access
        self.topic = topic
        self.username = username
        self.clientID = clientID
    }

    /// The pattern with `%u` and `%c` substituted, or nil when the rule cannot apply to this client
    /// (no username for `%u`, or a value that would add levels or wildcards).
    func substitutedTopic(clientID: String, username: String?) -> String? {
        guard topic.contains("%") else { return topic }
        func safe(_ value: String?) -> String? {
            guard let value, !value.isEmpty,
                !value.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") })
            else { return nil }
            return value
        }
        var result = topic
        if result.contains("%u") {
            guard let name = safe(username) else { return nil }
            result = result.replacingOccurrences(of: "%u", with: name)
        }
        if result.contains("%c") {
            guard let id = safe(clientID) else { return nil }
            result = result.replacingOccurrences(of: "%c", with: id)
        }
        return result
    }
}

extension String {
    /// Replaces every occurrence of `target` (non-empty) with `replacement`, without Foundation.
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        var result = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound]
            result += replacement
            rest = rest[range.upperBound...]
        }
        result += rest
        return result
    }
}

/// Topic access decided by an ordered list of ``ACLRule``s: the first rule that applies wins; when
/// rules exist and none applies the access is denied; with no rules everything is allowed.
///
/// Publish: a rule applies when its pattern matches the topic name.
/// Subscribe: an allow rule applies only when its pattern covers the whole filter (every topic the
/// filter can match also matches the pattern: `devices/%u/#` allows `devices/alice/+` but not
/// `devices/#`); a deny rule applies as soon as its pattern overlaps the filter (some topic matches
/// both), so a deny for `devices/secret` refuses a subscription to `devices/#` placed after it could
/// otherwise leak. Shared subscriptions are checked by their filter part (the broker strips
/// `$share/GROUP/`). As in MQTT matching, a pattern starting with `+` or `#` does not cover topics
/// starting with `$` (`$SYS/...` needs a rule of its own).
public struct ACLAuthorizer: Authorizer {
    public let rules: [ACLRule]
    /// Each rule's topic split into levels, when it has no `%u`/`%c` to substitute (split once here
    /// instead of for every check: a filtered subscription checks every message it receives).
    private let staticLevels: [TopicLevels?]
    /// Rule indices (ascending) by their topic's first level, for rules whose first level is a plain name.
    private let firstLevelIndex: [String: [Int]]
    /// Indices (ascending) of the rules whose first level is `+`, `#` or holds a substitution.
    private let openFirstLevel: [Int]

    public init(rules: [ACLRule]) {
        self.rules = rules
        let staticLevels = rules.map { $0.topic.contains("%") ? nil : TopicLevels($0.topic) }
        self.staticLevels = staticLevels
        var byFirst: [String: [Int]] = [:]
        var open: [Int] = []
        for (index, levels) in staticLevels.enumerated() {
            if let first = levels?.levels.first, first != "+", first != "#" {
                byFirst[first, default: []].append(index)
            } else {
                open.append(index)
            }
        }
        self.firstLevelIndex = byFirst
        self.openFirstLevel = open
    }

    /// Rule `index`'s topic levels when it applies to this client for `access`, else nil. A plain function
    /// called from plain loops: a publisher's every message is checked against every rule.
    private func levels(ofRule index: Int, _ access: TopicAccess, clientID: String, username: String?) -> TopicLevels? {
        let rule = rules[index]
        guard rule.access.includes(access) else { return nil }
        if let required = rule.username, required != username { return nil }
        if let required = rule.clientID, required != clientID { return nil }
        if let levels = staticLevels[index] { return levels }
        return rule.substitutedTopic(clientID: clientID, username: username).map(TopicLevels.init)
    }

    /// First match decides, as for ``isAllowed(_:topic:clientID:username:)``, but per part of the filter:
    /// a rule whose topic covers the whole filter decides what no earlier rule decided; a rule that only
    /// overlaps it decides part of it. So `deny read a/secret` before `allow readwrite #` grants `#` as
    /// ``SubscriptionGrant/filtered`` (everything but `a/secret` is delivered), refuses `a/secret`, and
    /// grants `b/+` as ``SubscriptionGrant/allowed``.
    public func subscriptionGrant(filter: String, clientID: String, username: String?) -> SubscriptionGrant {
        if rules.isEmpty { return .allowed }
        let levels = TopicLevels(filter)
        var partlyDecided = false
        var partlyAllowed = false
        for index in rules.indices {
            guard let pattern = self.levels(ofRule: index, .subscribe, clientID: clientID, username: username) else { continue }
            let rule = rules[index]
            if TopicLevels.covers(pattern, levels) {
                if rule.permission == .allow { return partlyDecided ? .filtered : .allowed }
                return partlyAllowed ? .filtered : .denied
            }
            if TopicLevels.overlap(pattern, levels) {
                partlyDecided = true
                if rule.permission == .allow { partlyAllowed = true }
            }
        }
        // Nothing covers the rest of the filter: it is denied; what earlier rules allowed is delivered.
        return partlyAllowed ? .filtered : .denied
    }

    public func isAllowed(_ access: TopicAccess, topic: String, clientID: String, username: String?) -> Bool {
        if rules.isEmpty { return true }
        let levels = TopicLevels(topic)
        func decision(_ index: Int) -> Bool? {
            guard let patternLevels = self.levels(ofRule: index, access, clientID: clientID, username: username) else { return nil }
            let rule = rules[index]
            let applies: Bool
            switch (access, rule.permission) {
            case (.publish, _):
                applies = TopicLevels.covers(patternLevels, levels)
            case (.subscribe, .allow):
                applies = TopicLevels.covers(patternLevels, levels)
            case (.subscribe, .deny):
                applies = TopicLevels.overlap(patternLevels, levels)
            }
            return applies ? rule.permission == .allow : nil
        }
        guard let first = levels.levels.first, !topic.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") })
        else {
            // A filter (SUBSCRIBE as a whole): every rule in order.
            for index in rules.indices {
                if let allowed = decision(index) { return allowed }
            }
            return false
        }
        // A topic name (a PUBLISH, or a message's read check): only rules whose first level is this topic's
        // or open (a wildcard or a substitution) can match; the others are skipped without a look, in the
        // same order. That keeps a check against 1,000 rules cheap.
        let specific = firstLevelIndex[first] ?? []
        var i = 0
        var j = 0
        while i < specific.count || j < openFirstLevel.count {
            let index: Int
            if j == openFirstLevel.count || (i < specific.count && specific[i] < openFirstLevel[j]) {
                index = specific[i]
                i += 1
            } else {
                index = openFirstLevel[j]
                j += 1
            }
            if let allowed = decision(index) { return allowed }
        }
        return false
    }
}

/// A topic name or filter split into levels, for ACL matching.
struct TopicLevels {
    /// Strings, not substrings: comparing two short native strings is a compare of their inline bytes,
    /// where substrings take a slow generic path — and a filtered subscription compares every message's
    /// levels with every rule's.
    let levels: [String]

    init(_ topic: String) {
        levels = topic.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    }

    private static func isWildcard(_ level: String) -> Bool { level == "+" || level == "#" }

    /// Whether every topic matched by `filter` is matched by `pattern` (for a topic name: whether
    /// `pattern` matches it).
    static func covers(_ pattern: TopicLevels, _ filter: TopicLevels) -> Bool {
        let p = pattern.levels
        let f = filter.levels
        // A first-level wildcard never matches a `$` topic (MQTT-4.7.2-1).
        if let first = f.first, first.hasPrefix("$"), let head = p.first, isWildcard(head) { return false }
        var i = 0
        while i < p.count {
            if p[i] == "#" { return true }  // covers the rest, including the parent level and `#`
            guard i < f.count else { return false }
            switch p[i] {
            case "+":
                if f[i] == "#" { return false }
            default:
                if f[i] != p[i] { return false }
            }
            i += 1
        }
        return i == f.count
    }

    /// Whether some topic is matched by both `a` and `b`.
    static func overlap(_ a: TopicLevels, _ b: TopicLevels) -> Bool {
        let x = a.levels
        let y = b.levels
        if let first = x.first, let second = y.first {
            if (first.hasPrefix("$") && isWildcard(second)) || (second.hasPrefix("$") && isWildcard(first)) {
                return false
            }
        }
        var i = 0
        while i < x.count && i < y.count {
            if x[i] == "#" || y[i] == "#" { return true }
            if x[i] != "+" && y[i] != "+" && x[i] != y[i] { return false }
            i += 1
        }
        if x.count == y.count { return true }
        // `a/#` also matches `a`: one side may end where the other has a final `#`.
        let longer = x.count > y.count ? x : y
        return longer.count == i + 1 && longer[i] == "#"
    }
}

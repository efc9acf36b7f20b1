import MQTTCodec

/// A subscription as the index stores it: who, with which options.
struct SubscriptionEntry: Sendable {
    let session: Session
    var options: MQTTSubscription
    /// MQTT 5 Subscription Identifier, delivered with matching messages.
    var subscriptionIdentifier: UInt32?
    /// Set for members of a shared subscription group.
    var sharedGroup: SharedGroupKey? = nil
    /// Whether each message must pass the ACL read check first (``SubscriptionGrant/filtered``: a deny
    /// rule overlaps the filter). False for most subscriptions, which then cost nothing per message.
    var filtered = false
}

/// A topic-level trie of subscriptions with `+` and `#` wildcards and shared groups.
///
/// Matching walks one path per topic level (plus the `+` and `#` branches), so its cost depends on the
/// topic's depth and the wildcards along the way, not on the number of subscriptions. Not thread-safe
/// by itself: the ``Broker`` keeps it behind its lock.
struct SubscriptionIndex: Sendable {
    private final class Node: @unchecked Sendable {
        // @unchecked Sendable: nodes are only ever reached through `SubscriptionIndex`, whose owner
        // (the Broker) mutates and reads it exclusively under one Mutex; no node escapes that lock.
        var children: [Substring: Node] = [:]
        /// Plain subscriptions at this node, by client id.
        var subscribers: [String: SubscriptionEntry] = [:]
        /// Shared subscriptions at this node: group name → members by client id.
        var shared: [String: SharedGroup] = [:]

        var isEmpty: Bool { children.isEmpty && subscribers.isEmpty && shared.isEmpty }
    }

    /// Members of one `$share/GROUP/filter` and the round-robin cursor used to pick one.
    struct SharedGroup: Sendable {
        var members: [String: SubscriptionEntry] = [:]
        var order: [String] = []
        var cursor = 0
    }

    private let root = Node()

    private(set) var count = 0

    /// Counts changes to the subscriptions (added, replaced, removed, ACL filtering changed): a match
    /// computed while this had one value stays right for as long as it keeps that value (``RouteCache``).
    private(set) var generation: UInt64 = 0

    /// Adds or replaces `clientID`'s subscription to `filter` (already validated). Returns whether the
    /// subscription is new (false when it replaced one).
    @discardableResult
    mutating func insert(filter: String, group: String?, entry: SubscriptionEntry) -> Bool {
        generation &+= 1
        var node = root
        for level in filter.split(separator: "/", omittingEmptySubsequences: false) {
            if let child = node.children[level] {
                node = child
            } else {
                let child = Node()
                node.children[level] = child
                node = child
            }
        }
        let clientID = entry.session.clientID
        let isNew: Bool
        if let group {
            var shared = node.shared[group] ?? SharedGroup()
            isNew = shared.members.updateValue(entry, forKey: clientID) == nil
            if isNew { shared.order.append(clientID) }
            node.shared[group] = shared
        } else {
            isNew = node.subscribers.updateValue(entry, forKey: clientID) == nil
        }
        if isNew { count += 1 }
        return isNew
    }

    /// Sets whether `session`'s subscription to `filter` needs the per-message ACL read check
    /// (``SubscriptionEntry/filtered``). Returns whether the subscription exists (an entry under the same
    /// client id that belongs to a newer session is left alone).
    @discardableResult
    mutating func setFiltered(_ filtered: Bool, filter: String, group: String?, session: Session) -> Bool {
        generation &+= 1
        let clientID = session.clientID
        var node = root
        for level in filter.split(separator: "/", omittingEmptySubsequences: false) {
            guard let child = node.children[level] else { return false }
            node = child
        }
        if let group {
            guard node.shared[group]?.members[clientID]?.session === session else { return false }
            node.shared[group]!.members[clientID]!.filtered = filtered
        } else {
            guard node.subscribers[clientID]?.session === session else { return false }
            node.subscribers[clientID]!.filtered = filtered
        }
        return true
    }

    /// Removes `clientID`'s subscription to `filter`. Returns whether one existed.
    @discardableResult
    mutating func remove(filter: String, group: String?, clientID: String) -> Bool {
        generation &+= 1
        var path: [(Node, Substring)] = []
        var node = root
        for level in filter.split(separator: "/", omittingEmptySubsequences: false) {
            guard let child = node.children[level] else { return false }
            path.append((node, level))
            node = child
        }
        let removed: Bool
        if let group {
            guard var shared = node.shared[group], shared.members.removeValue(forKey: clientID) != nil else {
                return false
            }
            shared.order.removeAll { $0 == clientID }
            node.shared[group] = shared.members.isEmpty ? nil : shared
            removed = true
        } else {
            removed = node.subscribers.removeValue(forKey: clientID) != nil
        }
        guard removed else { return false }
        count -= 1
        // Prune empty nodes so a churn of unique topics does not leave the trie growing.
        for (parent, level) in path.reversed() {
            guard let child = parent.children[level], child.isEmpty else { break }
            parent.children[level] = nil
        }
        return true
    }

    /// Calls `body` for every plain subscription matching `topic`, and collects one chosen member per
    /// matching shared group (chosen by `pick`, which sees the group's members in round-robin order).
    ///
    /// A topic starting with `$` is not matched by a filter starting with a wildcard (MQTT-4.7.2-1).
    mutating func forEachMatch(
        topic: String,
        _ body: (SubscriptionEntry) -> Void,
        pickShared: (inout SharedGroup) -> SubscriptionEntry?
    ) {
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        let dollar = topic.hasPrefix("$")
        Self.match(node: root, levels: levels[...], isFirst: true, dollar: dollar, body, pickShared)
    }

    private static func match(
        node: Node,
        levels: ArraySlice<Substring>,
        isFirst: Bool,
        dollar: Bool,
        _ body: (SubscriptionEntry) -> Void,
        _ pickShared: (inout SharedGroup) -> SubscriptionEntry?
    ) {
        let wildcardsAllowed = !(isFirst && dollar)
        // `#` matches the parent level too ("a/#" matches "a") and everything below.
        if wildcardsAllowed, let hash = node.children["#"] {
            visit(hash, body, pickShared)
        }
        guard let level = levels.first else {
            visit(node, body, pickShared)
            return
        }
        let rest = levels.dropFirst()
        if let exact = node.children[level] {
            match(node: exact, levels: rest, isFirst: false, dollar: dollar, body, pickShared)
        }
        if wildcardsAllowed, let plus = node.children["+"] {
            match(node: plus, levels: rest, isFirst: false, dollar: dollar, body, pickShared)
        }
    }

    private static func visit(
        _ node: Node,
        _ body: (SubscriptionEntry) -> Void,
        _ pickShared: (inout SharedGroup) -> SubscriptionEntry?
    ) {
        for entry in node.subscribers.values { body(entry) }
        if !node.shared.isEmpty {
            for name in Array(node.shared.keys) {
                if let chosen = pickShared(&node.shared[name]!) { body(chosen) }
            }
        }
    }
}

extension SubscriptionIndex {
    /// Picks a member of shared group `group` on `filter` other than `excluding`, with `pick` choosing
    /// among the remaining members; nil when there is none.
    func pickSharedMember(
        group: String,
        filter: String,
        excluding clientID: String,
        pick: (inout SharedGroup) -> SubscriptionEntry?
    ) -> SubscriptionEntry? {
        var node = root
        for level in filter.split(separator: "/", omittingEmptySubsequences: false) {
            guard let child = node.children[level] else { return nil }
            node = child
        }
        guard var shared = node.shared[group] else { return nil }
        shared.members[clientID] = nil
        shared.order.removeAll { $0 == clientID }
        guard !shared.members.isEmpty else { return nil }
        let chosen = pick(&shared)
        // Keep the advanced cursor, but not the removal: the leaving member unsubscribes on its own.
        node.shared[group]?.cursor = shared.cursor
        return chosen
    }

    /// Whether `filter` matches `topic` (a direct check, used for retained messages and tests).
    static func matches(filter: String, topic: String) -> Bool {
        MQTTTopic.matches(filter: filter, topic: topic)
    }
}

/// Topic name and topic filter rules (MQTT 3.1.1 section 4.7, 5.0 section 4.7).
public enum MQTTTopic {
    /// A topic name is at least one character long and contains no wildcard (MQTT-3.3.2-2).
    public static func isValidName(_ name: String) -> Bool {
        guard !name.isEmpty else { return false }
        // Every received PUBLISH's topic is checked: over its bytes, not the generic UTF-8 view's iterator.
        let hasWildcard =
            name.utf8.withContiguousStorageIfAvailable { bytes in
                bytes.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
            } ?? name.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") })
        return !hasWildcard
    }

    /// A topic filter is at least one character long; `+` occupies a whole level; `#` occupies a whole
    /// level and is the last one (MQTT-4.7.1-2, MQTT-4.7.1-3).
    public static func isValidFilter(_ filter: String) -> Bool {
        guard !filter.isEmpty else { return false }
        let levels = filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        for (index, level) in levels.enumerated() {
            if level.contains(UInt8(ascii: "#")) {
                guard level.count == 1, index == levels.count - 1 else { return false }
            }
            if level.contains(UInt8(ascii: "+")) {
                guard level.count == 1 else { return false }
            }
        }
        return true
    }

    /// Splits `$share/GROUP/FILTER` into its group and filter, or returns `nil` when `filter` is not a
    /// shared subscription. A malformed share (empty group, wildcard in the group, missing filter)
    /// returns `.invalid`.
    /// Whether `filter` matches the topic name `topic` (MQTT section 4.7; a topic starting with `$`
    /// matches only filters that name its first level).
    public static func matches(filter: String, topic: String) -> Bool {
        let matched = filter.utf8.withContiguousStorageIfAvailable { filter in
            topic.utf8.withContiguousStorageIfAvailable { topic in matches(filter: filter, topic: topic) }
        }
        if let matched, let matched { return matched }
        return matchesByLevels(filter: filter, topic: topic)
    }

    /// ``matches(filter:topic:)`` on UTF-8 bytes, one pass over both, without splitting into levels.
    /// `filter` must be a valid filter (``isValidFilter(_:)``).
    public static func matches(filter: UnsafeBufferPointer<UInt8>, topic: UnsafeBufferPointer<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/")
        let plus = UInt8(ascii: "+")
        let hash = UInt8(ascii: "#")
        if topic.first == UInt8(ascii: "$") && (filter.first == plus || filter.first == hash) { return false }
        var f = 0
        var t = 0
        // At the start of a level in both.
        while true {
            if f < filter.count && filter[f] == hash { return true }
            if f < filter.count && filter[f] == plus {
                while t < topic.count && topic[t] != slash { t += 1 }
                f += 1
            } else {
                while f < filter.count && filter[f] != slash {
                    guard t < topic.count, topic[t] == filter[f] else { return false }
                    f += 1
                    t += 1
                }
                if t < topic.count && topic[t] != slash { return false }
            }
            // Both at a level's end: a slash or the end.
            let filterEnded = f == filter.count
            let topicEnded = t == topic.count
            if filterEnded { return topicEnded }
            // `a/#` also matches `a` (the parent level).
            if topicEnded { return f + 2 == filter.count && filter[f + 1] == hash }
            f += 1
            t += 1
        }
    }

    /// The reference matcher, level by level (strings without contiguous UTF-8 storage).
    package static func matchesByLevels(filter: String, topic: String) -> Bool {
        if topic.hasPrefix("$") && (filter.hasPrefix("+") || filter.hasPrefix("#")) { return false }
        var f = filter.split(separator: "/", omittingEmptySubsequences: false)[...]
        var t = topic.split(separator: "/", omittingEmptySubsequences: false)[...]
        while let level = f.first {
            if level == "#" { return true }
            guard let topicLevel = t.first else { return false }
            if level != "+" && level != topicLevel { return false }
            f = f.dropFirst()
            t = t.dropFirst()
        }
        return t.isEmpty
    }

    public static func parseShared(_ filter: String) -> SharedFilter? {
        guard filter.hasPrefix("$share/") else { return nil }
        let rest = filter.dropFirst("$share/".count)
        guard let slash = rest.firstIndex(of: "/") else { return .invalid }
        let group = rest[..<slash]
        let inner = String(rest[rest.index(after: slash)...])
        guard !group.isEmpty, !group.contains("+"), !group.contains("#"), isValidFilter(inner) else {
            return .invalid
        }
        return .shared(group: String(group), filter: inner)
    }

    /// The result of ``parseShared(_:)``.
    public enum SharedFilter: Hashable, Sendable {
        case shared(group: String, filter: String)
        case invalid
    }
}

public import MQTTCodec

/// One topic rule of a bridge, as in mosquitto's `topic PATTERN DIRECTION QOS LOCAL-PREFIX REMOTE-PREFIX`:
/// on the gateway the rule covers `localPrefix + topic`, upstream `remotePrefix + topic`, and a message
/// crossing the bridge has one prefix replaced by the other.
public struct BridgeRule: Sendable, Hashable {
    /// Which way messages cross.
    public enum Direction: String, Sendable, Hashable, CaseIterable {
        /// Gateway → upstream.
        case out
        /// Upstream → gateway.
        case `in`
        /// Both ways.
        case both

        var forwardsOut: Bool { self != .in }
        var forwardsIn: Bool { self != .out }
    }

    /// The topic filter between the prefixes.
    public var topic: String
    public var direction: Direction
    /// The highest QoS of the subscriptions on both sides.
    public var qos: MQTTQoS
    public var localPrefix: String
    public var remotePrefix: String

    public init(topic: String, direction: Direction, qos: MQTTQoS, localPrefix: String = "", remotePrefix: String = "") {
        self.topic = topic
        self.direction = direction
        self.qos = qos
        self.localPrefix = localPrefix
        self.remotePrefix = remotePrefix
    }

    /// The filter subscribed on the gateway (for `out`/`both`).
    public var localFilter: String { localPrefix + topic }
    /// The filter subscribed upstream (for `in`/`both`).
    public var remoteFilter: String { remotePrefix + topic }
}

/// Maps topics across a bridge with its rules. Pure, so it is unit tested without a broker.
public struct TopicMapper: Sendable {
    public let rules: [BridgeRule]

    public init(rules: [BridgeRule]) {
        self.rules = rules
    }

    /// The gateway subscriptions the bridge's internal session holds: one per distinct local filter of
    /// the `out`/`both` rules, at the highest QoS asked for it.
    public var localSubscriptions: [(filter: String, qos: MQTTQoS)] {
        Self.merged(rules.filter(\.direction.forwardsOut).map { ($0.localFilter, $0.qos) })
    }

    /// The upstream subscriptions: one per distinct remote filter of the `in`/`both` rules.
    public var remoteSubscriptions: [(filter: String, qos: MQTTQoS)] {
        Self.merged(rules.filter(\.direction.forwardsIn).map { ($0.remoteFilter, $0.qos) })
    }

    /// The upstream topic for a gateway message on `topic`: the first `out`/`both` rule whose local
    /// filter matches gets its local prefix replaced by its remote prefix. Nil when no rule matches.
    public func remoteTopic(forLocal topic: String) -> String? {
        for rule in rules where rule.direction.forwardsOut && topic.hasPrefix(rule.localPrefix) && Self.matches(filter: rule.localFilter, topic: topic) {
            return rule.remotePrefix + topic.dropFirst(rule.localPrefix.count)
        }
        return nil
    }

    /// The gateway topic for an upstream message on `topic`: the first `in`/`both` rule whose remote
    /// filter matches gets its remote prefix replaced by its local prefix. Nil when no rule matches.
    public func localTopic(forRemote topic: String) -> String? {
        for rule in rules where rule.direction.forwardsIn && topic.hasPrefix(rule.remotePrefix) && Self.matches(filter: rule.remoteFilter, topic: topic) {
            return rule.localPrefix + topic.dropFirst(rule.remotePrefix.count)
        }
        return nil
    }

    /// Whether `filter` matches `topic` (MQTT section 4.7; `$` topics only match filters naming them).
    public static func matches(filter: String, topic: String) -> Bool {
        MQTTTopic.matches(filter: filter, topic: topic)
    }

    private static func merged(_ entries: [(String, MQTTQoS)]) -> [(filter: String, qos: MQTTQoS)] {
        var order: [String] = []
        var best: [String: MQTTQoS] = [:]
        for (filter, qos) in entries {
            if let known = best[filter] {
                best[filter] = max(known, qos)
            } else {
                order.append(filter)
                best[filter] = qos
            }
        }
        return order.map { ($0, best[$0]!) }
    }
}

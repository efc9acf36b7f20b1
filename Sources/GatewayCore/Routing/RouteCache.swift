import MQTTCodec

/// One subscriber a message is routed to, as the router worked it out from the matching subscriptions.
struct RouteTarget {
    var session: Session
    /// The highest QoS among this subscriber's matching subscriptions; it receives the message at
    /// min(this, the published QoS) (MQTT-3.3.5-1 for overlapping subscriptions).
    var subscriptionQoS: MQTTQoS
    var retainAsPublished: Bool
    var identifiers: [UInt32]
    var sharedGroup: SharedGroupKey?
}

/// The last route one publisher's messages took: its topic, and the subscribers that topic matched.
///
/// Devices publish to the same topic again and again, so a publisher's connection keeps the result of its
/// last match and the router reuses it while nothing it depends on has changed:
/// - the subscriptions (``SubscriptionIndex/generation``, read under the router's lock),
/// - the access control and configuration (``Broker/liveGeneration``: ACL read checks are part of the result).
///
/// Never kept: a match through a shared subscription (each message picks a member in turn) or one with more
/// than ``maximumTargets`` subscribers (a fan-out's match is cheap beside its deliveries, and the list would
/// be large). Owned by one connection and only used from its task, inside the router's lock.
final class RouteCache {
    /// Larger matches are not kept.
    static let maximumTargets = 16

    private var topic = ""
    private var indexGeneration: UInt64 = 0
    private var liveGeneration: UInt64 = 0
    private var valid = false
    private(set) var targets: [RouteTarget] = []
    /// Subscriptions the ACL read check withheld the topic from.
    private(set) var withheld = 0
    /// Messages routed through the kept route (for tests).
    private(set) var reuses = 0

    init() {}

    /// Whether the kept route is the one `topic` takes now (counted in ``reuses`` when it is).
    func holds(topic: String, indexGeneration: UInt64, liveGeneration: UInt64) -> Bool {
        guard valid && self.indexGeneration == indexGeneration && self.liveGeneration == liveGeneration && self.topic == topic
        else { return false }
        reuses &+= 1
        return true
    }

    /// Keeps a route just worked out, or forgets the kept one if this one may not be kept.
    func keep(
        topic: String,
        targets: [RouteTarget],
        withheld: Int,
        keepable: Bool,
        indexGeneration: UInt64,
        liveGeneration: UInt64
    ) {
        guard keepable && targets.count <= Self.maximumTargets else {
            forget()
            return
        }
        self.topic = topic
        self.targets = targets
        self.withheld = withheld
        self.indexGeneration = indexGeneration
        self.liveGeneration = liveGeneration
        valid = true
    }

    /// Drops the kept route (and the sessions it references).
    func forget() {
        valid = false
        targets = []
        topic = ""
    }
}

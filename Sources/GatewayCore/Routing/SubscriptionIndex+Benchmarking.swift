import MQTTCodec

/// A ``SubscriptionIndex`` filled with subscriptions, for the micro-benchmarks in `Benchmarks/`.
///
/// The index and its entries stay internal; this is the one public door to them, so the benchmark package
/// (a separate package, which cannot see `package` symbols) measures the same trie the ``Broker`` routes with.
/// Not for production use: it owns its own sessions and is not thread-safe.
public struct SubscriptionIndexBenchmark: Sendable {
    private var index = SubscriptionIndex()

    /// The number of subscriptions in the index.
    public var count: Int { index.count }

    /// Creates an index with one subscription per `(clientID, filter)` pair.
    /// - Parameter subscriptions: client ids and validated topic filters; a client id may appear more than once.
    public init(subscriptions: [(clientID: String, filter: String)]) {
        var sessions: [String: Session] = [:]
        let budget = QueueBudget(limit: 1 << 30)
        let metrics = GatewayMetrics()
        for (clientID, filter) in subscriptions {
            let session = sessions[clientID] ?? Session(
                clientID: clientID,
                persistent: false,
                expiryInterval: nil,
                limits: Session.Limits(maxInflight: 32, maxQueuedMessages: 1000, maxQueuedBytes: 1 << 20),
                budget: budget,
                metrics: metrics
            )
            sessions[clientID] = session
            index.insert(
                filter: filter,
                group: nil,
                entry: SubscriptionEntry(session: session, options: MQTTSubscription(topicFilter: filter, qos: .atLeastOnce))
            )
        }
    }

    /// Walks the trie for `topic` as routing does and returns how many subscriptions match.
    public mutating func matchCount(topic: String) -> Int {
        var matches = 0
        index.forEachMatch(topic: topic) { _ in matches += 1 } pickShared: { _ in nil }
        return matches
    }
}

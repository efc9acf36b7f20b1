@testable import GatewayCore
import MQTTCodec
import Testing

/// A filter, a topic, and whether the spec says they match (MQTT 3.1.1 / 5.0 section 4.7).
struct MatchCase: Sendable, CustomTestStringConvertible {
    var filter: String
    var topic: String
    var matches: Bool
    init(_ filter: String, _ topic: String, _ matches: Bool) {
        self.filter = filter
        self.topic = topic
        self.matches = matches
    }
    var testDescription: String { "\(filter) \(matches ? "matches" : "does not match") \(topic)" }
}

private let specMatchCases: [MatchCase] = [
    // 4.7.1.2 multi-level wildcard.
    MatchCase("sport/tennis/player1/#", "sport/tennis/player1", true),
    MatchCase("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
    MatchCase("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
    MatchCase("sport/#", "sport", true),
    MatchCase("#", "sport/tennis/player1", true),
    MatchCase("#", "/", true),
    MatchCase("#", "a", true),
    MatchCase("sport/tennis/#", "sport/tennis", true),
    MatchCase("sport/tennis/#", "sport/tennisplayer1", false),
    MatchCase("sport/tennis/#", "sport", false),
    // 4.7.1.3 single-level wildcard.
    MatchCase("sport/tennis/+", "sport/tennis/player1", true),
    MatchCase("sport/tennis/+", "sport/tennis/player2", true),
    MatchCase("sport/tennis/+", "sport/tennis/player1/ranking", false),
    MatchCase("sport/tennis/+", "sport/tennis", false),
    MatchCase("sport/+", "sport", false),
    MatchCase("sport/+", "sport/", true),
    MatchCase("+/+", "/finance", true),
    MatchCase("/+", "/finance", true),
    MatchCase("+", "/finance", false),
    MatchCase("+", "finance", true),
    MatchCase("sport/+/player1", "sport/tennis/player1", true),
    MatchCase("sport/+/player1", "sport/tennis/player2", false),
    MatchCase("+/tennis/#", "sport/tennis/player1/ranking", true),
    MatchCase("+/+/#", "a/b", true),
    MatchCase("a/+/#", "a", false),
    // 4.7.2 topics beginning with $.
    MatchCase("#", "$SYS/broker/clients", false),
    MatchCase("#", "$SYS", false),
    MatchCase("+/monitor/Clients", "$SYS/monitor/Clients", false),
    MatchCase("+", "$SYS", false),
    MatchCase("$SYS/#", "$SYS/monitor/Clients", true),
    MatchCase("$SYS/#", "$SYS", true),
    MatchCase("$SYS/monitor/+", "$SYS/monitor/Clients", true),
    MatchCase("$SYS/+/Clients", "$SYS/monitor/Clients", true),
    MatchCase("a/#", "a/$b", true),
    MatchCase("+/$b", "a/$b", true),
    // Exact and case-sensitive matching (4.7.3).
    MatchCase("ACCOUNTS", "Accounts", false),
    MatchCase("a/b", "a/b", true),
    MatchCase("a/b", "a/b/c", false),
    MatchCase("a/b/c", "a/b", false),
    MatchCase("a//b", "a//b", true),
    MatchCase("a/+/b", "a//b", true),
    MatchCase("/", "/", true),
    MatchCase("a", "a/", false),
]

/// The client ids of plain and shared entries that match `topic`. Shared groups are resolved by
/// taking the member at the group's cursor.
private func matchedClients(_ index: SubscriptionIndex, _ topic: String) -> [String] {
    // A copy shares the trie's nodes (they are objects), so this sees exactly what `index` holds.
    var index = index
    var clients: [String] = []
    index.forEachMatch(topic: topic) { entry in
        clients.append(entry.session.clientID)
    } pickShared: { group in
        group.members[group.order[group.cursor % group.order.count]]
    }
    return clients.sorted()
}

/// Counts the trie's nodes (root included) by reflection: the node type is private to the index,
/// and pruning is otherwise invisible from outside.
private func nodeCount(_ index: SubscriptionIndex) -> Int {
    func count(_ node: Any) -> Int {
        guard let children = Mirror(reflecting: node).children.first(where: { $0.label == "children" })?.value else {
            Issue.record("the index node has no `children` to inspect")
            return 0
        }
        let values = Mirror(reflecting: children).children.compactMap { Mirror(reflecting: $0.value).children.dropFirst().first?.value }
        return 1 + values.reduce(0) { $0 + count($1) }
    }
    guard let root = Mirror(reflecting: index).children.first(where: { $0.label == "root" })?.value else {
        Issue.record("the index has no `root` to inspect")
        return 0
    }
    return count(root)
}

@Suite("SubscriptionIndex")
struct SubscriptionIndexTests {
    private func entry(_ session: Session, _ filter: String, qos: MQTTQoS = .atLeastOnce) -> SubscriptionEntry {
        SubscriptionEntry(session: session, options: MQTTSubscription(topicFilter: filter, qos: qos), subscriptionIdentifier: nil)
    }

    @Test("the static matcher agrees with the spec's examples", arguments: specMatchCases)
    func staticMatches(_ example: MatchCase) {
        #expect(SubscriptionIndex.matches(filter: example.filter, topic: example.topic) == example.matches)
    }

    @Test("the trie agrees with the spec's examples", arguments: specMatchCases)
    func trieMatches(_ example: MatchCase) {
        var index = SubscriptionIndex()
        index.insert(filter: example.filter, group: nil, entry: entry(makeSession("c"), example.filter))
        #expect(matchedClients(index, example.topic) == (example.matches ? ["c"] : []))
    }

    @Test("many filters at once: each topic reaches exactly the matching clients")
    func manyFilters() {
        let filters = ["a/b", "a/+", "a/#", "#", "+/b", "+/+", "$SYS/#", "a/b/c", "+/#", "a"]
        var index = SubscriptionIndex()
        for (n, filter) in filters.enumerated() {
            index.insert(filter: filter, group: nil, entry: entry(makeSession("c\(n)"), filter))
        }
        #expect(index.count == filters.count)
        for topic in ["a/b", "a", "a/b/c", "x/b", "$SYS/uptime", "$SYS", "b", "a/c/d", "/"] {
            let expected = filters.enumerated().filter { SubscriptionIndex.matches(filter: $0.element, topic: topic) }.map { "c\($0.offset)" }
            #expect(matchedClients(index, topic) == expected.sorted(), "topic \(topic)")
        }
    }

    @Test("a/# matches a itself, and # alone matches every non-$ topic")
    func hashMatchesParent() {
        var index = SubscriptionIndex()
        let session = makeSession("c")
        index.insert(filter: "a/#", group: nil, entry: entry(session, "a/#"))
        #expect(matchedClients(index, "a") == ["c"])
        #expect(matchedClients(index, "a/b/c/d") == ["c"])
        #expect(matchedClients(index, "ab") == [])
    }

    @Test("$ topics are not matched by a first-level wildcard, but by $SYS/#")
    func dollarTopics() {
        var index = SubscriptionIndex()
        index.insert(filter: "#", group: nil, entry: entry(makeSession("hash"), "#"))
        index.insert(filter: "+/x", group: nil, entry: entry(makeSession("plus"), "+/x"))
        index.insert(filter: "$SYS/#", group: nil, entry: entry(makeSession("sys"), "$SYS/#"))
        index.insert(filter: "$SYS/+", group: nil, entry: entry(makeSession("sysplus"), "$SYS/+"))
        #expect(matchedClients(index, "$SYS/x") == ["sys", "sysplus"])
        #expect(matchedClients(index, "$SYS") == ["sys"])
        #expect(matchedClients(index, "$other/x") == [])
        #expect(matchedClients(index, "a/x") == ["hash", "plus"])
    }

    @Test("overlapping subscriptions of one client are each reported (the broker merges them)")
    func overlapping() {
        var index = SubscriptionIndex()
        let session = makeSession("c")
        index.insert(filter: "a/#", group: nil, entry: entry(session, "a/#", qos: .atMostOnce))
        index.insert(filter: "a/+", group: nil, entry: entry(session, "a/+", qos: .exactlyOnce))
        index.insert(filter: "a/b", group: nil, entry: entry(session, "a/b", qos: .atLeastOnce))
        var qos: [MQTTQoS] = []
        index.forEachMatch(topic: "a/b") { qos.append($0.options.qos) } pickShared: { _ in nil }
        #expect(qos.sorted() == [.atMostOnce, .atLeastOnce, .exactlyOnce])
        #expect(index.count == 3)
    }

    @Test("inserting the same filter twice replaces the subscription")
    func replace() {
        var index = SubscriptionIndex()
        let session = makeSession("c")
        let isNew = index.insert(filter: "a/b", group: nil, entry: entry(session, "a/b", qos: .atMostOnce))
        #expect(isNew)
        let isNewAgain = index.insert(filter: "a/b", group: nil, entry: entry(session, "a/b", qos: .exactlyOnce))
        #expect(!isNewAgain)
        #expect(index.count == 1)
        var qos: [MQTTQoS] = []
        index.forEachMatch(topic: "a/b") { qos.append($0.options.qos) } pickShared: { _ in nil }
        #expect(qos == [.exactlyOnce])
    }

    @Test("removal deletes exactly one subscription and prunes empty nodes")
    func removalPrunes() {
        var index = SubscriptionIndex()
        let a = makeSession("a")
        let b = makeSession("b")
        #expect(nodeCount(index) == 1)
        index.insert(filter: "x/y/z", group: nil, entry: entry(a, "x/y/z"))
        index.insert(filter: "x/y/z", group: nil, entry: entry(b, "x/y/z"))
        index.insert(filter: "x", group: nil, entry: entry(a, "x"))
        index.insert(filter: "x/+/w", group: nil, entry: entry(a, "x/+/w"))
        // root, x, y, z, +, w
        #expect(nodeCount(index) == 6)

        let removedA = index.remove(filter: "x/y/z", group: nil, clientID: "a")
        #expect(removedA)
        let removedAAgain = index.remove(filter: "x/y/z", group: nil, clientID: "a")
        #expect(!removedAAgain)
        let removedMissing = index.remove(filter: "no/such", group: nil, clientID: "a")
        #expect(!removedMissing)
        #expect(matchedClients(index, "x/y/z") == ["b"])
        #expect(nodeCount(index) == 6)

        let removedB = index.remove(filter: "x/y/z", group: nil, clientID: "b")
        #expect(removedB)
        // y and z are gone; x stays because it has a subscriber and the x/+/w branch.
        #expect(nodeCount(index) == 4)
        #expect(matchedClients(index, "x") == ["a"])
        #expect(matchedClients(index, "x/q/w") == ["a"])

        let removedBranch = index.remove(filter: "x/+/w", group: nil, clientID: "a")
        #expect(removedBranch)
        let removedX = index.remove(filter: "x", group: nil, clientID: "a")
        #expect(removedX)
        #expect(index.count == 0)
        #expect(nodeCount(index) == 1)
        #expect(matchedClients(index, "x") == [])
    }

    @Test("a churn of unique topics leaves nothing behind")
    func churn() {
        var index = SubscriptionIndex()
        let session = makeSession("c")
        for n in 0..<500 {
            let filter = "devices/\(n)/telemetry/+"
            index.insert(filter: filter, group: nil, entry: entry(session, filter))
            let removed = index.remove(filter: filter, group: nil, clientID: "c")
            #expect(removed)
        }
        #expect(index.count == 0)
        #expect(nodeCount(index) == 1)
    }

    @Test("shared groups: one pick per matching group, members in subscription order")
    func sharedGroups() {
        var index = SubscriptionIndex()
        for name in ["m1", "m2", "m3"] {
            index.insert(filter: "jobs/+", group: "workers", entry: entry(makeSession(name), "jobs/+"))
        }
        index.insert(filter: "jobs/#", group: "audit", entry: entry(makeSession("auditor"), "jobs/#"))
        index.insert(filter: "jobs/+", group: nil, entry: entry(makeSession("plain"), "jobs/+"))
        #expect(index.count == 5)

        var groups: [[String]] = []
        var plain: [String] = []
        index.forEachMatch(topic: "jobs/1") { plain.append($0.session.clientID) } pickShared: { group in
            groups.append(group.order)
            return nil
        }
        #expect(plain == ["plain"])
        #expect(groups.sorted { $0.count < $1.count } == [["auditor"], ["m1", "m2", "m3"]])

        // Removing a member keeps the others in order; removing the last drops the group.
        let removedM2 = index.remove(filter: "jobs/+", group: "workers", clientID: "m2")
        #expect(removedM2)
        let removedM2Again = index.remove(filter: "jobs/+", group: "workers", clientID: "m2")
        #expect(!removedM2Again)
        let removedWrongGroup = index.remove(filter: "jobs/+", group: "nosuch", clientID: "m1")
        #expect(!removedWrongGroup)
        groups = []
        index.forEachMatch(topic: "jobs/1") { _ in } pickShared: { group in
            groups.append(group.order)
            return nil
        }
        #expect(groups.sorted { $0.count < $1.count } == [["auditor"], ["m1", "m3"]])
        let removedAuditor = index.remove(filter: "jobs/#", group: "audit", clientID: "auditor")
        #expect(removedAuditor)
        #expect(index.count == 3)
    }

    @Test("the cursor a picker moves is kept between publishes")
    func sharedCursorPersists() {
        var index = SubscriptionIndex()
        for name in ["m1", "m2", "m3"] {
            index.insert(filter: "q", group: "g", entry: entry(makeSession(name), "q"))
        }
        var picked: [String] = []
        for _ in 0..<6 {
            index.forEachMatch(topic: "q") { picked.append($0.session.clientID) } pickShared: { group in
                let chosen = group.members[group.order[group.cursor]]
                group.cursor = (group.cursor + 1) % group.order.count
                return chosen
            }
        }
        #expect(picked == ["m1", "m2", "m3", "m1", "m2", "m3"])
    }
}

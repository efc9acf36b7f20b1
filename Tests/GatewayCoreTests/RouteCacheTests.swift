@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

/// A publisher's connection keeps its last route (``RouteCache``); these check that a kept route never
/// outlives what it was worked out from.
@Suite("Kept routes")
struct RouteCacheTests {
    private func client(_ broker: Broker, _ id: String, username: String? = nil, subscribed filters: [(String, MQTTQoS)] = []) async -> TestClient {
        let client = TestClient(broker)
        await client.connect(id, username: username)
        if !filters.isEmpty { await client.subscribe(filters) }
        return client
    }

    private func reuses(_ client: TestClient) -> Int { client.connection.routeCache?.reuses ?? 0 }

    @Test("subscribers that join, leave or change QoS between two messages on one topic are routed as they are now")
    func subscriptionChanges() async {
        let broker = makeBroker()
        let publisher = await client(broker, "pub")
        let a = await client(broker, "a", subscribed: [("t/1", .atLeastOnce)])
        await publisher.publish("t/1", "m1")
        await publisher.publish("t/1", "m2")
        #expect(reuses(publisher) == 1)
        #expect(a.drainPublishes().map(\.text) == ["m1", "m2"])

        let b = await client(broker, "b", subscribed: [("t/+", .atMostOnce)])
        await publisher.publish("t/1", "m3", qos: .atLeastOnce, id: 1)
        #expect(a.drainPublishes().map { "\($0.text)@\($0.qos.rawValue)" } == ["m3@1"])
        #expect(b.drainPublishes().map { "\($0.text)@\($0.qos.rawValue)" } == ["m3@0"])

        _ = await a.send(.unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 2, topicFilters: ["t/1"])))
        await publisher.publish("t/1", "m4")
        #expect(a.drainPublishes().isEmpty)
        #expect(b.drainPublishes().map(\.text) == ["m4"])

        // The kept route holds the subscription's QoS: each message is still delivered at min(published, granted).
        await b.subscribe([("t/+", .atLeastOnce)], id: 3)
        await publisher.publish("t/1", "m5", qos: .atLeastOnce, id: 2)
        let reused = reuses(publisher)
        await publisher.publish("t/1", "m6", qos: .atMostOnce)
        await publisher.publish("t/1", "m7", qos: .atLeastOnce, id: 3)
        #expect(reuses(publisher) == reused + 2)
        #expect(b.drainPublishes().map { "\($0.text)@\($0.qos.rawValue)" } == ["m5@1", "m6@0", "m7@1"])
    }

    @Test("another topic, and a subscriber that reconnects with a new session, are routed afresh")
    func topicAndSessionChanges() async {
        let broker = makeBroker()
        let publisher = await client(broker, "pub")
        let first = await client(broker, "s", subscribed: [("x/#", .atMostOnce)])
        await publisher.publish("x/1", "one")
        await publisher.publish("x/2", "two")
        #expect(reuses(publisher) == 0)
        #expect(first.drainPublishes().map(\.text) == ["one", "two"])

        // A clean start replaces the session: the kept route's session is gone from the subscriptions.
        first.closed()
        let second = await client(broker, "s", subscribed: [("x/#", .atMostOnce)])
        await publisher.publish("x/2", "three")
        #expect(first.drainPublishes().isEmpty)
        #expect(second.drainPublishes().map(\.text) == ["three"])
    }

    @Test("shared subscriptions still take turns: a route through a group is never kept")
    func sharedGroupsTakeTurns() async {
        let broker = makeBroker()
        let publisher = await client(broker, "pub")
        let w1 = await client(broker, "w1", subscribed: [("$share/g/jobs", .atMostOnce)])
        let w2 = await client(broker, "w2", subscribed: [("$share/g/jobs", .atMostOnce)])
        for n in 1...4 { await publisher.publish("jobs", "j\(n)") }
        #expect(publisher.connection.routeCache?.reuses == 0)
        #expect(w1.drainPublishes().count == 2)
        #expect(w2.drainPublishes().count == 2)
    }

    @Test("an ACL reload applies to the next message on a kept route")
    func accessControlReload() async {
        let broker = makeBroker()
        let allowAll = ACLRule(permission: .allow, access: .readwrite, topic: "#")
        broker.replaceAccessControl(authenticator: nil, authorizer: ACLAuthorizer(rules: [allowAll]))
        let alice = await client(broker, "alice-1", username: "alice", subscribed: [("fleet/#", .atMostOnce)])
        let publisher = await client(broker, "pub")
        await publisher.publish("fleet/secret/1", "before")
        await publisher.publish("fleet/secret/1", "still before")
        #expect(reuses(publisher) == 1)
        #expect(alice.drainPublishes().map(\.text) == ["before", "still before"])

        // A deny rule that overlaps the filter without covering it: the subscription stays, each message is checked.
        let denySecret = ACLRule(permission: .deny, access: .read, topic: "fleet/secret/#", username: "alice")
        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: ACLAuthorizer(rules: [denySecret, allowAll])) == 0)
        await publisher.publish("fleet/secret/1", "after")
        await publisher.publish("fleet/secret/1", "after again")
        await publisher.publish("fleet/open", "open")
        #expect(alice.drainPublishes().map(\.text) == ["open"])

        // The subscription stays filtered, by another rule: the withheld topic is readable again.
        await publisher.publish("fleet/secret/1", "withheld")
        let denyOther = ACLRule(permission: .deny, access: .read, topic: "fleet/other/#", username: "alice")
        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: ACLAuthorizer(rules: [denyOther, allowAll])) == 0)
        await publisher.publish("fleet/secret/1", "readable")
        #expect(alice.drainPublishes().map(\.text) == ["readable"])
    }
}

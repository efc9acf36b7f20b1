@testable import GatewayCore
import GatewayStorage
import MQTTCodec
import Testing

extension SQLBrokerStateStoreTests {
    @Test("A session's username round-trips, changes with the next upsert, and may be NULL", arguments: StorageBackend.available)
    func usernameRoundTrip(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            let alice = StoredSessionRecord(clientID: "c1", expiryInterval: 60, disconnectedAt: 1_700_000_000_000, username: "alice")
            let anonymous = StoredSessionRecord(clientID: "c2", expiryInterval: nil, disconnectedAt: nil, username: nil)
            try await withStore(path) { store in
                try await store.apply([.upsertSession(alice), .upsertSession(anonymous)])
            }
            try await withStore(path) { store in
                #expect(try await store.load().sessions == [alice, anonymous])
                var bob = alice
                bob.username = "bob"
                var nobody = alice
                nobody.clientID = "c2"
                nobody.username = nil
                var named = anonymous
                named.username = "carol"
                try await store.apply([.upsertSession(bob)])
                #expect(try await store.load().sessions.map(\.username) == ["bob", nil])
                try await store.apply([.upsertSession(named)])
                #expect(try await store.load().sessions.map(\.username) == ["bob", "carol"])
                try await store.apply([.upsertSession(nobody)])
                #expect(try await store.load().sessions.map(\.username) == ["bob", nil])
                let versions = try await store.database.query("SELECT version FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0["version"].int }.contains(4))
            }
        }
    }

    @Test(
        "Restart: the username comes back with the session; the ACL applied after restore revokes what it no longer allows, for good",
        arguments: StorageBackend.available
    )
    func restoredSubscriptionsRechecked(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            try await withBroker(path) { broker, _ in
                let sub = Client(broker)
                _ = await sub.connect("dev", cleanStart: false, username: "alice")
                await sub.subscribe([
                    MQTTSubscription(topicFilter: "devices/alice/#", qos: .atLeastOnce),
                    MQTTSubscription(topicFilter: "fleet/#", qos: .atLeastOnce),
                ])
                sub.closed()
                let pub = Client(broker)
                _ = await pub.connect("pub")
                await pub.publish("devices/alice/cmd", "mine", qos: .atLeastOnce, id: 1)
                await pub.publish("fleet/all", "fleet", qos: .atLeastOnce, id: 2)
            }
            // The rules in effect at start-up: alice may read only her own tree.
            let rules = ACLAuthorizer(rules: [ACLRule(permission: .allow, access: .read, topic: "devices/%u/#")])
            try await withBroker(path) { broker, report in
                #expect(report.subscriptions == 2)
                #expect(report.queuedMessages == 2)
                #expect(broker.session(clientID: "dev")?.username == "alice")
                #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules) == 1)
                #expect(broker.subscriptionCount == 1)
                #expect(broker.queuedMessages == 1)
            }
            try await withBroker(path) { broker, report in
                #expect(report.subscriptions == 1)
                #expect(report.queuedMessages == 1)
                #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules) == 0)
                let sub = Client(broker)
                #expect(await sub.connect("dev", cleanStart: false, username: "alice")?.sessionPresent == true)
                #expect(sub.drainPublishes().map(\.text) == ["mine"])
                #expect(broker.session(clientID: "dev")?.subscriptions.keys.sorted() == ["devices/alice/#"])
                sub.closed()
            }
        }
    }
}

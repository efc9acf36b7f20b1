@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

@Suite("ACL rules")
struct ACLTests {
    func rule(_ permission: ACLRule.Permission, _ access: ACLRule.Access, _ topic: String, username: String? = nil, clientID: String? = nil)
        -> ACLRule
    {
        ACLRule(permission: permission, access: access, topic: topic, username: username, clientID: clientID)
    }

    @Test("no rules: everything allowed")
    func emptyAllowsAll() {
        let acl = ACLAuthorizer(rules: [])
        #expect(acl.isAllowed(.publish, topic: "a/b", clientID: "c", username: nil))
        #expect(acl.isAllowed(.subscribe, topic: "#", clientID: "c", username: nil))
    }

    @Test("any rule: default deny for what no rule matches")
    func defaultDeny() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .readwrite, "public/#")])
        #expect(acl.isAllowed(.publish, topic: "public/x", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "private/x", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "private/#", clientID: "c", username: nil))
    }

    @Test("%u is the username; a client without one never matches a %u rule")
    func usernameSubstitution() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .readwrite, "devices/%u/#")])
        #expect(acl.isAllowed(.publish, topic: "devices/alice/temp", clientID: "c1", username: "alice"))
        #expect(acl.isAllowed(.publish, topic: "devices/alice", clientID: "c1", username: "alice"))
        #expect(!acl.isAllowed(.publish, topic: "devices/bob/temp", clientID: "c1", username: "alice"))
        #expect(!acl.isAllowed(.publish, topic: "devices/alice/temp", clientID: "c1", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "devices/%u/temp", clientID: "c1", username: nil))
    }

    @Test("a username or client id with /, + or # never widens a pattern")
    func hostileSubstitution() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .readwrite, "devices/%u/#"), rule(.allow, .write, "clients/%c")])
        #expect(!acl.isAllowed(.subscribe, topic: "devices/#", clientID: "c", username: "#"))
        #expect(!acl.isAllowed(.subscribe, topic: "devices/+/x", clientID: "c", username: "+"))
        #expect(!acl.isAllowed(.publish, topic: "devices/alice/x", clientID: "c", username: "alice/x"))
        #expect(!acl.isAllowed(.publish, topic: "devices/a/b", clientID: "a/b", username: ""))
        #expect(!acl.isAllowed(.publish, topic: "clients/a/b", clientID: "a/b", username: nil))
        #expect(acl.isAllowed(.publish, topic: "clients/sensor-7", clientID: "sensor-7", username: nil))
    }

    @Test("%c is the client id, also inside a level")
    func clientIDSubstitution() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .write, "out/id-%c/%u")])
        #expect(acl.isAllowed(.publish, topic: "out/id-s1/alice", clientID: "s1", username: "alice"))
        #expect(!acl.isAllowed(.publish, topic: "out/id-s2/alice", clientID: "s1", username: "alice"))
    }

    @Test("read is subscribe, write is publish, readwrite both")
    func accessKinds() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .read, "r/#"), rule(.allow, .write, "w/#"), rule(.allow, .readwrite, "rw/#")])
        #expect(acl.isAllowed(.subscribe, topic: "r/x", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "r/x", clientID: "c", username: nil))
        #expect(acl.isAllowed(.publish, topic: "w/x", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "w/x", clientID: "c", username: nil))
        #expect(acl.isAllowed(.publish, topic: "rw/x", clientID: "c", username: nil))
        #expect(acl.isAllowed(.subscribe, topic: "rw/x", clientID: "c", username: nil))
    }

    @Test("first matching rule wins")
    func firstMatchWins() {
        let denyFirst = ACLAuthorizer(rules: [rule(.deny, .write, "a/secret"), rule(.allow, .write, "a/#")])
        #expect(!denyFirst.isAllowed(.publish, topic: "a/secret", clientID: "c", username: nil))
        #expect(denyFirst.isAllowed(.publish, topic: "a/open", clientID: "c", username: nil))
        let allowFirst = ACLAuthorizer(rules: [rule(.allow, .write, "a/#"), rule(.deny, .write, "a/secret")])
        #expect(allowFirst.isAllowed(.publish, topic: "a/secret", clientID: "c", username: nil))
    }

    @Test("username and clientid restrict a rule to one client")
    func clientRestrictions() {
        let acl = ACLAuthorizer(rules: [
            rule(.allow, .read, "$SYS/#", username: "admin"),
            rule(.allow, .write, "cmd/#", clientID: "console"),
        ])
        #expect(acl.isAllowed(.subscribe, topic: "$SYS/#", clientID: "x", username: "admin"))
        #expect(!acl.isAllowed(.subscribe, topic: "$SYS/#", clientID: "x", username: "alice"))
        #expect(!acl.isAllowed(.subscribe, topic: "$SYS/#", clientID: "x", username: nil))
        #expect(acl.isAllowed(.publish, topic: "cmd/reboot", clientID: "console", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "cmd/reboot", clientID: "other", username: nil))
    }

    @Test("subscribe: an allow rule must cover the whole filter")
    func subscribeCoverage() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .read, "devices/%u/#"), rule(.allow, .read, "fleet/+/status")])
        #expect(acl.isAllowed(.subscribe, topic: "devices/alice/+", clientID: "c", username: "alice"))
        #expect(acl.isAllowed(.subscribe, topic: "devices/alice/#", clientID: "c", username: "alice"))
        #expect(acl.isAllowed(.subscribe, topic: "devices/alice", clientID: "c", username: "alice"))
        #expect(!acl.isAllowed(.subscribe, topic: "devices/#", clientID: "c", username: "alice"))
        #expect(!acl.isAllowed(.subscribe, topic: "devices/+/temp", clientID: "c", username: "alice"))
        #expect(!acl.isAllowed(.subscribe, topic: "#", clientID: "c", username: "alice"))
        #expect(acl.isAllowed(.subscribe, topic: "fleet/+/status", clientID: "c", username: nil))
        #expect(acl.isAllowed(.subscribe, topic: "fleet/7/status", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "fleet/#", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "fleet/+/status/x", clientID: "c", username: nil))
    }

    @Test("subscribe: a deny rule refuses every filter that overlaps it")
    func subscribeDenyOverlap() {
        let acl = ACLAuthorizer(rules: [rule(.deny, .read, "devices/secret"), rule(.allow, .read, "devices/#")])
        #expect(!acl.isAllowed(.subscribe, topic: "devices/#", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "devices/+", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "devices/secret", clientID: "c", username: nil))
        #expect(acl.isAllowed(.subscribe, topic: "devices/+/temp", clientID: "c", username: nil))
        #expect(acl.isAllowed(.subscribe, topic: "devices/open", clientID: "c", username: nil))
    }

    @Test("subscription grants: a deny rule that overlaps a wildcard filters it instead of refusing it")
    func subscriptionGrants() {
        let acl = ACLAuthorizer(rules: [rule(.deny, .read, "test/nosubscribe"), rule(.allow, .readwrite, "#")])
        func grant(_ filter: String, username: String? = nil) -> SubscriptionGrant {
            acl.subscriptionGrant(filter: filter, clientID: "c", username: username)
        }
        #expect(grant("#") == .filtered)
        #expect(grant("+/+") == .filtered)
        #expect(grant("test/#") == .filtered)
        #expect(grant("test/nosubscribe") == .denied)
        #expect(grant("a/b") == .allowed)
        #expect(grant("a/#") == .allowed)
        // `#` does not cover `$` topics, and nothing else allows them.
        #expect(grant("$SYS/#") == .denied)
        // Per message: the concrete topic decides.
        #expect(!acl.isAllowed(.subscribe, topic: "test/nosubscribe", clientID: "c", username: nil))
        #expect(acl.isAllowed(.subscribe, topic: "test/other", clientID: "c", username: nil))
    }

    @Test("subscription grants follow first-match order, substitutions and the default deny")
    func subscriptionGrantOrder() {
        let allowFirst = ACLAuthorizer(rules: [rule(.allow, .read, "a/#"), rule(.deny, .read, "a/b")])
        #expect(allowFirst.subscriptionGrant(filter: "a/#", clientID: "c", username: nil) == .allowed)
        let denyAll = ACLAuthorizer(rules: [rule(.deny, .read, "#"), rule(.allow, .read, "a/#")])
        #expect(denyAll.subscriptionGrant(filter: "a/#", clientID: "c", username: nil) == .denied)
        let twoDenies = ACLAuthorizer(rules: [rule(.deny, .read, "a/b"), rule(.deny, .read, "a/c"), rule(.allow, .read, "a/+")])
        #expect(twoDenies.subscriptionGrant(filter: "a/+", clientID: "c", username: nil) == .filtered)
        #expect(twoDenies.subscriptionGrant(filter: "a/c", clientID: "c", username: nil) == .denied)
        // Only part of the filter is allowed, the rest falls to the default deny: filtered.
        let own = ACLAuthorizer(rules: [rule(.allow, .read, "devices/%u/#")])
        #expect(own.subscriptionGrant(filter: "devices/#", clientID: "c", username: "alice") == .filtered)
        #expect(own.subscriptionGrant(filter: "devices/alice/#", clientID: "c", username: "alice") == .allowed)
        #expect(own.subscriptionGrant(filter: "other/#", clientID: "c", username: "alice") == .denied)
        #expect(own.subscriptionGrant(filter: "devices/#", clientID: "c", username: nil) == .denied)
        #expect(ACLAuthorizer(rules: []).subscriptionGrant(filter: "#", clientID: "c", username: nil) == .allowed)
        #expect(AllowAllAuthorizer().subscriptionGrant(filter: "#", clientID: "c", username: nil) == .allowed)
    }

    @Test("topic names are checked only against rules that can match them, in first-match order")
    func firstLevelIndexKeepsOrder() {
        let acl = ACLAuthorizer(rules: [
            rule(.allow, .write, "a/x"), rule(.deny, .write, "+/x"), rule(.allow, .write, "a/#"), rule(.allow, .write, "%c/out"),
        ])
        #expect(acl.isAllowed(.publish, topic: "a/x", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "b/x", clientID: "c", username: nil))
        #expect(acl.isAllowed(.publish, topic: "a/y", clientID: "c", username: nil))
        #expect(acl.isAllowed(.publish, topic: "c/out", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "d/out", clientID: "c", username: nil))
        let denyAll = ACLAuthorizer(rules: [rule(.deny, .write, "#"), rule(.allow, .write, "a/b")])
        #expect(!denyAll.isAllowed(.publish, topic: "a/b", clientID: "c", username: nil))
    }

    @Test("wildcards do not cover $ topics")
    func dollarTopics() {
        let acl = ACLAuthorizer(rules: [rule(.allow, .readwrite, "#")])
        #expect(acl.isAllowed(.subscribe, topic: "a/#", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.subscribe, topic: "$SYS/#", clientID: "c", username: nil))
        #expect(!acl.isAllowed(.publish, topic: "$SYS/x", clientID: "c", username: nil))
        let plus = ACLAuthorizer(rules: [rule(.allow, .read, "+/#")])
        #expect(!plus.isAllowed(.subscribe, topic: "$SYS/broker/uptime", clientID: "c", username: nil))
    }

    @Test("topic coverage and overlap on level lists")
    func levelAlgebra() {
        func covers(_ p: String, _ f: String) -> Bool { TopicLevels.covers(TopicLevels(p), TopicLevels(f)) }
        func overlap(_ a: String, _ b: String) -> Bool { TopicLevels.overlap(TopicLevels(a), TopicLevels(b)) }
        #expect(covers("#", "a/b/c"))
        #expect(covers("a/#", "a"))
        #expect(!covers("a", "a/#"))
        #expect(covers("a/+", "a/+"))
        #expect(!covers("a/+", "a/#"))
        #expect(covers("+/+", "x/y"))
        #expect(!covers("+/+", "x"))
        #expect(overlap("a/+", "+/b"))
        #expect(overlap("a/#", "a"))
        #expect(overlap("a", "a/#"))
        #expect(!overlap("a/b", "a/c"))
        #expect(!overlap("a/b", "a/b/c"))
        #expect(!overlap("#", "$SYS/x"))
        #expect(overlap("$SYS/#", "$SYS/x"))
    }
}

@Suite("ACL in the broker")
struct ACLBrokerTests {
    static let rules = [
        ACLRule(permission: .allow, access: .readwrite, topic: "devices/%u/#"),
        ACLRule(permission: .allow, access: .read, topic: "broadcast/#"),
    ]

    func broker() -> Broker {
        Broker(configuration: BrokerConfiguration(), authorizer: ACLAuthorizer(rules: Self.rules), logger: silentLogger)
    }

    func connect(_ client: TestClient, _ id: String, username: String?) async {
        let actions = await client.connect(id, username: username)
        guard case .connack(let connack)? = sentPackets(actions).first, connack.reasonCode == .success else {
            Issue.record("CONNECT of \(id) refused: \(describe(actions))")
            return
        }
    }

    @Test("3.1.1: a denied PUBLISH is acknowledged (PUBACK 0) but not delivered; denied SUBSCRIBE gets 0x80")
    func v311() async {
        let broker = broker()
        let subscriber = TestClient(broker)
        await connect(subscriber, "sub", username: "alice")
        #expect(await subscriber.subscribe([("devices/alice/#", .atLeastOnce)]) == [MQTTReasonCode(1)])
        // No message under devices/bob/ is readable for alice: refused.
        #expect(await subscriber.subscribe([("devices/bob/#", .atLeastOnce)], id: 2) == [.unspecifiedError])
        #expect(await subscriber.subscribe([("$share/g/devices/bob/+", .atLeastOnce)], id: 3) == [.unspecifiedError])
        #expect(await subscriber.subscribe([("$share/g/devices/alice/+", .atLeastOnce)], id: 4) == [MQTTReasonCode(1)])

        let publisher = TestClient(broker)
        await connect(publisher, "pub", username: "mallory")
        let denied = sentPackets(await publisher.publish("devices/alice/cmd", "x", qos: .atLeastOnce, id: 7))
        guard case .puback(let ack)? = denied.first else {
            Issue.record("no PUBACK: \(denied)")
            return
        }
        #expect(ack.packetIdentifier == 7 && ack.reasonCode == .success)
        #expect(subscriber.drainPublishes().isEmpty)

        let owner = TestClient(broker)
        await connect(owner, "own", username: "alice")
        _ = await owner.publish("devices/alice/cmd", "y", qos: .atLeastOnce, id: 8)
        #expect(subscriber.drainPublishes().map(\.topic) == ["devices/alice/cmd"])
    }

    @Test("5.0: a denied PUBLISH gets PUBACK / PUBREC 0x87; a denied SUBSCRIBE 0x87")
    func v5() async {
        let broker = broker()
        let client = TestClient(broker, version: .v5)
        await connect(client, "c5", username: "bob")
        #expect(await client.subscribe([("devices/alice/+", .atMostOnce)]) == [.notAuthorized])
        #expect(await client.subscribe([("broadcast/+", .atMostOnce)], id: 2) == [.success])
        let puback = sentPackets(await client.publish("broadcast/x", "no", qos: .atLeastOnce, id: 3))
        guard case .puback(let ack)? = puback.first else {
            Issue.record("no PUBACK: \(puback)")
            return
        }
        #expect(ack.reasonCode == .notAuthorized)
        let pubrec = sentPackets(await client.publish("devices/alice/x", "no", qos: .exactlyOnce, id: 4))
        guard case .pubrec(let rec)? = pubrec.first else {
            Issue.record("no PUBREC: \(pubrec)")
            return
        }
        #expect(rec.reasonCode == .notAuthorized)
    }

    @Test("replaceAccessControl: connected clients keep their session, the next checks use the new rules")
    func liveReplacement() async {
        let broker = broker()
        let client = TestClient(broker, version: .v5)
        await connect(client, "live", username: "carol")
        #expect(await client.subscribe([("other/#", .atMostOnce)]) == [.notAuthorized])
        broker.replaceAccessControl(authenticator: nil, authorizer: ACLAuthorizer(rules: [ACLRule(permission: .allow, access: .read, topic: "other/#")]))
        #expect(await client.subscribe([("other/#", .atMostOnce)], id: 2) == [.success])
        broker.replaceAccessControl(authenticator: nil, authorizer: AllowAllAuthorizer())
        let puback = sentPackets(await client.publish("anything", "ok", qos: .atLeastOnce, id: 3))
        guard case .puback(let ack)? = puback.first else {
            Issue.record("no PUBACK: \(puback)")
            return
        }
        #expect(ack.reasonCode == .noMatchingSubscribers)
    }

    @Test("without anonymous access, a verified certificate identity equal to the username is accepted")
    func certificateIdentity() async {
        let broker = makeBroker { $0.allowAnonymous = false }
        let device = TestClient(broker)
        device.connection.certificateIdentity = "device-42"
        guard case .connack(let accepted)? = sentPackets(await device.connect("d1", username: "device-42")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(accepted.reasonCode == .success)
        let impostor = TestClient(broker)
        impostor.connection.certificateIdentity = "device-42"
        guard case .connack(let refused)? = sentPackets(await impostor.connect("d2", username: "other")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(refused.reasonCode == MQTTReasonCode(4))
    }

    struct Unavailable: Authenticator {
        func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationResult { .unavailable }
    }

    @Test("an authenticator that cannot decide: CONNACK 3 (3.1.1) / 0x88 (5.0)")
    func unavailable() async {
        let broker = Broker(configuration: BrokerConfiguration(), authenticator: Unavailable(), logger: silentLogger)
        let old = TestClient(broker)
        guard case .connack(let a)? = sentPackets(await old.connect("u1", username: "x")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(a.reasonCode == MQTTReasonCode(3))
        let new = TestClient(broker, version: .v5)
        guard case .connack(let b)? = sentPackets(await new.connect("u2", username: "x")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(b.reasonCode == .serverUnavailable)
    }
}

@Suite("ACL read checks per message")
struct ACLReadCheckTests {
    static let rules = [
        ACLRule(permission: .deny, access: .read, topic: "test/nosubscribe"),
        ACLRule(permission: .allow, access: .readwrite, topic: "#"),
    ]

    @Test("a # subscriber gets everything but the denied topic, live and retained; the denied filter itself is refused")
    func hashSubscriberIsFiltered() async {
        let broker = Broker(configuration: BrokerConfiguration(), authorizer: ACLAuthorizer(rules: Self.rules), logger: silentLogger)
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("test/nosubscribe", "retained secret", qos: .atLeastOnce, retain: true, id: 1)
        await publisher.publish("test/open", "retained open", qos: .atLeastOnce, retain: true, id: 2)

        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        #expect(await subscriber.subscribe([("#", .atLeastOnce)]) == [MQTTReasonCode(1)])
        #expect(await subscriber.subscribe([("test/nosubscribe", .atLeastOnce)], id: 2) == [.unspecifiedError])
        #expect(subscriber.drainPublishes().map(\.text) == ["retained open"])

        await publisher.publish("test/nosubscribe", "live secret", id: 3)
        await publisher.publish("test/other", "live open", id: 4)
        #expect(subscriber.drainPublishes().map(\.text) == ["live open"])
    }

    @Test("subscriptions no deny rule overlaps are not checked per message")
    func unaffectedSubscriptionsAreNotFlagged() async {
        let broker = Broker(configuration: BrokerConfiguration(), authorizer: ACLAuthorizer(rules: Self.rules), logger: silentLogger)
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("a/+", .atMostOnce)])
        await subscriber.subscribe([("#", .atMostOnce)], id: 2)
        var flags: [String: Bool] = [:]
        broker.withIndex { index in
            index.forEachMatch(topic: "a/x", { flags[$0.options.topicFilter] = $0.filtered }, pickShared: { _ in nil })
        }
        #expect(flags == ["a/+": false, "#": true])
    }

    @Test("a shared group hands a message only to members that may read it")
    func sharedGroupSkipsUnreadableMembers() async {
        let rules = [
            ACLRule(permission: .deny, access: .read, topic: "s/secret", username: "b"),
            ACLRule(permission: .allow, access: .readwrite, topic: "#"),
        ]
        let broker = Broker(configuration: BrokerConfiguration(), authorizer: ACLAuthorizer(rules: rules), logger: silentLogger)
        let a = TestClient(broker, version: .v5)
        #expect(sentPackets(await a.connect("ma", username: "a")).count == 1)
        #expect(await a.subscribe([("$share/g/s/#", .atMostOnce)]) == [.success])
        let b = TestClient(broker, version: .v5)
        #expect(sentPackets(await b.connect("mb", username: "b")).count == 1)
        #expect(await b.subscribe([("$share/g/s/#", .atMostOnce)]) == [.success])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        for n in 0..<4 { await publisher.publish("s/secret", "secret \(n)") }
        #expect(a.drainPublishes().count == 4)
        #expect(b.drainPublishes().isEmpty)
        // Open topics still alternate between both members.
        for n in 0..<4 { await publisher.publish("s/open", "open \(n)") }
        #expect(a.drainPublishes().count == 2)
        #expect(b.drainPublishes().count == 2)
    }

    @Test("a reload that adds an overlapping deny rule filters existing wildcard subscriptions instead of revoking them")
    func reloadFiltersExistingSubscriptions() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("#", .atMostOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: ACLAuthorizer(rules: Self.rules)) == 0)
        await publisher.publish("test/nosubscribe", "secret")
        await publisher.publish("test/other", "open")
        #expect(subscriber.drainPublishes().map(\.text) == ["open"])
        // And back: without the deny rule the subscription is delivered everything, unchecked.
        broker.replaceAccessControl(authenticator: nil, authorizer: AllowAllAuthorizer())
        await publisher.publish("test/nosubscribe", "now readable")
        #expect(subscriber.drainPublishes().map(\.text) == ["now readable"])
    }
}

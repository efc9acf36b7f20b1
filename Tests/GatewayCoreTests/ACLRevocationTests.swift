@testable import GatewayCore
import MQTTCodec
import NIOCore
import Synchronization
import Testing

/// Replacing the authorizer (SIGHUP, and start-up after restore) re-checks every existing subscription:
/// what the new rules no longer allow is removed as by UNSUBSCRIBE, and its queued messages are not
/// delivered.
@Suite("ACL revocation of existing subscriptions")
struct ACLRevocationTests {
    private func rules(_ rules: ACLRule...) -> ACLAuthorizer { ACLAuthorizer(rules: rules) }
    private func allow(_ access: ACLRule.Access, _ topic: String, username: String? = nil) -> ACLRule {
        ACLRule(permission: .allow, access: access, topic: topic, username: username)
    }
    private func deny(_ access: ACLRule.Access, _ topic: String, username: String? = nil) -> ACLRule {
        ACLRule(permission: .deny, access: access, topic: topic, username: username)
    }

    /// A client connected to `broker` as `clientID` with `username` (checked accepted), subscribed to
    /// `filters` (when any; checked granted as asked).
    private func client(
        _ broker: Broker,
        _ clientID: String,
        username: String?,
        cleanStart: Bool = true,
        subscribed filters: [(String, MQTTQoS)] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) async -> TestClient {
        let client = TestClient(broker)
        let actions = await client.connect(clientID, cleanStart: cleanStart, username: username)
        guard case .connack(let connack)? = sentPackets(actions).first, connack.reasonCode == .success else {
            Issue.record("CONNECT of \(clientID) not accepted: \(describe(actions))", sourceLocation: sourceLocation)
            return client
        }
        if !filters.isEmpty {
            let granted = await client.subscribe(filters, sourceLocation: sourceLocation)
            #expect(granted == filters.map { MQTTReasonCode($0.1.rawValue) }, sourceLocation: sourceLocation)
        }
        return client
    }

    @Test("connected: the revoked subscriber stops receiving, a still-permitted one keeps receiving")
    func connectedSubscriber() async {
        let broker = makeBroker()
        broker.replaceAccessControl(authenticator: nil, authorizer: rules(allow(.readwrite, "#")))
        let alice = await client(broker, "alice-1", username: "alice", subscribed: [("fleet/#", .atMostOnce), ("devices/alice/#", .atMostOnce)])
        let bob = await client(broker, "bob-1", username: "bob", subscribed: [("fleet/#", .atMostOnce)])
        #expect(broker.subscriptionCount == 3)

        let revoked = broker.replaceAccessControl(
            authenticator: nil,
            authorizer: rules(deny(.read, "fleet/#", username: "alice"), allow(.readwrite, "#"))
        )
        #expect(revoked == 1)
        #expect(broker.subscriptionCount == 2)
        #expect(Set(broker.session(clientID: "alice-1")!.subscriptions.keys) == ["devices/alice/#"])

        let publisher = await client(broker, "pub", username: nil)
        await publisher.publish("fleet/all", "to the fleet")
        await publisher.publish("devices/alice/cmd", "for alice")
        #expect(alice.drainPublishes().map(\.text) == ["for alice"])
        #expect(bob.drainPublishes().map(\.text) == ["to the fleet"])
        // Re-subscribing is refused by the rules now in effect.
        #expect(await alice.subscribe([("fleet/#", .atMostOnce)], id: 2) == [.unspecifiedError])
        // Nothing else to revoke: a second reload with the same rules is a no-op.
        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules(deny(.read, "fleet/#", username: "alice"), allow(.readwrite, "#"))) == 0)
    }

    @Test("queued messages of a revoked filter are dropped (QoS 0 and 1); in-flight ones complete; others stay")
    func queuedMessages() async {
        let broker = makeBroker()
        let alice = await client(broker, "alice-1", username: "alice", subscribed: [("fleet/#", .atLeastOnce), ("devices/alice/#", .atLeastOnce)])
        let publisher = await client(broker, "pub", username: nil)
        await publisher.publish("fleet/1", "in flight", qos: .atLeastOnce, id: 1)
        let inflight = alice.poll()?.publish
        #expect(inflight?.text == "in flight")
        await publisher.publish("fleet/2", "queued qos1", qos: .atLeastOnce, id: 2)
        await publisher.publish("fleet/3", "queued qos0")
        await publisher.publish("devices/alice/x", "still mine", qos: .atLeastOnce, id: 3)
        #expect(broker.queuedMessages == 4)

        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules(allow(.read, "devices/%u/#"), allow(.write, "#"))) == 1)
        #expect(broker.queuedMessages == 2)  // the in-flight one and "still mine"
        let rest = alice.drainPublishes()
        #expect(rest.map(\.text) == ["still mine"])
        await alice.send(.puback(MQTTAckPacket(packetIdentifier: inflight!.packetIdentifier!)))
        await alice.send(.puback(MQTTAckPacket(packetIdentifier: rest[0].packetIdentifier!)))
        #expect(broker.queuedMessages == 0)
        #expect(broker.queuedBytes == 0)
    }

    @Test("offline persistent session: checked with the username it connected with; its queue loses the revoked messages")
    func offlineSession() async {
        let broker = makeBroker()
        let device = await client(
            broker, "dev-7", username: "alice", cleanStart: false, subscribed: [("devices/alice/#", .atLeastOnce), ("fleet/#", .atLeastOnce)]
        )
        device.closed()
        let publisher = await client(broker, "pub", username: nil)
        await publisher.publish("fleet/x", "fleet", qos: .atLeastOnce, id: 1)
        await publisher.publish("devices/alice/y", "mine", qos: .atLeastOnce, id: 2)
        let session = broker.session(clientID: "dev-7")
        #expect(session?.isConnected == false)
        #expect(session?.username == "alice")
        #expect(session?.queuedCount == 2)

        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules(allow(.read, "devices/%u/#"), allow(.write, "#"))) == 1)
        #expect(session?.queuedCount == 1)
        let back = await client(broker, "dev-7", username: "alice", cleanStart: false)
        #expect(back.drainPublishes().map(\.text) == ["mine"])
        #expect(Set(broker.session(clientID: "dev-7")!.subscriptions.keys) == ["devices/alice/#"])
    }

    @Test("a persistent session resumed under another username keeps only what that username may read")
    func resumedByAnotherUser() async {
        let broker = makeBroker()
        broker.replaceAccessControl(authenticator: nil, authorizer: rules(allow(.readwrite, "devices/%u/#")))
        let alice = await client(broker, "shared-id", username: "alice", cleanStart: false, subscribed: [("devices/alice/#", .atLeastOnce)])
        alice.closed()
        let alicePublisher = await client(broker, "alice-pub", username: "alice")
        await alicePublisher.publish("devices/alice/secret", "for alice only", qos: .atLeastOnce, id: 1)
        #expect(broker.session(clientID: "shared-id")?.queuedCount == 1)

        let bob = await client(broker, "shared-id", username: "bob", cleanStart: false)
        #expect(bob.drainPublishes().isEmpty)
        #expect(broker.session(clientID: "shared-id")?.username == "bob")
        #expect(broker.session(clientID: "shared-id")?.subscriptions.isEmpty == true)
        #expect(broker.subscriptionCount == 0)
        #expect(broker.queuedMessages == 0)
    }

    @Test("%u and %c rules: a session's own client id and username decide; an anonymous session loses %u subscriptions")
    func substitutions() async {
        let broker = makeBroker()
        _ = await client(
            broker, "sensor-1", username: "alice",
            subscribed: [("clients/sensor-1/in/#", .atMostOnce), ("clients/sensor-1/out", .atMostOnce), ("users/alice/#", .atMostOnce)]
        )
        _ = await client(broker, "sensor-2", username: nil, subscribed: [("clients/sensor-2/in/#", .atMostOnce), ("users/alice/#", .atMostOnce)])
        #expect(broker.subscriptionCount == 5)

        let revoked = broker.replaceAccessControl(
            authenticator: nil,
            authorizer: rules(allow(.read, "clients/%c/in/#"), allow(.read, "users/%u/#"))
        )
        // sensor-1 loses clients/sensor-1/out; sensor-2 (no username) loses users/alice/#.
        #expect(revoked == 2)
        #expect(Set(broker.session(clientID: "sensor-1")!.subscriptions.keys) == ["clients/sensor-1/in/#", "users/alice/#"])
        #expect(Set(broker.session(clientID: "sensor-2")!.subscriptions.keys) == ["clients/sensor-2/in/#"])
    }

    @Test("shared subscription: the revoked member leaves the group; its queued share goes to the remaining member")
    func sharedSubscription() async {
        let broker = makeBroker()
        let m1 = await client(broker, "worker-1", username: "alice", subscribed: [("$share/g/jobs/+", .atLeastOnce)])
        let m2 = await client(broker, "worker-2", username: "bob", subscribed: [("$share/g/jobs/+", .atLeastOnce)])
        let publisher = await client(broker, "pub", username: nil)
        await publisher.publish("jobs/1", "j1", qos: .atLeastOnce, id: 1)
        await publisher.publish("jobs/2", "j2", qos: .atLeastOnce, id: 2)
        let queuedFor1 = broker.session(clientID: "worker-1")!.queuedCount
        let queuedFor2 = broker.session(clientID: "worker-2")!.queuedCount
        #expect(queuedFor1 == 1 && queuedFor2 == 1)

        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules(deny(.read, "jobs/#", username: "alice"), allow(.readwrite, "#"))) == 1)
        #expect(broker.session(clientID: "worker-1")!.subscriptions.isEmpty)
        #expect(broker.session(clientID: "worker-1")!.queuedCount == 0)
        await publisher.publish("jobs/3", "j3", qos: .atLeastOnce, id: 3)
        #expect(m1.drainPublishes().isEmpty)
        #expect(Set(m2.drainPublishes().map(\.text)) == ["j1", "j2", "j3"])
    }

    @Test("internal (bridge) sessions are not subject to client ACLs: neither at subscribe nor on a reload")
    func bridgeUntouched() async {
        let broker = makeBroker()
        broker.replaceAccessControl(authenticator: nil, authorizer: rules(allow(.read, "nothing/#")))
        let bridge = broker.attachInternalClient(
            clientID: "$bridge/up",
            subscriptions: [InternalClient.Subscription(filter: "devices/#", qos: .atLeastOnce)],
            limits: .init()
        )
        #expect(broker.subscriptionCount == 1)
        #expect(broker.replaceAccessControl(authenticator: nil, authorizer: rules(deny(.readwrite, "#"))) == 0)
        #expect(broker.subscriptionCount == 1)
        bridge.connect(handle: RecordingHandle())
        broker.replaceAccessControl(authenticator: nil, authorizer: AllowAllAuthorizer())
        let device = await client(broker, "device", username: nil)
        await device.publish("devices/x", "up", qos: .atLeastOnce, id: 1)
        #expect(bridge.nextDelivery().map { String(buffer: $0.payload) } == "up")
    }

    @Test("a SUBSCRIBE decided by an authorizer that a reload replaced meanwhile is checked again against the new one")
    func subscribeRacingReload() async {
        let broker = makeBroker()
        let strict = rules(allow(.read, "open/#"), allow(.write, "#"))
        // Allows everything, but replaces itself with `strict` during its first subscribe check: the
        // reload's own sweep runs before the subscription exists.
        let racing = SwappingAuthorizer { broker.replaceAccessControl(authenticator: nil, authorizer: strict) }
        broker.replaceAccessControl(authenticator: nil, authorizer: racing)
        let subscriber = await client(broker, "c", username: nil)
        let codes = await subscriber.subscribe([("secret/#", .atMostOnce)])
        #expect(codes == [.grantedQoS0])
        #expect(racing.swapped)
        #expect(broker.subscriptionCount == 0)
        #expect(broker.session(clientID: "c")!.subscriptions.isEmpty)
    }
}

/// Allows everything; on its first `subscribe` check it runs `swap` (which replaces the broker's
/// authorizer), as a SIGHUP landing in the middle of a SUBSCRIBE would.
private final class SwappingAuthorizer: Authorizer {
    private let state = Mutex(false)
    private let swap: @Sendable () -> Void

    init(swap: @escaping @Sendable () -> Void) {
        self.swap = swap
    }

    var swapped: Bool { state.withLock { $0 } }

    func isAllowed(_ access: TopicAccess, topic: String, clientID: String, username: String?) -> Bool {
        guard access == .subscribe else { return true }
        let first = state.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { swap() }
        return true
    }
}

@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

@Suite("Sessions: takeover and resumption")
struct SessionLifecycleTests {
    @Test("a second connection with the same client id takes over and closes the first (MQTT-3.1.4-2)", arguments: [false, true])
    func takeover(secondCleanStart: Bool) async {
        let broker = makeBroker()
        let first = TestClient(broker)
        await first.connectAccepted("dev", cleanStart: false)
        await first.subscribe([("t", .atMostOnce)])

        let second = TestClient(broker)
        let connack = await second.connectAccepted("dev", cleanStart: secondCleanStart)
        #expect(first.handle.closeReasons == [.sessionTakenOver])
        #expect(second.handle.closeReasons == [])
        #expect(connack?.sessionPresent == !secondCleanStart)
        // The first connection's delivery task ends.
        #expect(first.poll() == nil)

        // The transport then reports the first connection closed; that must not disturb the second.
        first.closed(.server(.sessionTakenOver))
        #expect(broker.session(clientID: "dev")?.isConnected == true)
        #expect(broker.sessionCount == 1)

        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("t", "x")
        // Clean start discards the old subscription; resuming keeps it.
        #expect(second.drainPublishes().map(\.text) == (secondCleanStart ? [] : ["x"]))
        #expect(second.handle.closeReasons == [])
    }

    @Test("MQTT 5 takeover closes the old connection, which is told 0x8E")
    func takeoverV5() async {
        let broker = makeBroker()
        let first = TestClient(broker, version: .v5)
        await first.connectAccepted("dev")
        let second = TestClient(broker, version: .v5)
        await second.connectAccepted("dev")
        #expect(first.handle.closeReasons == [.sessionTakenOver])
        #expect(first.connection.serverDisconnectPacket(.sessionTakenOver) == .disconnect(MQTTReasonPacket(reasonCode: .sessionTakenOver)))
        #expect(ServerDisconnectReason.sessionTakenOver.reasonCode == .sessionTakenOver)
    }

    @Test("clean session 0: reconnecting resumes the session and redelivers unacknowledged QoS 1 with DUP (MQTT-4.4.0-1)")
    func resume() async throws {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        #expect(await subscriber.connectAccepted("sub", cleanStart: false)?.sessionPresent == false)
        await subscriber.subscribe([("t", .atLeastOnce)])

        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("t", "1", qos: .atLeastOnce, id: 1)
        await publisher.publish("t", "2", qos: .atLeastOnce, id: 2)
        let sent = try #require(subscriber.poll()?.publish)
        #expect(sent.text == "1")
        #expect(!sent.dup)

        // The connection drops before PUBACK. QoS 1 published meanwhile is kept; QoS 0 is not.
        subscriber.closed(.connectionLost)
        #expect(broker.session(clientID: "sub")?.isConnected == false)
        await publisher.publish("t", "3", qos: .atLeastOnce, id: 3)
        await publisher.publish("t", "lost", qos: .atMostOnce)

        let again = TestClient(broker)
        let actions = await again.connect("sub", cleanStart: false)
        #expect(sentPackets(actions) == [.connack(MQTTConnAckPacket(sessionPresent: true, reasonCode: .success))])
        let redelivered = try #require(again.poll()?.publish)
        #expect(redelivered.dup)
        #expect(redelivered.packetIdentifier == sent.packetIdentifier)
        #expect(redelivered.text == "1")
        #expect(redelivered.topic == "t")
        let rest = again.drainPublishes()
        #expect(rest.map(\.text) == ["2", "3"])
        #expect(rest.allSatisfy { !$0.dup && $0.qos == .atLeastOnce })
    }

    @Test("clean session 0: an outbound QoS 2 whose PUBREC arrived resumes with PUBREL")
    func resumeQoS2() async throws {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub", cleanStart: false)
        await subscriber.subscribe([("t", .exactlyOnce)])
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "x"), qos: .exactlyOnce, retain: false))
        let sent = try #require(subscriber.poll()?.publish)
        let id = try #require(sent.packetIdentifier)
        await subscriber.send(.pubrec(MQTTAckPacket(packetIdentifier: id)))
        subscriber.closed()

        let again = TestClient(broker)
        await again.connectAccepted("sub", cleanStart: false)
        #expect(again.poll() == .pubrel(MQTTAckPacket(packetIdentifier: id)))
        await again.send(.pubcomp(MQTTAckPacket(packetIdentifier: id)))
        #expect(broker.session(clientID: "sub")?.queuedCount == 0)
    }

    @Test("clean session 1 discards the stored session (MQTT-3.1.2-6)")
    func cleanSessionDiscards() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub", cleanStart: false)
        await subscriber.subscribe([("t", .atLeastOnce)])
        subscriber.closed()
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "queued"), qos: .atLeastOnce, retain: false))
        #expect(broker.session(clientID: "sub")?.queuedCount == 1)

        let again = TestClient(broker)
        #expect(await again.connectAccepted("sub", cleanStart: true)?.sessionPresent == false)
        #expect(again.poll() == nil)
        #expect(broker.subscriptionCount == 0)
        #expect(broker.queuedBytes == 0)
    }

    @Test("a clean session's state is not reused by a later clean session 0 connection (MQTT-3.1.2-6, MQTT-3.2.2-2)")
    func cleanSessionNotResumedOnTakeover() async {
        let broker = makeBroker()
        // The first connection asks for a clean session: it "lasts as long as the Network Connection"
        // and "MUST NOT be reused in any subsequent Session".
        let first = TestClient(broker)
        await first.connectAccepted("dev", cleanStart: true)
        await first.subscribe([("t", .atMostOnce)])

        // A second connection with clean session 0 takes over while the first is still open.
        let second = TestClient(broker)
        let connack = await second.connectAccepted("dev", cleanStart: false)
        #expect(first.handle.closeReasons == [.sessionTakenOver])
        #expect(connack?.sessionPresent == false)
        // The clean session's subscription does not carry over.
        #expect(broker.subscriptionCount == 0)
    }

    @Test("a non-persistent session is removed when its connection closes")
    func nonPersistentRemoved() async {
        let broker = makeBroker()
        let client = TestClient(broker)
        await client.connectAccepted("c", cleanStart: true)
        await client.subscribe([("t", .atMostOnce)])
        client.closed()
        #expect(broker.sessionCount == 0)
        #expect(broker.subscriptionCount == 0)
    }

    @Test("an offline persistent session expires after sessionExpiry seconds")
    func expiry() async {
        let broker = makeBroker { $0.sessionExpiry = 0 }
        let client = TestClient(broker)
        await client.connectAccepted("c", cleanStart: false)
        await client.subscribe([("t", .atMostOnce)])
        // Connected sessions never expire.
        #expect(broker.expireSessions() == 0)
        client.closed()
        #expect(broker.sessionCount == 1)
        #expect(broker.expireSessions() == 1)
        #expect(broker.sessionCount == 0)
        #expect(broker.subscriptionCount == 0)
    }

    @Test("a session that reconnected is not expired; once offline again it expires")
    func expiryAfterReconnect() async {
        let broker = makeBroker { $0.sessionExpiry = 0 }
        let first = TestClient(broker)
        await first.connectAccepted("c", cleanStart: false)
        first.closed()
        let second = TestClient(broker)
        await second.connectAccepted("c", cleanStart: false)
        #expect(broker.expireSessions() == 0)
        #expect(broker.sessionCount == 1)
        second.closed()
        #expect(broker.expireSessions() == 1)
        #expect(broker.sessionCount == 0)
        // A clean start replaces an offline session; the replaced one is not expired later.
        let third = TestClient(broker)
        await third.connectAccepted("d", cleanStart: false)
        third.closed()
        let fourth = TestClient(broker)
        await fourth.connectAccepted("d", cleanStart: true)
        #expect(broker.expireSessions() == 0)
        #expect(broker.sessionCount == 1)
    }
}

@Suite("Bounded queues")
struct QueueLimitTests {
    /// The bytes one message on topic `topic` with payload `payload` holds in a queue.
    private func size(_ topic: String, _ payload: String) -> Int {
        Message(topic: topic, payload: ByteBuffer(string: payload), qos: .atMostOnce, retain: false).queuedByteCount
    }

    @Test("QoS 0: a full queue drops its oldest messages (by count)")
    func qos0DropsOldestByCount() async {
        let broker = makeBroker { $0.maxQueuedMessages = 3 }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        for n in 0..<5 { broker.publish(Message(topic: "t", payload: ByteBuffer(string: "\(n)"), qos: .atMostOnce, retain: false)) }
        #expect(broker.session(clientID: "sub")?.queuedCount == 3)
        #expect(subscriber.handle.closeReasons == [])
        #expect(subscriber.drainPublishes().map(\.text) == ["2", "3", "4"])
        #expect(broker.queuedBytes == 0)
    }

    @Test("QoS 0: a full queue drops its oldest messages (by bytes)")
    func qos0DropsOldestByBytes() async {
        let broker = makeBroker { $0.maxQueuedBytes = 3 * size("t", "0") }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        for n in 0..<5 { broker.publish(Message(topic: "t", payload: ByteBuffer(string: "\(n)"), qos: .atMostOnce, retain: false)) }
        #expect(broker.session(clientID: "sub")?.queuedCount == 3)
        #expect(broker.queuedBytes == 3 * size("t", "0"))
        #expect(subscriber.drainPublishes().map(\.text) == ["2", "3", "4"])
    }

    @Test("QoS 1 overflowing a connected session's queue closes it with quota exceeded")
    func qos1OverflowCloses() async {
        let broker = makeBroker { $0.maxQueuedMessages = 2 }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atLeastOnce)])
        for n in 0..<3 { broker.publish(Message(topic: "t", payload: ByteBuffer(string: "\(n)"), qos: .atLeastOnce, retain: false)) }
        #expect(subscriber.handle.closeReasons == [.quotaExceeded])
        #expect(broker.session(clientID: "sub")?.queuedCount == 2)
        #expect(ServerDisconnectReason.quotaExceeded.reasonCode == .quotaExceeded)
    }

    @Test("QoS 1 pushes out queued QoS 0 before anyone is disconnected")
    func qos1EvictsQoS0() async {
        let broker = makeBroker { $0.maxQueuedMessages = 2 }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atLeastOnce)])
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "a"), qos: .atMostOnce, retain: false))
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "b"), qos: .atLeastOnce, retain: false))
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "c"), qos: .atLeastOnce, retain: false))
        #expect(subscriber.handle.closeReasons == [])
        #expect(subscriber.drainPublishes().map(\.text) == ["b", "c"])
    }

    @Test("QoS 1 overflowing an offline session's queue is dropped, nobody is closed")
    func qos1OverflowOffline() async {
        let broker = makeBroker { $0.maxQueuedMessages = 2 }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub", cleanStart: false)
        await subscriber.subscribe([("t", .atLeastOnce)])
        subscriber.closed()
        for n in 0..<4 { broker.publish(Message(topic: "t", payload: ByteBuffer(string: "\(n)"), qos: .atLeastOnce, retain: false)) }
        #expect(subscriber.handle.closeReasons == [])
        #expect(broker.session(clientID: "sub")?.queuedCount == 2)
        let again = TestClient(broker)
        await again.connectAccepted("sub", cleanStart: false)
        #expect(again.drainPublishes().map(\.text) == ["0", "1"])
    }

    @Test("the global byte cap applies across sessions")
    func globalCapApplies() async {
        let one = size("g", "x")
        let broker = makeBroker { $0.globalMaxQueuedBytes = 2 * one + one / 2 }
        let s1 = TestClient(broker)
        await s1.connectAccepted("s1")
        await s1.subscribe([("g", .atLeastOnce)])
        let s2 = TestClient(broker)
        await s2.connectAccepted("s2")
        await s2.subscribe([("g", .atLeastOnce)])

        broker.publish(Message(topic: "g", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, retain: false))
        #expect(broker.queuedBytes == 2 * one)
        #expect(broker.queuedMessages == 2)
        // Neither session is near its own limits, but together they are at the global cap.
        broker.publish(Message(topic: "g", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, retain: false))
        #expect(broker.queuedBytes <= broker.configuration.globalMaxQueuedBytes)
        #expect(broker.queuedBytes == 2 * one)
        #expect(s1.handle.closeReasons == [.quotaExceeded])
        #expect(s2.handle.closeReasons == [.quotaExceeded])

        // Delivering and acknowledging frees the budget.
        for client in [s1, s2] {
            for publish in client.drainPublishes() {
                await client.send(.puback(MQTTAckPacket(packetIdentifier: publish.packetIdentifier!)))
            }
        }
        #expect(broker.queuedBytes == 0)
        #expect(broker.queuedMessages == 0)
    }

    @Test("the global byte cap with QoS 0: only the oldest message is pushed out")
    func globalCapDropsOldestQoS0() async {
        let one = size("g", "0")
        let broker = makeBroker { $0.globalMaxQueuedBytes = 2 * one }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("g", .atMostOnce)])
        for n in 0..<3 { broker.publish(Message(topic: "g", payload: ByteBuffer(string: "\(n)"), qos: .atMostOnce, retain: false)) }
        #expect(broker.queuedBytes <= 2 * one)
        // As with the per-session caps: the oldest QoS 0 message makes room for the newest.
        #expect(broker.session(clientID: "sub")?.queuedCount == 2)
        #expect(subscriber.drainPublishes().map(\.text) == ["1", "2"])
    }
}

@Suite("Will messages")
struct WillTests {
    private func watcher(_ broker: Broker) async -> TestClient {
        let watcher = TestClient(broker)
        await watcher.connectAccepted("watcher")
        await watcher.subscribe([("will/#", .exactlyOnce)])
        return watcher
    }

    private let will = MQTTWill(topic: "will/dev", payload: ByteBuffer(string: "gone"), qos: .atLeastOnce, retain: false)

    @Test(
        "the will is published when the connection ends without DISCONNECT",
        arguments: [
            ClientConnection.CloseCause.connectionLost, .keepAliveTimeout, .protocolError, .server(.sessionTakenOver),
            .server(.serverShuttingDown),
        ]
    )
    func publishedOnLoss(_ cause: ClientConnection.CloseCause) async {
        let broker = makeBroker()
        let watcher = await watcher(broker)
        let device = TestClient(broker)
        await device.connectAccepted("dev", will: will)
        #expect(watcher.poll() == nil)
        device.closed(cause)
        let got = watcher.drainPublishes()
        #expect(got.map(\.topic) == ["will/dev"])
        #expect(got.map(\.text) == ["gone"])
        #expect(got.first?.qos == .atLeastOnce)
    }

    @Test("the will is not published after DISCONNECT (MQTT-3.14.4-3)", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func notPublishedAfterDisconnect(_ version: MQTTProtocolVersion) async {
        let broker = makeBroker()
        let watcher = await watcher(broker)
        let device = TestClient(broker, version: version)
        await device.connectAccepted("dev", will: will)
        #expect(describe(await device.send(.disconnect(MQTTReasonPacket()))) == ["close"])
        // The transport reports the socket closed afterwards.
        device.closed(.connectionLost)
        #expect(watcher.poll() == nil)
        #expect(broker.sessionCount == 1)  // the watcher's
    }

    @Test("MQTT 5 DISCONNECT with reason 0x04 publishes the will")
    func disconnectWithWill() async {
        let broker = makeBroker()
        let watcher = await watcher(broker)
        let device = TestClient(broker, version: .v5)
        await device.connectAccepted("dev", will: will)
        await device.send(.disconnect(MQTTReasonPacket(reasonCode: .disconnectWithWillMessage)))
        device.closed(.connectionLost)
        #expect(watcher.drainPublishes().map(\.text) == ["gone"])
    }

    @Test("MQTT 5 Will Delay Interval: the will waits while the session lives, and a reconnect cancels it (MQTT-3.1.3-9, 3.1.2.5)")
    func willDelay() async {
        let broker = makeBroker()
        let watcher = await watcher(broker)
        var willProperties = MQTTProperties()
        willProperties.willDelayInterval = 60
        var connectProperties = MQTTProperties()
        connectProperties.sessionExpiryInterval = 3600
        let delayedWill = MQTTWill(topic: "will/dev", payload: ByteBuffer(string: "gone"), qos: .atLeastOnce, retain: false, properties: willProperties)

        let device = TestClient(broker, version: .v5)
        await device.connect("dev", cleanStart: false, will: delayedWill, properties: connectProperties)
        device.closed(.connectionLost)
        // Neither 60 s nor the 3600 s session has passed: nothing may be published yet.
        #expect(watcher.poll() == nil)

        // The client is back within the delay: the will is never published.
        let again = TestClient(broker, version: .v5)
        await again.connect("dev", cleanStart: false, properties: connectProperties)
        #expect(watcher.poll() == nil)
    }

    @Test("a retained will is stored as the topic's retained message")
    func retainedWill() async {
        let broker = makeBroker()
        let device = TestClient(broker)
        await device.connectAccepted(
            "dev",
            will: MQTTWill(topic: "will/dev", payload: ByteBuffer(string: "offline"), qos: .atMostOnce, retain: true)
        )
        device.closed(.connectionLost)
        #expect(broker.retained.count == 1)
        let late = TestClient(broker)
        await late.connectAccepted("late")
        await late.subscribe([("will/+", .atMostOnce)])
        let got = late.drainPublishes()
        #expect(got.map(\.text) == ["offline"])
        #expect(got.first?.retain == true)
    }
}

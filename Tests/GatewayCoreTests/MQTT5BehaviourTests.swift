@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

@Suite("MQTT 5 behaviour")
struct MQTT5BehaviourTests {
    private func publishPacket(
        _ topic: String,
        _ payload: ByteBuffer,
        qos: MQTTQoS = .atMostOnce,
        id: UInt16? = nil,
        _ configure: (inout MQTTProperties) -> Void = { _ in }
    ) -> MQTTPacket {
        var properties = MQTTProperties()
        configure(&properties)
        return .publish(MQTTPublishPacket(topic: topic, payload: payload, qos: qos, packetIdentifier: id, properties: properties))
    }

    @Test("a topic alias set by one PUBLISH is resolved in a later one with an empty topic")
    func topicAlias() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("long/topic/name", .atMostOnce)])
        let publisher = TestClient(broker, version: .v5)
        await publisher.connectAccepted("pub")
        await publisher.send(publishPacket("long/topic/name", ByteBuffer(string: "1")) { $0.topicAlias = 3 })
        await publisher.send(publishPacket("", ByteBuffer(string: "2")) { $0.topicAlias = 3 })
        let got = subscriber.drainPublishes()
        #expect(got.map(\.topic) == ["long/topic/name", "long/topic/name"])
        #expect(got.map(\.text) == ["1", "2"])
        // The alias is the publisher's business: it is never forwarded.
        #expect(got.allSatisfy { $0.properties.topicAlias == nil })
    }

    @Test("an unknown alias, an alias above the maximum, or an empty topic without alias disconnects")
    func topicAliasErrors() async {
        let broker = makeBroker()
        let cases: [(MQTTPacket, MQTTReasonCode)] = [
            (publishPacket("", ByteBuffer(string: "x")) { $0.topicAlias = 5 }, .protocolError),
            (publishPacket("t", ByteBuffer(string: "x")) { $0.topicAlias = UInt16(broker.configuration.topicAliasMaximum) + 1 }, .topicAliasInvalid),
            (publishPacket("", ByteBuffer(string: "x")), .protocolError),
        ]
        for (n, (packet, code)) in cases.enumerated() {
            let client = TestClient(broker, version: .v5)
            await client.connectAccepted("c\(n)")
            let actions = await client.send(packet)
            #expect(sentPackets(actions) == [.disconnect(MQTTReasonPacket(reasonCode: code))])
            #expect(describe(actions).last == "close")
        }
    }

    @Test("Payload Format Indicator 1 with a non-UTF-8 payload is refused with 0x99 and not routed")
    func payloadFormatInvalid() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        let publisher = TestClient(broker, version: .v5)
        await publisher.connectAccepted("pub")
        let actions = await publisher.send(publishPacket("t", ByteBuffer(bytes: [0xC3, 0x28]), qos: .atLeastOnce, id: 4) { $0.payloadFormatIndicator = 1 })
        #expect(sentPackets(actions) == [.puback(MQTTAckPacket(packetIdentifier: 4, reasonCode: .payloadFormatInvalid))])
        #expect(subscriber.poll() == nil)
    }

    @Test("QoS above the server maximum disconnects an MQTT 5 publisher with 0x9B")
    func qosNotSupported() async {
        let broker = makeBroker { $0.maxQoS = 1 }
        let publisher = TestClient(broker, version: .v5)
        await publisher.connectAccepted("pub")
        let actions = await publisher.publish("t", "x", qos: .exactlyOnce, id: 1)
        #expect(sentPackets(actions) == [.disconnect(MQTTReasonPacket(reasonCode: .qosNotSupported))])
    }

    @Test("Subscription Identifiers are delivered with matching messages")
    func subscriptionIdentifiers() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker, version: .v5)
        await subscriber.connectAccepted("sub")
        var properties = MQTTProperties()
        properties.subscriptionIdentifiers = [7]
        await subscriber.subscribe([MQTTSubscription(topicFilter: "a/+", qos: .atMostOnce)], id: 1, properties: properties)
        properties.subscriptionIdentifiers = [9]
        await subscriber.subscribe([MQTTSubscription(topicFilter: "a/#", qos: .atMostOnce)], id: 2, properties: properties)
        broker.publish(Message(topic: "a/b", payload: ByteBuffer(string: "x"), qos: .atMostOnce, retain: false))
        let got = subscriber.drainPublishes()
        #expect(got.count == 1)
        #expect(got.first?.properties.subscriptionIdentifiers.sorted() == [7, 9])
    }

    @Test("No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82, not a SUBACK code (MQTT-3.8.3-4)")
    func noLocalOnSharedSubscription() async {
        let broker = makeBroker()
        let client = TestClient(broker, version: .v5)
        await client.connectAccepted("c")
        let actions = await client.send(
            .subscribe(
                MQTTSubscribePacket(
                    packetIdentifier: 1,
                    subscriptions: [MQTTSubscription(topicFilter: "$share/g/t", qos: .atMostOnce, noLocal: true)]
                )
            )
        )
        // 0x82 is not among the SUBACK reason codes of section 3.9.3; a Protocol Error closes the
        // connection with DISCONNECT (section 4.13).
        #expect(sentPackets(actions) == [.disconnect(MQTTReasonPacket(reasonCode: .protocolError))])
        #expect(describe(actions).last == "close")
    }

    @Test("SUBACK reason codes are ones section 3.9.3 defines")
    func subackCodesAreValid() async {
        let valid: Set<UInt8> = [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
        let broker = makeBroker { $0.maxQoS = 1 }
        let client = TestClient(broker, version: .v5)
        await client.connectAccepted("c")
        let codes = await client.subscribe([
            MQTTSubscription(topicFilter: "a", qos: .exactlyOnce),
            MQTTSubscription(topicFilter: "a/#/b", qos: .atMostOnce),
            MQTTSubscription(topicFilter: "$share//x", qos: .atMostOnce),
            MQTTSubscription(topicFilter: "$share/g/x", qos: .atLeastOnce),
        ])
        #expect(codes == [.grantedQoS1, .topicFilterInvalid, .topicFilterInvalid, .grantedQoS1])
        #expect(codes.allSatisfy { valid.contains($0.rawValue) })
    }

    @Test("No Local: a client does not receive its own messages")
    func noLocal() async {
        let broker = makeBroker()
        let client = TestClient(broker, version: .v5)
        await client.connectAccepted("me")
        await client.subscribe([MQTTSubscription(topicFilter: "chat", qos: .atMostOnce, noLocal: true)])
        await client.publish("chat", "mine")
        #expect(client.poll() == nil)
        let other = TestClient(broker)
        await other.connectAccepted("other")
        await other.publish("chat", "theirs")
        #expect(client.drainPublishes().map(\.text) == ["theirs"])
    }

    @Test("messages larger than the client's Maximum Packet Size are not sent to it (MQTT-3.1.2-25)")
    func clientMaximumPacketSize() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker, version: .v5)
        var properties = MQTTProperties()
        properties.maximumPacketSize = 40
        #expect(sentPackets(await subscriber.connect("sub", properties: properties)).first?.type == .connack)
        await subscriber.subscribe([("t", .atLeastOnce)])
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: String(repeating: "x", count: 100)), qos: .atLeastOnce, retain: false))
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "small"), qos: .atLeastOnce, retain: false))
        #expect(subscriber.drainPublishes().map(\.text) == ["small"])
        // The dropped QoS 1 message does not stay in flight.
        #expect(broker.session(clientID: "sub")?.queuedCount == 1)
    }

    @Test("the client's Receive Maximum narrows the in-flight window")
    func clientReceiveMaximum() async {
        let broker = makeBroker { $0.maxInflight = 10 }
        let subscriber = TestClient(broker, version: .v5)
        var properties = MQTTProperties()
        properties.receiveMaximum = 1
        await subscriber.connect("sub", properties: properties)
        await subscriber.subscribe([("t", .atLeastOnce)])
        for n in 0..<3 { broker.publish(Message(topic: "t", payload: ByteBuffer(string: "\(n)"), qos: .atLeastOnce, retain: false)) }
        #expect(subscriber.drainPublishes().map(\.text) == ["0"])
    }

    @Test("Server Keep Alive replaces 0 or too long a keep-alive for MQTT 5 only")
    func serverKeepAlive() async {
        let broker = makeBroker { $0.maxKeepAlive = 30 }
        let v5 = TestClient(broker, version: .v5)
        let actions = await v5.connect("a", keepAlive: 0)
        #expect(describe(actions).contains("keepAlive 30"))
        guard case .connack(let connack)? = sentPackets(actions).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(connack.properties.serverKeepAlive == 30)
        let v3 = TestClient(broker)
        #expect(describe(await v3.connect("b", keepAlive: 0)).contains("keepAlive 0"))
    }

    @Test("DISCONNECT may not turn a session with expiry 0 into a persistent one (MQTT-3.14.2-2)")
    func disconnectSessionExpiry() async {
        let broker = makeBroker()
        let client = TestClient(broker, version: .v5)
        await client.connectAccepted("c")
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 60
        let actions = await client.send(.disconnect(MQTTReasonPacket(reasonCode: .success, properties: properties)))
        #expect(sentPackets(actions) == [.disconnect(MQTTReasonPacket(reasonCode: .protocolError))])
        #expect(describe(actions).last == "close")
    }

    @Test("Session Expiry Interval on CONNECT keeps the session after the connection")
    func sessionExpiryKeepsSession() async {
        let broker = makeBroker()
        let client = TestClient(broker, version: .v5)
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 3600
        await client.connect("c", cleanStart: false, properties: properties)
        await client.subscribe([("t", .atLeastOnce)])
        client.closed()
        #expect(broker.sessionCount == 1)
        let again = TestClient(broker, version: .v5)
        let actions = await again.connect("c", cleanStart: false, properties: properties)
        #expect(sentPackets(actions).first.flatMap { packet -> Bool? in
            if case .connack(let c) = packet { return c.sessionPresent }
            return nil
        } == true)
    }

    @Test("AUTH without an authentication method is a protocol error")
    func authPacket() async {
        let client = TestClient(makeBroker(), version: .v5)
        await client.connectAccepted("c")
        let actions = await client.send(.auth(MQTTReasonPacket(reasonCode: .reAuthenticate)))
        #expect(sentPackets(actions) == [.disconnect(MQTTReasonPacket(reasonCode: .protocolError))])
    }
}

@Suite("Broker admission, drain and administration")
struct BrokerAdministrationTests {
    @Test("maxConnections caps admitted connections; releasing one makes room")
    func maxConnections() {
        let broker = makeBroker { $0.maxConnections = 2 }
        #expect(broker.admitConnection(transport: .tcp))
        #expect(broker.admitConnection(transport: .ws))
        #expect(!broker.admitConnection(transport: .tcp))
        #expect(broker.connectionCount == 2)
        broker.releaseConnection(transport: .ws)
        #expect(broker.admitConnection(transport: .tcp))
    }

    @Test("while draining: no new connections or sessions, and PUBLISH is neither routed nor acknowledged")
    func draining() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")

        broker.beginDrain()
        #expect(broker.isDraining)
        #expect(!broker.admitConnection(transport: .tcp))
        #expect(sentPackets(await TestClient(broker).connect("late")) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(3)))])
        #expect(await publisher.publish("t", "x", qos: .atLeastOnce, id: 1).isEmpty)
        #expect(subscriber.poll() == nil)
    }

    @Test("disconnect(clientID:) and closeAllConnections close through the handle")
    func administrativeClose() async {
        let broker = makeBroker()
        let a = TestClient(broker)
        await a.connectAccepted("a")
        let b = TestClient(broker)
        await b.connectAccepted("b")
        #expect(broker.disconnect(clientID: "a"))
        #expect(!broker.disconnect(clientID: "nobody"))
        #expect(a.handle.closeReasons == [.administrativeAction])
        broker.closeAllConnections(reason: .serverShuttingDown)
        #expect(a.handle.closeReasons == [.administrativeAction, .serverShuttingDown])
        #expect(b.handle.closeReasons == [.serverShuttingDown])
    }

    @Test("connectedSessionsIdle and undeliveredToConnected follow the queues")
    func idle() async throws {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atLeastOnce)])
        #expect(broker.connectedSessionsIdle)
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, retain: false))
        #expect(!broker.connectedSessionsIdle)
        #expect(broker.undeliveredToConnected == 1)
        let sent = try #require(subscriber.poll()?.publish)
        #expect(broker.undeliveredToConnected == 1)  // in flight until PUBACK
        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: sent.packetIdentifier!)))
        #expect(broker.connectedSessionsIdle)
        #expect(broker.undeliveredToConnected == 0)
    }
}

@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

@Suite("Subscribing and routing")
struct RoutingTests {
    @Test("SUBACK grants min(requested, maxQoS)", arguments: [0, 1, 2])
    func grantedQoS(_ maxQoS: Int) async {
        let broker = makeBroker { $0.maxQoS = maxQoS }
        let client = TestClient(broker)
        await client.connectAccepted("sub")
        let codes = await client.subscribe([("a", .atMostOnce), ("b", .atLeastOnce), ("c", .exactlyOnce)], id: 42)
        #expect(codes == [0, 1, 2].map { MQTTReasonCode(UInt8(min($0, maxQoS))) })
        #expect(broker.subscriptionCount == 3)
    }

    @Test("an invalid filter fails alone: 0x80 in 3.1.1, 0x8F in 5.0")
    func invalidFilter() async {
        let broker = makeBroker()
        let v3 = TestClient(broker)
        await v3.connectAccepted("v3")
        #expect(await v3.subscribe([("a/#/b", .atLeastOnce), ("ok", .atLeastOnce), ("$share/g", .atMostOnce)]) == [.unspecifiedError, .grantedQoS1, .unspecifiedError])
        let v5 = TestClient(broker, version: .v5)
        await v5.connectAccepted("v5")
        #expect(await v5.subscribe([("x+", .atMostOnce)]) == [.topicFilterInvalid])
    }

    @Test(
        "a message published by another connection wakes the idle subscriber, which then gets it",
        .timeLimit(.minutes(1))
    )
    func deliveredToSubscriber() async throws {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("sensors/+/temp", .atLeastOnce)])
        // Nothing to send: the session will wake the connection when something is queued.
        #expect(subscriber.poll() == nil)
        #expect(subscriber.handle.wakeCount == 0)

        // The connection task is already waiting for its wake-up when the message is published.
        let handle = subscriber.handle
        let woken = Task { await handle.waitForWake(1) }
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        #expect(await publisher.publish("sensors/1/temp", "21.5").isEmpty)
        await woken.value
        let packet = try #require(subscriber.poll()?.publish)
        #expect(packet.topic == "sensors/1/temp")
        #expect(packet.text == "21.5")
        #expect(packet.qos == .atMostOnce)

        // A topic the filter does not match is neither delivered nor a reason to wake.
        await publisher.publish("sensors/1/hum", "40")
        #expect(subscriber.poll() == nil)
        #expect(subscriber.handle.wakeCount == 1)
    }

    @Test("one wake-up per empty poll: messages queued before the next poll do not wake again")
    func oneWakePerEmptyPoll() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        // No poll has come back empty yet, so there is nobody to wake.
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "0"), qos: .atMostOnce, retain: false))
        #expect(subscriber.handle.wakeCount == 0)
        #expect(subscriber.drainPublishes().map(\.text) == ["0"])

        for n in 1...3 { broker.publish(Message(topic: "t", payload: ByteBuffer(string: "\(n)"), qos: .atMostOnce, retain: false)) }
        #expect(subscriber.handle.wakeCount == 1)
        #expect(subscriber.drainPublishes().map(\.text) == ["1", "2", "3"])
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "4"), qos: .atMostOnce, retain: false))
        #expect(subscriber.handle.wakeCount == 2)
    }

    @Test("QoS is min(published, subscribed); PUBACK comes back to the publisher")
    func qosDowngrade() async {
        let broker = makeBroker()
        let q0 = TestClient(broker)
        await q0.connectAccepted("q0")
        await q0.subscribe([("t", .atMostOnce)])
        let q2 = TestClient(broker)
        await q2.connectAccepted("q2")
        await q2.subscribe([("t", .exactlyOnce)])

        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        let actions = await publisher.publish("t", "m", qos: .atLeastOnce, id: 9)
        #expect(sentPackets(actions) == [.puback(MQTTAckPacket(packetIdentifier: 9))])

        #expect(q0.drainPublishes().map { $0.qos } == [.atMostOnce])
        let delivered = q2.drainPublishes()
        #expect(delivered.map { $0.qos } == [.atLeastOnce])
        #expect(delivered.first?.packetIdentifier != nil)
    }

    @Test("overlapping subscriptions deliver one copy at the highest QoS (MQTT-3.3.5-1)")
    func overlapping() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("a/#", .atMostOnce), ("a/+", .atLeastOnce), ("#", .atMostOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("a/b", "x", qos: .exactlyOnce, id: 1)
        let delivered = subscriber.drainPublishes()
        #expect(delivered.count == 1)
        #expect(delivered.first?.qos == .atLeastOnce)
    }

    @Test("UNSUBSCRIBE stops delivery and answers one code per filter")
    func unsubscribe() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker, version: .v5)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("a", .atMostOnce), ("b", .atMostOnce)])
        let actions = await subscriber.send(.unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 5, topicFilters: ["a", "zzz"])))
        #expect(sentPackets(actions) == [.unsuback(MQTTSubAckPacket(packetIdentifier: 5, reasonCodes: [.success, .noSubscriptionExisted]))])
        #expect(broker.subscriptionCount == 1)
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("a", "1")
        await publisher.publish("b", "2")
        #expect(subscriber.drainPublishes().map(\.text) == ["2"])
    }

    @Test("$ topics are not delivered to # subscribers, but to $SYS/# subscribers")
    func dollarTopics() async {
        let broker = makeBroker()
        let everything = TestClient(broker)
        await everything.connectAccepted("all")
        await everything.subscribe([("#", .atMostOnce), ("+/uptime", .atMostOnce)])
        let sys = TestClient(broker)
        await sys.connectAccepted("sys")
        await sys.subscribe([("$SYS/#", .atMostOnce)])
        #expect(broker.publish(Message(topic: "$SYS/uptime", payload: ByteBuffer(string: "1"), qos: .atMostOnce, retain: false)) == 1)
        #expect(everything.poll() == nil)
        #expect(sys.drainPublishes().map(\.topic) == ["$SYS/uptime"])
    }

    @Test("shared subscriptions deliver each message to one member, round robin")
    func sharedRoundRobin() async {
        let broker = makeBroker()
        var members: [TestClient] = []
        for name in ["w1", "w2", "w3"] {
            let member = TestClient(broker, version: .v5)
            await member.connectAccepted(name)
            #expect(await member.subscribe([("$share/workers/jobs/#", .atMostOnce)]) == [.grantedQoS0])
            members.append(member)
        }
        let plain = TestClient(broker)
        await plain.connectAccepted("plain")
        await plain.subscribe([("jobs/#", .atMostOnce)])

        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        for n in 0..<6 { await publisher.publish("jobs/\(n)", "\(n)") }

        #expect(members[0].drainPublishes().map(\.text) == ["0", "3"])
        #expect(members[1].drainPublishes().map(\.text) == ["1", "4"])
        #expect(members[2].drainPublishes().map(\.text) == ["2", "5"])
        // A plain subscription to the same filter still gets everything.
        #expect(plain.drainPublishes().count == 6)
    }

    @Test("a shared group skips an offline member")
    func sharedSkipsOffline() async {
        let broker = makeBroker()
        // A persistent 3.1.1 session: it stays in the group while offline.
        let m1 = TestClient(broker)
        await m1.connectAccepted("m1", cleanStart: false)
        await m1.subscribe([("$share/g/q", .atLeastOnce)])
        let m2 = TestClient(broker, version: .v5)
        await m2.connectAccepted("m2")
        await m2.subscribe([("$share/g/q", .atLeastOnce)])
        m1.closed()
        #expect(broker.subscriptionCount == 2)
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        for n in 0..<3 { await publisher.publish("q", "\(n)") }
        #expect(m2.drainPublishes().map(\.text) == ["0", "1", "2"])
    }
}

@Suite("QoS 1 and 2 flows")
struct QoSFlowTests {
    @Test("with maxInflight 2 only two QoS 1 messages go out until a PUBACK")
    func inflightWindow() async throws {
        let broker = makeBroker { $0.maxInflight = 2 }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atLeastOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        for n in 1...4 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n)) }

        let first = try #require(subscriber.poll()?.publish)
        let second = try #require(subscriber.poll()?.publish)
        #expect([first.text, second.text] == ["1", "2"])
        #expect(first.packetIdentifier != second.packetIdentifier)
        #expect(subscriber.poll() == nil)
        #expect(broker.session(clientID: "sub")?.queuedCount == 4)

        // A PUBACK for an id that is not in flight changes nothing.
        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: 999)))
        #expect(subscriber.poll() == nil)

        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: first.packetIdentifier!)))
        let third = try #require(subscriber.poll()?.publish)
        #expect(third.text == "3")
        #expect(subscriber.poll() == nil)

        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: second.packetIdentifier!)))
        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: third.packetIdentifier!)))
        let fourth = try #require(subscriber.poll()?.publish)
        #expect(fourth.text == "4")
        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: fourth.packetIdentifier!)))
        #expect(broker.session(clientID: "sub")?.queuedCount == 0)
        #expect(broker.queuedBytes == 0)
    }

    @Test("QoS 0 messages are not held back by a full in-flight window of QoS 1 behind them")
    func qos0NotCountedInWindow() async {
        let broker = makeBroker { $0.maxInflight = 1 }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        for n in 1...5 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n)) }
        // Downgraded to QoS 0: nothing is in flight, so all five go out.
        #expect(subscriber.drainPublishes().map(\.text) == ["1", "2", "3", "4", "5"])
    }

    @Test("outbound QoS 2: PUBREC is answered with PUBREL, PUBCOMP completes")
    func outboundQoS2() async throws {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .exactlyOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("t", "x", qos: .exactlyOnce, id: 3)
        await publisher.send(.pubrel(MQTTAckPacket(packetIdentifier: 3)))

        let delivered = try #require(subscriber.poll()?.publish)
        #expect(delivered.qos == .exactlyOnce)
        let id = try #require(delivered.packetIdentifier)
        #expect(sentPackets(await subscriber.send(.pubrec(MQTTAckPacket(packetIdentifier: id)))) == [.pubrel(MQTTAckPacket(packetIdentifier: id))])
        #expect(broker.session(clientID: "sub")?.queuedCount == 1)
        await subscriber.send(.pubcomp(MQTTAckPacket(packetIdentifier: id)))
        #expect(broker.session(clientID: "sub")?.queuedCount == 0)
    }

    @Test("an inbound QoS 2 PUBLISH sent again before PUBREL is not routed twice (MQTT-4.3.3-2)")
    func inboundQoS2Duplicate() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")

        #expect(sentPackets(await publisher.publish("t", "once", qos: .exactlyOnce, id: 7)) == [.pubrec(MQTTAckPacket(packetIdentifier: 7))])
        #expect(sentPackets(await publisher.publish("t", "once", qos: .exactlyOnce, id: 7, dup: true)) == [.pubrec(MQTTAckPacket(packetIdentifier: 7))])
        #expect(subscriber.drainPublishes().map(\.text) == ["once"])

        #expect(sentPackets(await publisher.send(.pubrel(MQTTAckPacket(packetIdentifier: 7)))) == [.pubcomp(MQTTAckPacket(packetIdentifier: 7))])
        // After PUBREL the id is free: a new message with it is a new message.
        await publisher.publish("t", "again", qos: .exactlyOnce, id: 7)
        #expect(subscriber.drainPublishes().map(\.text) == ["again"])
    }

    @Test("MQTT 5: PUBACK says No matching subscribers when nobody subscribed")
    func noMatchingSubscribers() async {
        let broker = makeBroker()
        let publisher = TestClient(broker, version: .v5)
        await publisher.connectAccepted("pub")
        #expect(
            sentPackets(await publisher.publish("nobody/here", "x", qos: .atLeastOnce, id: 2))
                == [.puback(MQTTAckPacket(packetIdentifier: 2, reasonCode: .noMatchingSubscribers))]
        )
    }
}

@Suite("Retained messages")
struct RetainedTests {
    private func subscribeFresh(_ broker: Broker, _ id: String, _ filter: String, qos: MQTTQoS = .atLeastOnce) async -> [MQTTPublishPacket] {
        let client = TestClient(broker)
        await client.connectAccepted(id)
        await client.subscribe([(filter, qos)])
        return client.drainPublishes()
    }

    @Test("a retained message is set, replaced and cleared, and new subscribers get it with RETAIN set")
    func setReplaceClear() async {
        let broker = makeBroker()
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")

        await publisher.publish("status/door", "open", qos: .atLeastOnce, retain: true, id: 1)
        var got = await subscribeFresh(broker, "s1", "status/#")
        #expect(got.map(\.text) == ["open"])
        #expect(got.first?.retain == true)
        #expect(got.first?.qos == .atLeastOnce)
        #expect(broker.retained.count == 1)

        await publisher.publish("status/door", "closed", retain: true)
        got = await subscribeFresh(broker, "s2", "status/door")
        #expect(got.map(\.text) == ["closed"])
        #expect(got.first?.qos == .atMostOnce)
        #expect(broker.retained.count == 1)

        // A retained message with an empty payload clears it (MQTT-3.3.1-10).
        await publisher.publish("status/door", "", retain: true)
        #expect(broker.retained.count == 0)
        #expect(await subscribeFresh(broker, "s3", "status/#").isEmpty)
    }

    @Test("retained messages are delivered at min(stored QoS, subscription QoS), after SUBACK")
    func retainedAfterSubAck() async {
        let broker = makeBroker()
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("r/a", "A", qos: .exactlyOnce, retain: true, id: 1)
        await publisher.publish("r/b", "B", qos: .atLeastOnce, retain: true, id: 2)

        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        let actions = await subscriber.send(
            .subscribe(MQTTSubscribePacket(packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "r/+", qos: .atMostOnce)]))
        )
        // SUBACK is the action; the retained messages are already queued and are written after it.
        #expect(describe(actions) == ["send SUBACK"])
        let got = subscriber.drainPublishes()
        #expect(got.map(\.topic).sorted() == ["r/a", "r/b"])
        #expect(got.allSatisfy { $0.qos == .atMostOnce && $0.retain })
    }

    @Test("live delivery of a retained PUBLISH to an existing 3.1.1 subscriber has RETAIN clear (MQTT-3.3.1-9)")
    func liveDeliveryClearsRetain() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atMostOnce)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("t", "v", retain: true)
        let got = subscriber.drainPublishes()
        #expect(got.map(\.text) == ["v"])
        #expect(got.first?.retain == false)
    }

    @Test("MQTT 5 Retain As Published keeps RETAIN on live delivery")
    func retainAsPublished() async {
        let broker = makeBroker()
        let subscriber = TestClient(broker, version: .v5)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([MQTTSubscription(topicFilter: "t", qos: .atMostOnce, retainAsPublished: true)])
        let publisher = TestClient(broker)
        await publisher.connectAccepted("pub")
        await publisher.publish("t", "v", retain: true)
        #expect(subscriber.drainPublishes().first?.retain == true)
    }

    @Test("MQTT 5 Retain Handling 2 sends no retained messages")
    func retainHandlingDoNotSend() async {
        let broker = makeBroker()
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "v"), qos: .atMostOnce, retain: true))
        let subscriber = TestClient(broker, version: .v5)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([MQTTSubscription(topicFilter: "t", qos: .atMostOnce, retainHandling: .doNotSend)])
        #expect(subscriber.poll() == nil)
    }

    @Test("retained messages are not stored when retain is not available")
    func retainUnavailable() async {
        let broker = makeBroker { $0.retainAvailable = false }
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "v"), qos: .atMostOnce, retain: true))
        #expect(broker.retained.count == 0)
        #expect(await subscribeFresh(broker, "s", "t").isEmpty)
    }
}

@Suite("Encode once in routing")
struct EncodeOnceRoutingTests {
    @Test("a message for several subscribers carries one shared encoding; per-subscriber forms do not use it")
    func sharedAcrossSubscribers() async {
        let broker = makeBroker()
        var clients: [TestClient] = []
        for n in 0..<3 {
            let client = TestClient(broker, version: n == 2 ? .v5 : .v3_1_1)
            await client.connectAccepted("s\(n)")
            if n == 2 {
                // A subscription identifier makes this receiver's bytes its own.
                var properties = MQTTProperties()
                properties.subscriptionIdentifiers = [5]
                await client.subscribe([MQTTSubscription(topicFilter: "t/+", qos: .atLeastOnce)], properties: properties)
            } else {
                await client.subscribe([("t/+", .atLeastOnce)])
            }
            clients.append(client)
        }
        broker.publish(Message(topic: "t/x", payload: ByteBuffer(string: "hello"), qos: .atLeastOnce, retain: false))
        let received = clients.map { $0.drainPublishes() }
        #expect(received.map(\.count) == [1, 1, 1])
        let first = received[0][0], second = received[1][0], third = received[2][0]
        #expect(first.sharedEncoding != nil && first.sharedEncoding === second.sharedEncoding)
        #expect(third.sharedEncoding == nil)
        #expect(third.properties.subscriptionIdentifiers == [5])
        // Same bytes as an independent encoding, each with its own packet id.
        for (publish, version) in [(first, MQTTProtocolVersion.v3_1_1), (second, .v3_1_1), (third, .v5)] {
            var plain = publish
            plain.sharedEncoding = nil
            let allocator = ByteBufferAllocator()
            #expect(
                Array(MQTTPacket.publish(publish).encode(version: version, allocator: allocator).readableBytesView)
                    == Array(MQTTPacket.publish(plain).encode(version: version, allocator: allocator).readableBytesView))
        }
    }

    @Test("a message for one subscriber is encoded as before, without a cache")
    func singleSubscriber() async {
        let broker = makeBroker()
        let client = TestClient(broker)
        await client.connectAccepted("only")
        await client.subscribe([("t", .atMostOnce)])
        broker.publish(Message(topic: "t", payload: ByteBuffer(string: "x"), qos: .atMostOnce, retain: false))
        #expect(client.drainPublishes().first?.sharedEncoding == nil)
    }
}

@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

/// The broker side of the bridge: an internal persistent session that queues while its upstream is
/// away, lets a message go only when it is acknowledged, never gets its own publications back, and
/// whose client id no network client may take.
@Suite("Internal clients")
struct InternalClientTests {
    private func bridgeClient(_ broker: Broker, limits: InternalClient.Limits = .init(maxQueuedMessages: 100, maxQueuedBytes: 1 << 20, maxInflight: 2)) -> InternalClient {
        broker.attachInternalClient(
            clientID: "$bridge/up",
            subscriptions: [InternalClient.Subscription(filter: "devices/#", qos: .atLeastOnce)],
            limits: limits
        )
    }

    @Test("QoS 1 messages queue while disconnected and leave only when acknowledged")
    func storeAndForward() async {
        let broker = makeBroker()
        let bridge = bridgeClient(broker)
        let device = TestClient(broker)
        await device.connectAccepted("device")
        for index in 1...3 { await device.publish("devices/x", "m\(index)", qos: .atLeastOnce, id: UInt16(index)) }
        await device.publish("devices/x", "qos0", qos: .atMostOnce)
        #expect(bridge.nextDelivery() == nil)  // not connected
        #expect(bridge.queuedCount == 3)  // QoS 0 is not kept offline

        let handle = RecordingHandle()
        bridge.connect(handle: handle)
        let first = bridge.nextDelivery()
        let second = bridge.nextDelivery()
        #expect(first.map { String(buffer: $0.payload) } == "m1")
        #expect(second.map { String(buffer: $0.payload) } == "m2")
        #expect(bridge.nextDelivery() == nil)  // window of 2 is full
        #expect(bridge.acknowledge(packetID: first!.packetIdentifier!))
        #expect(bridge.queuedCount == 2)

        // The upstream drops before acknowledging m2: it is delivered again, first, with DUP.
        bridge.disconnect()
        bridge.connect(handle: handle)
        let again = bridge.nextDelivery()
        #expect(again.map { String(buffer: $0.payload) } == "m2")
        #expect(again?.dup == true)
        let third = bridge.nextDelivery()
        #expect(third.map { String(buffer: $0.payload) } == "m3")
        #expect(bridge.acknowledge(packetID: again!.packetIdentifier!))
        #expect(bridge.acknowledge(packetID: third!.packetIdentifier!))
        #expect(bridge.queuedCount == 0)
    }

    @Test("what the bridge publishes is not delivered back to it (No Local), but reaches others")
    func noLocal() async {
        let broker = makeBroker()
        let bridge = bridgeClient(broker)
        bridge.connect(handle: RecordingHandle())
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("subscriber")
        await subscriber.subscribe([("devices/#", .atLeastOnce)])
        let matched = bridge.publish(Message(topic: "devices/y", payload: ByteBuffer(string: "from upstream"), qos: .atLeastOnce, retain: false))
        #expect(matched == 1)
        #expect(bridge.nextDelivery() == nil)
        #expect(subscriber.drainPublishes().map { String(buffer: $0.payload) } == ["from upstream"])
    }

    @Test("a full bridge queue drops new messages and counts them, never disconnecting anyone")
    func overflowDrops() async {
        let broker = makeBroker()
        let bridge = bridgeClient(broker, limits: .init(maxQueuedMessages: 2, maxQueuedBytes: 1 << 20, maxInflight: 1))
        let handle = RecordingHandle()
        bridge.connect(handle: handle)
        let device = TestClient(broker)
        await device.connectAccepted("device")
        for index in 1...4 { await device.publish("devices/x", "m\(index)", qos: .atLeastOnce, id: UInt16(index)) }
        #expect(bridge.queuedCount == 2)
        #expect(handle.closeReasons.isEmpty)
        #expect(device.handle.closeReasons.isEmpty)
    }

    @Test("subscriptions follow the configuration when the session already exists")
    func resubscribe() {
        let broker = makeBroker()
        _ = bridgeClient(broker)
        let again = broker.attachInternalClient(
            clientID: "$bridge/up",
            subscriptions: [InternalClient.Subscription(filter: "alerts/#", qos: .atMostOnce)],
            limits: .init()
        )
        #expect(Set(broker.session(clientID: again.clientID)!.subscriptions.keys) == ["alerts/#"])
        #expect(broker.subscriptionCount == 1)
    }

    @Test("network clients may not use a $bridge/ client id (3.1.1 return code 2, MQTT 5 0x85)")
    func reservedPrefix() async {
        let broker = makeBroker()
        for version in [MQTTProtocolVersion.v3_1_1, .v5] {
            let client = TestClient(broker, version: version)
            let actions = await client.connect("$bridge/up")
            guard case .connack(let connack)? = sentPackets(actions).first else {
                Issue.record("no CONNACK: \(describe(actions))")
                continue
            }
            #expect(connack.reasonCode == (version == .v5 ? .clientIdentifierNotValid : MQTTReasonCode(2)))
            #expect(describe(actions).last == "close")
        }
    }
}

@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

/// `limits.slow_consumer`: what a connected subscriber's full queue does with a QoS 1/2 message.
@Suite("Back-pressure on publishers of a slow subscriber")
struct BackpressureTests {
    /// A broker whose sessions queue at most `queue` messages, and a connected QoS 1 subscriber to `t`.
    private func fixture(
        queue: Int = 4,
        _ configure: (inout BrokerConfiguration) -> Void = { _ in }
    ) async -> (Broker, TestClient) {
        let broker = makeBroker {
            $0.maxQueuedMessages = queue
            $0.maxInflight = 2
            configure(&$0)
        }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub")
        await subscriber.subscribe([("t", .atLeastOnce)])
        return (broker, subscriber)
    }

    private func publisher(_ broker: Broker, _ id: String) async -> TestClient {
        let client = TestClient(broker)
        await client.connectAccepted(id)
        return client
    }

    /// Receives what is ready and acknowledges it; returns the payloads.
    private func receiveAndAcknowledge(_ subscriber: TestClient) async -> [String] {
        var texts: [String] = []
        while true {
            let publishes = subscriber.drainPublishes()
            if publishes.isEmpty { return texts }
            for publish in publishes {
                texts.append(publish.text)
                await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: publish.packetIdentifier!)))
            }
        }
    }

    @Test("a full queue takes the QoS 1 message, pauses its publisher and resumes it at half the cap; nothing lost, order kept")
    func pausesAndResumes() async {
        let (broker, subscriber) = await fixture()
        let publisher = await publisher(broker, "pub")
        for n in 0..<6 {
            await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1))
        }
        // 4 fit, the 5th paused the publisher, the 6th (already read) is taken too.
        #expect(publisher.handle.readPauses == [true])
        #expect(subscriber.handle.closeReasons == [])
        #expect(broker.session(clientID: "sub")?.queuedCount == 6)
        #expect(broker.congestedSessionCount == 1)

        #expect(await receiveAndAcknowledge(subscriber) == ["0", "1", "2", "3", "4", "5"])
        #expect(publisher.handle.readPauses == [true, false])
        #expect(broker.congestedSessionCount == 0)
        #expect(broker.queuedMessages == 0)
    }

    @Test("reading resumes only once the queue has drained to half its cap")
    func resumesAtHalf() async {
        let (broker, subscriber) = await fixture(queue: 4) { $0.maxInflight = 1 }
        let publisher = await publisher(broker, "pub")
        for n in 0..<5 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        #expect(publisher.handle.readPauses == [true])
        // 5 queued; each acknowledgement frees one: 4, 3 still over half of 4, 2 is half.
        for expected in [4, 3] {
            let publish = subscriber.drainPublishes()
            await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: publish[0].packetIdentifier!)))
            #expect(broker.session(clientID: "sub")?.queuedCount == expected)
            #expect(publisher.handle.readPauses == [true])
        }
        let publish = subscriber.drainPublishes()
        await subscriber.send(.puback(MQTTAckPacket(packetIdentifier: publish[0].packetIdentifier!)))
        #expect(publisher.handle.readPauses == [true, false])
    }

    @Test("every publisher feeding the full queue is paused, and each resumes")
    func severalPublishers() async {
        let (broker, subscriber) = await fixture()
        let first = await publisher(broker, "p1")
        let second = await publisher(broker, "p2")
        for n in 0..<3 {
            await first.publish("t", "a\(n)", qos: .atLeastOnce, id: UInt16(n + 1))
            await second.publish("t", "b\(n)", qos: .atLeastOnce, id: UInt16(n + 1))
        }
        #expect(first.handle.readPauses == [true])
        #expect(second.handle.readPauses == [true])
        #expect(await receiveAndAcknowledge(subscriber) == ["a0", "b0", "a1", "b1", "a2", "b2"])
        #expect(first.handle.readPauses == [true, false])
        #expect(second.handle.readPauses == [true, false])
    }

    @Test("a publisher feeding a fast and a slow subscriber waits only for the slow one")
    func fastAndSlow() async {
        let (broker, slow) = await fixture()
        let fast = TestClient(broker)
        await fast.connectAccepted("fast")
        await fast.subscribe([("t", .atLeastOnce)])
        let publisher = await publisher(broker, "pub")
        for n in 0..<5 {
            await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1))
            _ = await receiveAndAcknowledge(fast)
        }
        #expect(publisher.handle.readPauses == [true])
        #expect(fast.handle.closeReasons == [])
        _ = await receiveAndAcknowledge(slow)
        #expect(publisher.handle.readPauses == [true, false])
    }

    @Test("a subscriber whose queue held publishers back past slow_consumer_timeout is disconnected; its publishers resume")
    func timeoutDisconnects() async {
        let (broker, subscriber) = await fixture { $0.slowConsumerTimeout = 0.001 }
        let publisher = await publisher(broker, "pub")
        for n in 0..<5 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        #expect(publisher.handle.readPauses == [true])
        // The timeout is a millisecond on the continuous clock: wait for it, bounded.
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while broker.enforceSlowConsumerTimeout() == 0 && ContinuousClock.now < deadline { await Task.yield() }
        #expect(subscriber.handle.closeReasons == [.quotaExceeded])
        // The transport closes the socket; the session then has no owner, and the publisher goes on.
        subscriber.closed(.server(.quotaExceeded))
        #expect(publisher.handle.readPauses == [true, false])
        #expect(broker.congestedSessionCount == 0)
    }

    @Test("a message routed after the timeout disconnects the subscriber at once")
    func timeoutOnNextMessage() async {
        let (broker, subscriber) = await fixture { $0.slowConsumerTimeout = 0.001 }
        let publisher = await publisher(broker, "pub")
        for n in 0..<5 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while broker.session(clientID: "sub")?.isCongested(longerThan: .milliseconds(1), now: ContinuousClock.now) == false
            && ContinuousClock.now < deadline
        {
            await Task.yield()
        }
        await publisher.publish("t", "late", qos: .atLeastOnce, id: 9)
        #expect(subscriber.handle.closeReasons == [.quotaExceeded])
    }

    @Test("slow_consumer: disconnect closes the subscriber with 0x97 and pauses nobody")
    func disconnectPolicy() async {
        let (broker, subscriber) = await fixture { $0.slowConsumer = .disconnect }
        let publisher = await publisher(broker, "pub")
        for n in 0..<5 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        #expect(subscriber.handle.closeReasons == [.quotaExceeded])
        #expect(publisher.handle.readPauses == [])
        #expect(broker.session(clientID: "sub")?.queuedCount == 4)
    }

    @Test("slow_consumer: drop drops what does not fit, closes and pauses nobody")
    func dropPolicy() async {
        let (broker, subscriber) = await fixture { $0.slowConsumer = .drop }
        let publisher = await publisher(broker, "pub")
        for n in 0..<6 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        #expect(subscriber.handle.closeReasons == [])
        #expect(publisher.handle.readPauses == [])
        #expect(await receiveAndAcknowledge(subscriber) == ["0", "1", "2", "3"])
    }

    @Test("QoS 0 drops by default and holds publishers back with qos0_when_full: backpressure")
    func qos0Policies() async {
        for policy in [QoS0WhenFullPolicy.drop, .backpressure] {
            let broker = makeBroker {
                $0.maxQueuedMessages = 2
                $0.qos0WhenFull = policy
            }
            let subscriber = TestClient(broker)
            await subscriber.connectAccepted("sub")
            await subscriber.subscribe([("t", .atMostOnce)])
            let publisher = await publisher(broker, "pub")
            for n in 0..<4 { await publisher.publish("t", "\(n)") }
            let texts = subscriber.drainPublishes().map(\.text)
            if policy == .drop {
                #expect(texts == ["2", "3"])
                #expect(publisher.handle.readPauses == [])
            } else {
                #expect(texts == ["0", "1", "2", "3"])
                #expect(publisher.handle.readPauses == [true, false])
            }
        }
    }

    @Test("a client publishing into its own full queue is not paused (it could not read its acknowledgements): it is disconnected")
    func ownQueue() async {
        let (broker, subscriber) = await fixture()
        for n in 0..<5 { await subscriber.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        #expect(subscriber.handle.readPauses == [])
        #expect(subscriber.handle.closeReasons == [.quotaExceeded])
        _ = broker
    }

    @Test("a subscriber that goes away releases its publishers; its persistent queue keeps what was taken")
    func detachReleases() async {
        let broker = makeBroker {
            $0.maxQueuedMessages = 2
            $0.maxInflight = 1
        }
        let subscriber = TestClient(broker)
        await subscriber.connectAccepted("sub", cleanStart: false)
        await subscriber.subscribe([("t", .atLeastOnce)])
        let publisher = await publisher(broker, "pub")
        for n in 0..<4 { await publisher.publish("t", "\(n)", qos: .atLeastOnce, id: UInt16(n + 1)) }
        #expect(publisher.handle.readPauses == [true])
        subscriber.closed()
        #expect(publisher.handle.readPauses == [true, false])
        let again = TestClient(broker)
        await again.connectAccepted("sub", cleanStart: false)
        #expect(await receiveAndAcknowledge(again) == ["0", "1", "2", "3"])
    }
}

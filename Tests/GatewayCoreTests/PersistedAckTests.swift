@testable import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import Synchronization
import Testing

// Acknowledgement timing and order with the ingest queue (ack: persisted | received, overflow: reject),
// driven through ClientConnection without sockets (see TestSupport.swift). The store is an in-memory
// fake that holds inserts until the test releases them.

/// A `TelemetryStore` that records committed records and holds inserts while ``hold()`` is in force.
private final class GateStore: TelemetryStore {
    private struct State {
        var holding = false
        var held: [CheckedContinuation<Void, Never>] = []
        var heldCount = 0
        var committed: [TelemetryRecord] = []
        var heldWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    var isReachable: Bool { true }
    var committed: [TelemetryRecord] { state.withLock { $0.committed } }

    func hold() { state.withLock { $0.holding = true } }

    func release() {
        let held = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.holding = false
            defer { state.held.removeAll() }
            return state.held
        }
        for continuation in held { continuation.resume() }
    }

    /// Returns once an insert is being held (at once if one is).
    func waitForHeldInsert() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.heldCount > 0 { return true }
                state.heldWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func insert(_ records: [TelemetryRecord]) async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let (goOn, waiters) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                guard state.holding else { return (true, []) }
                state.held.append(continuation)
                state.heldCount += 1
                defer { state.heldWaiters.removeAll() }
                return (false, state.heldWaiters)
            }
            for waiter in waiters { waiter.resume() }
            if goOn { continuation.resume() }
        }
        state.withLock {
            $0.heldCount = 0
            $0.committed.append(contentsOf: records)
        }
    }
}

/// A broker with an ingest queue over a `GateStore`, its batch writer running.
private struct IngestFixture {
    let store = GateStore()
    let queue: IngestQueue
    let broker: Broker
    let writer: Task<Void, Never>

    init(broker brokerConfiguration: BrokerConfiguration = BrokerConfiguration(), _ configure: (inout IngestConfiguration) -> Void = { _ in }) {
        var configuration = IngestConfiguration()
        configuration.batchMaxDelay = 0
        configure(&configuration)
        let queue = IngestQueue(configuration: configuration, store: store, logger: silentLogger)
        self.queue = queue
        self.broker = Broker(configuration: brokerConfiguration, ingest: queue, logger: silentLogger)
        self.writer = Task { await queue.run() }
    }

    /// Releases the store, flushes and stops the writer.
    func finish() async {
        store.release()
        queue.close()
        await writer.value
    }
}

private func pubacks(_ actions: [ClientConnection.Action]) -> [MQTTAckPacket] {
    sentPackets(actions).compactMap { packet in
        if case .puback(let ack) = packet { return ack }
        return nil
    }
}

private func pubacks(_ packets: [MQTTPacket]) -> [MQTTAckPacket] {
    pubacks(packets.map { .send($0) })
}

@Suite("Acknowledgements with durable ingestion", .timeLimit(.minutes(1)))
struct PersistedAckTests {
    @Test("ack: persisted: a stored QoS 1 PUBACK waits for the commit; a later unstored PUBACK waits behind it")
    func persistedWaitsForCommitInReceiveOrder() async {
        let fixture = IngestFixture { $0.topics = ["stored/#"] }
        let client = TestClient(fixture.broker)
        await client.connectAccepted("persisted-1")
        fixture.store.hold()

        let first = await client.publish("stored/a", "one", qos: .atLeastOnce, id: 1)
        #expect(pubacks(first).isEmpty, "PUBACK sent before the commit")
        await fixture.store.waitForHeldInsert()
        // Not stored at all, so ready at once — but it must not overtake packet 1's PUBACK.
        let second = await client.publish("other/b", "two", qos: .atLeastOnce, id: 2)
        #expect(pubacks(second).isEmpty, "the PUBACK of packet 2 overtook packet 1's")
        #expect(client.connection.takeReadyAcknowledgements().isEmpty)
        #expect(fixture.store.committed.isEmpty)

        let wakes = client.handle.wakeCount
        fixture.store.release()
        await client.handle.waitForWake(wakes + 1)  // the commit wakes the connection task
        let acks = pubacks(client.connection.takeReadyAcknowledgements())
        #expect(acks.map(\.packetIdentifier) == [1, 2])
        #expect(fixture.store.committed.map(\.topic) == ["stored/a"], "only the stored topic is committed")
        #expect(fixture.store.committed.first?.clientID == "persisted-1")
        #expect(fixture.store.committed.first.map { String(buffer: $0.payload) } == "one")
        await fixture.finish()
    }

    @Test("Receive Maximum counts QoS 1 PUBLISHes whose PUBACK waits for a commit: one more is DISCONNECT 0x93")
    func receiveMaximumCountsPendingQoS1() async {
        var brokerConfiguration = BrokerConfiguration()
        brokerConfiguration.receiveMaximum = 3
        let fixture = IngestFixture(broker: brokerConfiguration)
        let client = TestClient(fixture.broker, version: .v5)
        await client.connectAccepted("rm-qos1")
        fixture.store.hold()
        for id in UInt16(1)...3 {
            let actions = await client.publish("s/rm", "m\(id)", qos: .atLeastOnce, id: id)
            #expect(sentPackets(actions).isEmpty, "PUBACK \(id) before its commit, or a disconnect within the quota")
        }
        let fourth = await client.publish("s/rm", "m4", qos: .atLeastOnce, id: 4)
        #expect(sentPackets(fourth) == [.disconnect(MQTTReasonPacket(reasonCode: .receiveMaximumExceeded))])
        await fixture.finish()
    }

    @Test("Receive Maximum: a client that waits for its PUBACKs may keep publishing at the limit")
    func receiveMaximumWithinQuota() async {
        var brokerConfiguration = BrokerConfiguration()
        brokerConfiguration.receiveMaximum = 2
        let fixture = IngestFixture(broker: brokerConfiguration)
        let client = TestClient(fixture.broker, version: .v5)
        await client.connectAccepted("rm-ok")
        for round in 0..<5 {
            for id in UInt16(1)...2 {
                let actions = await client.publish("s/ok", "r\(round)", qos: .atLeastOnce, id: id)
                #expect(!sentPackets(actions).contains { if case .disconnect = $0 { return true } else { return false } })
            }
            // Both acknowledgements come out (after their commits) before the next round.
            var acked: [UInt16] = []
            for _ in 0..<200 where acked.count < 2 {
                acked += pubacks(client.connection.takeReadyAcknowledgements()).map(\.packetIdentifier)
                if acked.count < 2 { await Task.yield(); try? await Task.sleep(for: .milliseconds(5)) }
            }
            #expect(acked == [1, 2])
        }
        await fixture.finish()
    }

    @Test("ack: persisted: the PUBACK comes through nextOutboundPacket too, after the commit")
    func persistedThroughNextOutbound() async {
        let fixture = IngestFixture()
        let client = TestClient(fixture.broker)
        await client.connectAccepted("persisted-2")
        fixture.store.hold()
        await client.publish("s/1", "x", qos: .atLeastOnce, id: 7)
        await fixture.store.waitForHeldInsert()
        #expect(client.poll() == nil)
        let wakes = client.handle.wakeCount
        fixture.store.release()
        await client.handle.waitForWake(wakes + 1)
        #expect(client.poll() == .puback(MQTTAckPacket(packetIdentifier: 7)))
        #expect(client.poll() == nil)
        await fixture.finish()
    }

    @Test("ack: persisted: QoS 2 PUBREC waits for the commit, and a retransmission is not stored twice")
    func persistedQoS2() async {
        let fixture = IngestFixture()
        let client = TestClient(fixture.broker)
        await client.connectAccepted("persisted-3")
        fixture.store.hold()
        let actions = await client.publish("s/2", "q2", qos: .exactlyOnce, id: 3)
        #expect(sentPackets(actions).isEmpty, "PUBREC before the commit")
        await fixture.store.waitForHeldInsert()
        let wakes = client.handle.wakeCount
        fixture.store.release()
        await client.handle.waitForWake(wakes + 1)
        #expect(client.connection.takeReadyAcknowledgements() == [.pubrec(MQTTAckPacket(packetIdentifier: 3))])
        // The same packet again before PUBREL: acknowledged again, not stored again.
        let again = await client.publish("s/2", "q2", qos: .exactlyOnce, id: 3, dup: true)
        #expect(sentPackets(again) == [.pubrec(MQTTAckPacket(packetIdentifier: 3))])
        let rel = await client.send(.pubrel(MQTTAckPacket(packetIdentifier: 3)))
        #expect(sentPackets(rel) == [.pubcomp(MQTTAckPacket(packetIdentifier: 3))])
        await fixture.finish()
        #expect(fixture.store.committed.count == 1)
    }

    @Test("ack: received: PUBACK at once, before the commit")
    func receivedAcksAtOnce() async {
        let fixture = IngestFixture { $0.ack = .received }
        let client = TestClient(fixture.broker)
        await client.connectAccepted("received-1")
        fixture.store.hold()
        let first = await client.publish("s/1", "a", qos: .atLeastOnce, id: 1)
        #expect(pubacks(first).map(\.packetIdentifier) == [1])
        let second = await client.publish("s/1", "b", qos: .atLeastOnce, id: 2)
        #expect(pubacks(second).map(\.packetIdentifier) == [2])
        #expect(fixture.store.committed.isEmpty, "acknowledged before anything was committed")
        await fixture.finish()
        #expect(fixture.store.committed.map { String(buffer: $0.payload) } == ["a", "b"], "close() flushed both")
    }

    @Test("overflow: reject, MQTT 5: a full queue answers PUBACK 0x97 (ack: received)")
    func rejectV5Received() async {
        let fixture = IngestFixture {
            $0.ack = .received
            $0.overflow = .reject
            $0.maxQueuedMessages = 1
        }
        let client = TestClient(fixture.broker, version: .v5)
        await client.connectAccepted("reject-v5")
        fixture.store.hold()
        let first = await client.publish("s/1", "fits", qos: .atLeastOnce, id: 1)
        #expect(pubacks(first).map(\.reasonCode) == [.noMatchingSubscribers])
        let second = await client.publish("s/1", "full", qos: .atLeastOnce, id: 2)
        #expect(pubacks(second) == [MQTTAckPacket(packetIdentifier: 2, reasonCode: .quotaExceeded)])
        #expect(!describe(second).contains("close"), "an MQTT 5 publisher is refused, not disconnected")
        await fixture.finish()
        #expect(fixture.store.committed.map { String(buffer: $0.payload) } == ["fits"])
    }

    @Test("overflow: reject, MQTT 5, ack: persisted: 0x97 keeps its place behind the pending PUBACK")
    func rejectV5Persisted() async {
        let fixture = IngestFixture {
            $0.overflow = .reject
            $0.maxQueuedMessages = 1
        }
        let client = TestClient(fixture.broker, version: .v5)
        await client.connectAccepted("reject-v5p")
        fixture.store.hold()
        let first = await client.publish("s/1", "fits", qos: .atLeastOnce, id: 1)
        #expect(pubacks(first).isEmpty)
        await fixture.store.waitForHeldInsert()
        let second = await client.publish("s/1", "full", qos: .atLeastOnce, id: 2)
        #expect(pubacks(second).isEmpty, "the 0x97 overtook the PUBACK waiting for its commit")
        let wakes = client.handle.wakeCount
        fixture.store.release()
        await client.handle.waitForWake(wakes + 1)
        let acks = pubacks(client.connection.takeReadyAcknowledgements())
        #expect(acks.map(\.packetIdentifier) == [1, 2])
        #expect(acks.map(\.reasonCode) == [.noMatchingSubscribers, .quotaExceeded])
        await fixture.finish()
    }

    @Test("overflow: reject, MQTT 3.1.1: a full queue closes the connection, no PUBACK, message not routed")
    func rejectV311Closes() async {
        let fixture = IngestFixture {
            $0.ack = .received
            $0.overflow = .reject
            $0.maxQueuedMessages = 1
        }
        let subscriber = TestClient(fixture.broker)
        await subscriber.connectAccepted("reject-sub")
        await subscriber.subscribe([("s/#", .atLeastOnce)])
        let client = TestClient(fixture.broker)
        await client.connectAccepted("reject-311")
        fixture.store.hold()
        let first = await client.publish("s/1", "fits", qos: .atLeastOnce, id: 1)
        #expect(pubacks(first).map(\.packetIdentifier) == [1])
        let second = await client.publish("s/1", "full", qos: .atLeastOnce, id: 2)
        #expect(describe(second) == ["close"], "3.1.1 publisher not disconnected: \(describe(second))")
        client.closed(.connectionLost)
        #expect(subscriber.drainPublishes().map(\.text) == ["fits"], "the refused message was routed")
        await fixture.finish()
        #expect(fixture.store.committed.map { String(buffer: $0.payload) } == ["fits"])
    }

    @Test("overflow: reject: QoS 0 on a full queue is dropped without closing")
    func rejectQoS0Dropped() async {
        let fixture = IngestFixture {
            $0.overflow = .reject
            $0.maxQueuedMessages = 1
        }
        let client = TestClient(fixture.broker)
        await client.connectAccepted("reject-q0")
        fixture.store.hold()
        #expect(await client.publish("s/1", "a").isEmpty)
        #expect(await client.publish("s/1", "b").isEmpty)
        await fixture.finish()
        #expect(fixture.store.committed.map { String(buffer: $0.payload) } == ["a"])
    }

    @Test("$SYS publishes and unmatched topics never reach the store")
    func sysNotStored() async {
        let fixture = IngestFixture()
        let client = TestClient(fixture.broker, version: .v5)
        await client.connectAccepted("sys-1")
        let actions = await client.publish("$SYS/forged", "x", qos: .atLeastOnce, id: 1)
        #expect(pubacks(actions).map(\.reasonCode) == [.notAuthorized])
        await client.publish("$other/x", "y", qos: .atMostOnce)
        await client.publish("plain", "z", qos: .atMostOnce)
        await fixture.finish()
        #expect(fixture.store.committed.map(\.topic) == ["plain"])
    }
}

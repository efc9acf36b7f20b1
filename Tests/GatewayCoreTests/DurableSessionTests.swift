@testable import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import Synchronization
import Testing

// The broker's state journal against an in-memory `BrokerStateStore` that holds applies while the test
// says so: what is journalled, when acknowledgements wait for it, and what coalescing saves.

/// A `BrokerStateStore` recording every applied operation; ``hold()`` suspends applies until ``release()``.
private final class HeldStateStore: BrokerStateStore {
    private struct State {
        var holding = false
        var held: [CheckedContinuation<Void, Never>] = []
        var applied: [BrokerStateOperation] = []
        var heldWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    var applied: [BrokerStateOperation] { state.withLock { $0.applied } }

    func hold() { state.withLock { $0.holding = true } }

    func release() {
        let held = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.holding = false
            defer { state.held.removeAll() }
            return state.held
        }
        for continuation in held { continuation.resume() }
    }

    /// Returns once an apply is being held.
    func waitForHeldApply() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if !state.held.isEmpty { return true }
                state.heldWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func apply(_ operations: [BrokerStateOperation]) async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let (goOn, waiters) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                guard state.holding else { return (true, []) }
                state.held.append(continuation)
                defer { state.heldWaiters.removeAll() }
                return (false, state.heldWaiters)
            }
            for waiter in waiters { waiter.resume() }
            if goOn { continuation.resume() }
        }
        state.withLock { $0.applied.append(contentsOf: operations) }
    }

    func load() async throws -> BrokerStateSnapshot { BrokerStateSnapshot() }
}

/// A broker with a journal over a `HeldStateStore` (its writer running) and an ingest queue that
/// stores nothing (only its `ack` mode matters here).
private struct JournalFixture {
    let store = HeldStateStore()
    let journal: StateJournal
    let broker: Broker
    let writer: Task<Void, Never>

    init(ack: IngestConfiguration.AckMode = .persisted, batchMaxDelay: Double = 0, maxPendingOperations: Int = 10_000) {
        var journalConfiguration = StateJournal.Configuration()
        journalConfiguration.batchMaxDelay = batchMaxDelay
        journalConfiguration.maxPendingOperations = maxPendingOperations
        journal = StateJournal(configuration: journalConfiguration, store: store, logger: silentLogger)
        var ingestConfiguration = IngestConfiguration()
        ingestConfiguration.topics = []
        ingestConfiguration.ack = ack
        let ingest = IngestQueue(configuration: ingestConfiguration, store: NoTelemetry(), logger: silentLogger)
        broker = Broker(configuration: BrokerConfiguration(), ingest: ingest, journal: journal, logger: silentLogger)
        let journal = self.journal
        writer = Task { await journal.run() }
    }

    func finish() async {
        store.release()
        journal.close()
        await writer.value
    }
}

private struct NoTelemetry: TelemetryStore {
    var isReachable: Bool { true }
    func insert(_ records: [TelemetryRecord]) async throws {
        Issue.record("nothing should be stored as telemetry here")
    }
}

/// The packet ids of the PUBACKs (or, with `pubrec`, the PUBRECs) among `packets`.
private func pubackIDs(_ packets: [MQTTPacket], pubrec: Bool = false) -> [UInt16] {
    packets.compactMap { packet in
        switch packet {
        case .puback(let ack) where !pubrec, .pubrec(let ack) where pubrec: ack.packetIdentifier
        default: nil
        }
    }
}

private func pubrecIDs(_ packets: [MQTTPacket]) -> [UInt16] { pubackIDs(packets, pubrec: true) }

@Suite("Durable sessions: the state journal", .timeLimit(.minutes(1)))
struct DurableSessionTests {
    @Test("ack: persisted: the PUBACK waits until the copy for an offline persistent session committed")
    func pubackWaitsForSessionCopy() async {
        let fixture = JournalFixture()
        let sub = TestClient(fixture.broker)
        await sub.connectAccepted("offline", cleanStart: false)
        await sub.subscribe([("d/#", .atLeastOnce)])
        sub.closed()
        // Let the session's own rows commit, then hold the next apply.
        while !fixture.journal.isEmpty { await Task.yield() }
        fixture.store.hold()

        let pub = TestClient(fixture.broker)
        await pub.connectAccepted("pub")
        let actions = await pub.publish("d/1", "keep me", qos: .atLeastOnce, id: 5)
        #expect(pubackIDs(sentPackets(actions)).isEmpty, "PUBACK before the session copy committed")
        await fixture.store.waitForHeldApply()
        #expect(pub.connection.takeReadyAcknowledgements().isEmpty)

        let wakes = pub.handle.wakeCount
        fixture.store.release()
        await pub.handle.waitForWake(wakes + 1)
        #expect(pubackIDs(pub.connection.takeReadyAcknowledgements()) == [5])
        let inserted = fixture.store.applied.compactMap { operation -> StoredSessionMessage? in
            if case .insertMessage(let message) = operation { return message }
            return nil
        }
        #expect(inserted.map(\.clientID) == ["offline"])
        #expect(inserted.first.map { String(buffer: $0.payload) } == "keep me")
        #expect(inserted.first?.state == .queued)
        await fixture.finish()
    }

    @Test("ack: persisted with no persistent subscriber, and ack: received, acknowledge at once")
    func noWaitWithoutCopies() async {
        let fixture = JournalFixture()
        fixture.store.hold()
        let pub = TestClient(fixture.broker)
        await pub.connectAccepted("pub")
        #expect(pubackIDs(sentPackets(await pub.publish("nobody/1", "x", qos: .atLeastOnce, id: 1))) == [1])
        await fixture.finish()

        let received = JournalFixture(ack: .received)
        let sub = TestClient(received.broker)
        await sub.connectAccepted("offline", cleanStart: false)
        await sub.subscribe([("d/#", .atLeastOnce)])
        sub.closed()
        received.store.hold()
        let pub2 = TestClient(received.broker)
        await pub2.connectAccepted("pub")
        #expect(pubackIDs(sentPackets(await pub2.publish("d/1", "x", qos: .atLeastOnce, id: 2))) == [2])
        await received.finish()
        #expect(received.store.applied.contains { if case .insertMessage = $0 { true } else { false } })
    }

    @Test("A copy sent and acknowledged within one batch window never reaches the store")
    func coalescedDeliveryCostsNoWrite() async {
        let fixture = JournalFixture(batchMaxDelay: 0)
        let sub = TestClient(fixture.broker)
        await sub.connectAccepted("online", cleanStart: false)
        await sub.subscribe([("c/#", .atLeastOnce)])
        while !fixture.journal.isEmpty { await Task.yield() }
        fixture.store.hold()
        // One apply (the subscription-less warm-up) is held, so everything below waits in the queue.
        fixture.journal.append(.deleteRetained(topic: "warm-up"))
        await fixture.store.waitForHeldApply()

        let pub = TestClient(fixture.broker)
        await pub.connectAccepted("pub")
        await pub.publish("c/1", "fast", qos: .atLeastOnce, id: 1)
        let delivered = sub.drainPublishes()
        #expect(delivered.map(\.text) == ["fast"])
        await sub.send(.puback(MQTTAckPacket(packetIdentifier: delivered[0].packetIdentifier!)))
        fixture.store.release()
        await fixture.finish()
        let messageOperations = fixture.store.applied.filter { operation in
            switch operation {
            case .insertMessage, .updateMessage, .deleteMessage: true
            default: false
            }
        }
        #expect(messageOperations.isEmpty, "expected the insert, update and delete to cancel out: \(messageOperations)")
        // The held PUBACK was released when the batch holding the cancelled insert committed.
        #expect(pubackIDs(pub.connection.takeReadyAcknowledgements()) == [1])
    }

    @Test("An update and a delete folded into a queued insert still run their onCommit when that batch commits")
    func foldedOperationsKeepTheirCallbacks() async {
        let fixture = JournalFixture()
        fixture.store.hold()
        // A held apply keeps everything below in the queue, where it can be folded.
        fixture.journal.append(.deleteRetained(topic: "warm-up"))
        await fixture.store.waitForHeldApply()
        let calls = Mutex<[String]>([])
        let seq = fixture.journal.nextSequence()
        let message = StoredSessionMessage(
            seq: seq, clientID: "folded", state: .queued, packetID: nil, qos: .atLeastOnce, retain: false, topic: "f/1",
            payload: ByteBuffer(string: "x"), messageQoS: .atLeastOnce, messageRetain: false, properties: nil,
            publisherClientID: nil, expiresAt: nil, subscriptionIdentifiers: [], sharedGroup: nil, sharedFilter: nil
        )
        fixture.journal.append(.insertMessage(message)) { calls.withLock { $0.append("insert") } }
        fixture.journal.append(.updateMessage(seq: seq, state: .awaitingPuback, packetID: 7)) { calls.withLock { $0.append("update") } }
        fixture.journal.append(.deleteMessage(seq: seq)) { calls.withLock { $0.append("delete") } }
        #expect(calls.withLock { $0 }.isEmpty, "a callback ran before its commit")
        await fixture.finish()
        #expect(calls.withLock { $0 } == ["insert", "update", "delete"])
        let messageOperations = fixture.store.applied.filter { operation in
            switch operation {
            case .insertMessage, .updateMessage, .deleteMessage: true
            default: false
            }
        }
        #expect(messageOperations.isEmpty, "the three operations cancel out: \(messageOperations)")
    }

    @Test("publish(_:whenPersisted:) calls back once the copy for an offline persistent session committed")
    func whenPersistedCallback() async {
        let fixture = JournalFixture()
        let sub = TestClient(fixture.broker)
        await sub.connectAccepted("api-offline", cleanStart: false)
        await sub.subscribe([("api/#", .exactlyOnce)])
        sub.closed()
        while !fixture.journal.isEmpty { await Task.yield() }
        fixture.store.hold()
        let called = Mutex(0)
        let (persisted, signal) = AsyncStream.makeStream(of: Void.self)
        let matched = fixture.broker.publish(
            Message(topic: "api/1", payload: ByteBuffer(string: "from the bridge"), qos: .exactlyOnce, retain: false)
        ) {
            called.withLock { $0 += 1 }
            signal.yield()
        }
        #expect(matched == 1)
        await fixture.store.waitForHeldApply()
        #expect(called.withLock { $0 } == 0, "called before the commit")
        fixture.store.release()
        var iterator = persisted.makeAsyncIterator()
        _ = await iterator.next()
        #expect(called.withLock { $0 } == 1)
        await fixture.finish()
    }

    @Test("A journal over its cap stops the publisher before routing until a commit makes room")
    func fullJournalBackPressuresPublishers() async {
        let fixture = JournalFixture(ack: .received, maxPendingOperations: 2)
        let sub = TestClient(fixture.broker)
        await sub.connectAccepted("slow-store", cleanStart: false)
        await sub.subscribe([("bp/#", .atLeastOnce)])
        sub.closed()
        while !fixture.journal.isEmpty { await Task.yield() }
        fixture.store.hold()
        let pub = TestClient(fixture.broker)
        await pub.connectAccepted("pub")
        // Two copies fill the journal (one being written and held, one queued).
        await pub.publish("bp/1", "one", qos: .atLeastOnce, id: 1)
        await fixture.store.waitForHeldApply()
        await pub.publish("bp/2", "two", qos: .atLeastOnce, id: 2)
        #expect(fixture.journal.depth == 2)
        let broker = fixture.broker
        let third = Task {
            let late = TestClient(broker)
            await late.connectAccepted("pub-late")
            return sentPackets(await late.publish("bp/3", "three", qos: .atLeastOnce, id: 3)).count
        }
        while fixture.journal.waitingPublishers == 0 { await Task.yield() }
        // Waiting before routing: the third message is not queued for the session yet.
        #expect(fixture.broker.session(clientID: "slow-store")?.queuedCount == 2)
        fixture.store.release()
        #expect(await third.value == 1, "the PUBACK comes once the publisher got room")
        #expect(fixture.broker.session(clientID: "slow-store")?.queuedCount == 3)
        await fixture.finish()
    }

    @Test("Session lifecycle: created, subscriptions, disconnect time, clean start deletes before re-creating")
    func sessionLifecycleIsJournalled() async {
        let fixture = JournalFixture()
        let a = TestClient(fixture.broker)
        await a.connectAccepted("life", cleanStart: false)
        await a.subscribe([("x/#", .exactlyOnce)])
        await a.send(.unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 2, topicFilters: ["x/#"])))
        a.closed()
        let b = TestClient(fixture.broker)
        await b.connectAccepted("life", cleanStart: true)
        b.closed()
        await fixture.finish()
        let kinds = fixture.store.applied.map { operation -> String in
            switch operation {
            case .upsertSession(let s): s.disconnectedAt == nil ? "session" : "session-offline"
            case .deleteSession: "delete-session"
            case .upsertSubscription(let s): "sub \(s.key) qos\(s.options.qos.rawValue)"
            case .deleteSubscription(_, let key): "unsub \(key)"
            default: "other"
            }
        }
        // The clean-start session is not persistent: after the delete, nothing more is stored for it.
        #expect(kinds == ["session", "sub x/# qos2", "unsub x/#", "session-offline", "delete-session"])
    }
}

extension DurableSessionTests {
    @Test("ack: persisted: a QoS 2 PUBREC waits for the stored packet id, stored after the message's copy; PUBREL deletes it")
    func inboundQoS2IDStoredAfterTheMessage() async {
        let fixture = JournalFixture()
        let sub = TestClient(fixture.broker)
        await sub.connectAccepted("offline", cleanStart: false)
        await sub.subscribe([("d/#", .exactlyOnce)])
        sub.closed()
        let pub = TestClient(fixture.broker)
        await pub.connectAccepted("pub", cleanStart: false)
        while !fixture.journal.isEmpty { await Task.yield() }
        fixture.store.hold()

        let actions = await pub.publish("d/1", "exactly once", qos: .exactlyOnce, id: 7)
        #expect(pubrecIDs(sentPackets(actions)).isEmpty, "PUBREC before anything committed")
        await fixture.store.waitForHeldApply()
        let wakes = pub.handle.wakeCount
        fixture.store.release()
        await pub.handle.waitForWake(wakes + 1)
        #expect(pubrecIDs(pub.connection.takeReadyAcknowledgements()) == [7])
        let applied = fixture.store.applied
        let copy = applied.firstIndex { if case .insertMessage(let m) = $0 { m.clientID == "offline" } else { false } }
        let id = applied.firstIndex(of: .insertInboundQoS2(clientID: "pub", packetID: 7))
        #expect(copy != nil && id != nil && copy! < id!, "the id must be stored after the copy: \(applied)")

        #expect(sentPackets(await pub.send(.pubrel(MQTTAckPacket(packetIdentifier: 7)))) == [.pubcomp(MQTTAckPacket(packetIdentifier: 7))])
        while !fixture.journal.isEmpty { await Task.yield() }
        #expect(fixture.store.applied.last == .deleteInboundQoS2(clientID: "pub", packetID: 7))
        await fixture.finish()
    }

    @Test("A session that is not persistent stores no inbound QoS 2 ids, and its PUBREC does not wait for one")
    func inboundQoS2OfACleanSessionIsNotStored() async {
        let fixture = JournalFixture()
        let pub = TestClient(fixture.broker)
        await pub.connectAccepted("clean")
        #expect(pubrecIDs(sentPackets(await pub.publish("nobody/1", "x", qos: .exactlyOnce, id: 3))) == [3])
        await pub.send(.pubrel(MQTTAckPacket(packetIdentifier: 3)))
        await fixture.finish()
        #expect(!fixture.store.applied.contains { if case .insertInboundQoS2 = $0 { true } else { false } })
        #expect(!fixture.store.applied.contains { if case .deleteInboundQoS2 = $0 { true } else { false } })
    }

    @Test("Restored inbound QoS 2 ids: a DUP retransmission is not routed again, PUBREL is known, DUP 0 is a new message")
    func restoredInboundQoS2() async {
        let fixture = JournalFixture()
        var snapshot = BrokerStateSnapshot()
        snapshot.sessions = [StoredSessionRecord(clientID: "pub", expiryInterval: 3600, disconnectedAt: WallClock.millisecondsSinceEpoch())]
        snapshot.inboundQoS2 = [StoredInboundQoS2(clientID: "pub", packetID: 7), StoredInboundQoS2(clientID: "pub", packetID: 8)]
        let report = fixture.broker.restore(snapshot)
        #expect(report.inboundQoS2 == 2)

        let sub = TestClient(fixture.broker)
        await sub.connectAccepted("sub")
        await sub.subscribe([("d/#", .exactlyOnce)])
        let pub = TestClient(fixture.broker, version: .v5)
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 3600
        guard case .connack(let connack)? = sentPackets(await pub.connect("pub", cleanStart: false, properties: properties)).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(connack.sessionPresent && connack.reasonCode == .success)

        // Its PUBREC was lost with the old process: the client sends it again, with DUP.
        #expect(pubrecIDs(sentPackets(await pub.publish("d/1", "routed before the restart", qos: .exactlyOnce, id: 7, dup: true))) == [7])
        #expect(sub.drainPublishes().isEmpty, "a retransmission of a stored exchange was routed again")
        #expect(
            sentPackets(await pub.send(.pubrel(MQTTAckPacket(packetIdentifier: 7))))
                == [.pubcomp(MQTTAckPacket(packetIdentifier: 7, reasonCode: .success))]
        )
        // Id 8 was released before the crash, but its row's deletion was lost: DUP 0 means a new message.
        await pub.publish("d/2", "new", qos: .exactlyOnce, id: 8)
        #expect(sub.drainPublishes().map(\.text) == ["new"])
        await fixture.finish()
        #expect(fixture.store.applied.contains(.deleteInboundQoS2(clientID: "pub", packetID: 7)))
    }
}

import Foundation
@testable import GatewayCore
import GatewayStorage
import Logging
import MQTTCodec
import NIOCore
import Synchronization
import Testing

/// `SQLBrokerStateStore` on SQLite and PostgreSQL (round trip of every kind of row), and a `Broker` restarted on the
/// same database file sees the state the previous one left.
@Suite("SQLBrokerStateStore", .timeLimit(.minutes(1)))
struct SQLBrokerStateStoreTests {
    /// Opens `path` (a fresh database of ``TestDatabase``), runs `body` with a store on it, and closes it.
    func withStore<T>(_ path: TestDatabase, _ body: (SQLBrokerStateStore) async throws -> T) async throws -> T {
        let database = try await path.openDatabase()
        do {
            let result = try await body(SQLBrokerStateStore(database: database))
            await database.close()
            return result
        } catch {
            await database.close()
            throw error
        }
    }

    func message(_ seq: Int64, client: String = "c1", state: StoredSessionMessage.State = .queued, packetID: UInt16? = nil) -> StoredSessionMessage {
        var properties = MQTTProperties()
        properties.contentType = "text/plain"
        properties.userProperties = [MQTTUserProperty(name: "k", value: "v\(seq)")]
        properties.messageExpiryInterval = 300
        return StoredSessionMessage(
            seq: seq, clientID: client, state: state, packetID: packetID, qos: .atLeastOnce, retain: seq % 2 == 0,
            topic: "t/\(seq)", payload: ByteBuffer(bytes: [0, 1, 2, UInt8(seq)]), messageQoS: .exactlyOnce,
            messageRetain: seq % 2 == 0, properties: StoredForm.properties(properties), publisherClientID: "pub",
            expiresAt: 1_900_000_000_000 + seq, subscriptionIdentifiers: seq == 2 ? [7, 9] : [],
            sharedGroup: seq == 3 ? "g" : nil, sharedFilter: seq == 3 ? "t/+" : nil
        )
    }

    @Test("Every kind of row round-trips; updates, deletes, retained clear and session delete apply", arguments: StorageBackend.available)
    func roundTrip(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            let session = StoredSessionRecord(clientID: "c1", expiryInterval: 3600, disconnectedAt: 1_700_000_000_123)
            let forever = StoredSessionRecord(clientID: "c2", expiryInterval: nil, disconnectedAt: nil)
            let plain = StoredSubscriptionRecord(
                clientID: "c1", key: "a/#",
                options: MQTTSubscription(topicFilter: "a/#", qos: .atLeastOnce, noLocal: true, retainAsPublished: true, retainHandling: .doNotSend),
                group: nil, subscriptionIdentifier: 42
            )
            let shared = StoredSubscriptionRecord(
                clientID: "c1", key: "$share/g/t/+",
                options: MQTTSubscription(topicFilter: "t/+", qos: .exactlyOnce, retainHandling: .sendIfNewSubscription),
                group: "g", subscriptionIdentifier: nil
            )
            var retainedProperties = MQTTProperties()
            retainedProperties.responseTopic = "reply"
            let retained = StoredRetainedMessage(
                topic: "r/1", payload: ByteBuffer(string: "on"), qos: .atLeastOnce,
                properties: StoredForm.properties(retainedProperties), publisherClientID: "pub", expiresAt: nil
            )
            let cleared = StoredRetainedMessage(topic: "r/2", payload: ByteBuffer(string: "x"), qos: .atMostOnce, properties: nil, publisherClientID: nil, expiresAt: 5)
            try await withStore(path) { store in
                try await store.apply([
                    .upsertSession(session), .upsertSession(forever), .upsertSubscription(plain), .upsertSubscription(shared),
                    .insertMessage(message(1)), .insertMessage(message(2, state: .awaitingPuback, packetID: 11)),
                    .insertMessage(message(3)), .insertMessage(message(4, client: "c2")),
                    .setRetained(retained), .setRetained(cleared),
                ])
            }
            // A new connection to the same file: what was committed is there.
            try await withStore(path) { store in
                let snapshot = try await store.load()
                #expect(snapshot.sessions == [session, forever])
                #expect(Set(snapshot.subscriptions) == [plain, shared])
                #expect(snapshot.messages == [message(1), message(2, state: .awaitingPuback, packetID: 11), message(3), message(4, client: "c2")])
                #expect(snapshot.retained == [retained, cleared])
                let decoded = try StoredForm.properties(snapshot.messages[0].properties)
                #expect(decoded.contentType == "text/plain")
                #expect(decoded.userProperties == [MQTTUserProperty(name: "k", value: "v1")])

                try await store.apply([
                    .updateMessage(seq: 1, state: .awaitingPubcomp, packetID: 12),
                    .deleteMessage(seq: 3),
                    .deleteSubscription(clientID: "c1", key: "a/#"),
                    .deleteRetained(topic: "r/2"),
                    .upsertSession(StoredSessionRecord(clientID: "c1", expiryInterval: 60, disconnectedAt: nil)),
                    .deleteSession(clientID: "c2"),
                ])
                let after = try await store.load()
                #expect(after.sessions == [StoredSessionRecord(clientID: "c1", expiryInterval: 60, disconnectedAt: nil)])
                #expect(after.subscriptions == [shared])
                #expect(after.messages.map(\.seq) == [1, 2])
                #expect(after.messages.first?.state == .awaitingPubcomp)
                #expect(after.messages.first?.packetID == 12)
                #expect(after.retained == [retained])
                let versions = try await store.database.query("SELECT version FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0["version"].int }.contains(3))
            }
        }
    }

    @Test("A failing batch commits nothing (one transaction)", arguments: StorageBackend.available)
    func batchIsAtomic(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            try await withStore(path) { store in
                await #expect(throws: (any Error).self) {
                    // The second insert reuses seq 1: the primary key fails it, and the first goes too.
                    try await store.apply([.insertMessage(message(1)), .upsertSession(StoredSessionRecord(clientID: "x", expiryInterval: 1, disconnectedAt: nil)), .insertMessage(message(1))])
                }
                let snapshot = try await store.load()
                #expect(snapshot.messages.isEmpty)
                #expect(snapshot.sessions.isEmpty)
            }
        }
    }

    // MARK: Broker restarts on the same database

    /// One broker life on the database at `path`: its journal writer runs during `body`, and is flushed
    /// (as on SIGTERM) when `body` returns, or abandoned (as on kill -9) when `crash` is set.
    func withBroker<T>(
        _ path: TestDatabase,
        crash: Bool = false,
        configure: (inout BrokerConfiguration) -> Void = { _ in },
        ackPersisted: Bool = false,
        _ body: (Broker, Broker.RestoreReport) async throws -> T
    ) async throws -> T {
        try await withStore(path) { store in
            let journal = StateJournal(store: store, logger: silentLogger)
            var configuration = BrokerConfiguration()
            configure(&configuration)
            let ingest: IngestQueue? =
                ackPersisted
                ? IngestQueue(configuration: { var c = IngestConfiguration(); c.topics = []; return c }(), store: FakeTelemetryStore(), logger: silentLogger)
                : nil
            let broker = Broker(configuration: configuration, ingest: ingest, journal: journal, logger: silentLogger)
            let report = try await broker.restore(from: store)
            let writer = Task { await journal.run() }
            let result = try await body(broker, report)
            if crash {
                // kill -9: nothing more reaches the database than what already committed.
                writer.cancel()
                await writer.value
            } else {
                journal.close()
                await writer.value
            }
            return result
        }
    }

    @Test("Restart: a persistent session, its subscriptions, queued messages and retained messages come back", arguments: StorageBackend.available)
    func restartRestoresOfflineSession(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            try await withBroker(path) { broker, report in
                #expect(report == Broker.RestoreReport())
                let sub = Client(broker)
                #expect(await sub.connect("keeper", cleanStart: false)?.sessionPresent == false)
                await sub.subscribe([MQTTSubscription(topicFilter: "a/#", qos: .atLeastOnce), MQTTSubscription(topicFilter: "$share/g/s/+", qos: .atLeastOnce)])
                sub.closed()
                let pub = Client(broker)
                _ = await pub.connect("pub")
                for i in 1...5 { await pub.publish("a/\(i)", "m\(i)", qos: .atLeastOnce, id: UInt16(i)) }
                await pub.publish("s/1", "shared", qos: .atLeastOnce, id: 6)
                await pub.publish("r/x", "kept", qos: .atLeastOnce, retain: true, id: 7)
                await pub.publish("r/y", "gone", qos: .atLeastOnce, retain: true, id: 8)
                await pub.publish("r/y", "", qos: .atLeastOnce, retain: true, id: 9)
            }
            try await withBroker(path) { broker, report in
                #expect(report.sessions == 1)
                #expect(report.subscriptions == 2)
                #expect(report.queuedMessages == 6)
                #expect(report.retainedMessages == 1)
                #expect(broker.subscriptionCount == 2)
                let sub = Client(broker)
                #expect(await sub.connect("keeper", cleanStart: false)?.sessionPresent == true)
                let got = sub.drainPublishes()
                #expect(got.map(\.text) == ["m1", "m2", "m3", "m4", "m5", "shared"])
                #expect(got.allSatisfy { !$0.dup && $0.qos == .atLeastOnce })
                for publish in got { await sub.send(.puback(MQTTAckPacket(packetIdentifier: publish.packetIdentifier!))) }
                // Routing works on the restored index.
                let pub = Client(broker)
                _ = await pub.connect("pub")
                await pub.publish("a/after", "live", qos: .atLeastOnce, id: 1)
                let live = sub.drainPublishes()
                #expect(live.map(\.text) == ["live"])
                for publish in live { await sub.send(.puback(MQTTAckPacket(packetIdentifier: publish.packetIdentifier!))) }
                let reader = Client(broker)
                _ = await reader.connect("reader")
                await reader.subscribe([MQTTSubscription(topicFilter: "r/#", qos: .atLeastOnce)])
                #expect(reader.drainPublishes().map { "\($0.topic)=\($0.text) retain=\($0.retain)" } == ["r/x=kept retain=true"])
                sub.closed()
            }
            // Everything above was acknowledged: the third life has the session but nothing queued.
            try await withBroker(path) { _, report in
                #expect(report.sessions == 1)
                #expect(report.queuedMessages == 0)
                #expect(report.inflightMessages == 0)
            }
        }
    }

    @Test("Crash: in-flight messages come back with their packet ids and are resent with DUP", arguments: StorageBackend.available)
    func restartRedeliversInflight(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            let ids = try await withBroker(path, crash: true, ackPersisted: true) { broker, _ in
                let sub = Client(broker)
                _ = await sub.connect("inflight", cleanStart: false)
                await sub.subscribe([MQTTSubscription(topicFilter: "q/#", qos: .exactlyOnce)])
                let pub = Client(broker)
                _ = await pub.connect("pub")
                var acks = 0
                for i in 1...3 {
                    // ack: persisted: the PUBACK leaves once the copy for the session committed, which
                    // the journal writer does shortly after (never synchronously).
                    let actions = await pub.publish("q/\(i)", "m\(i)", qos: .atLeastOnce, id: UInt16(i))
                    acks += actions.count
                }
                while acks < 3 {
                    let seen = pub.handle.wakes
                    acks += pub.connection.takeReadyAcknowledgements().count
                    if acks < 3 { await pub.handle.waitForWake(seen + 1) }
                }
                #expect(acks == 3)
                let got = sub.drainPublishes()
                #expect(got.map(\.text) == ["m1", "m2", "m3"])
                // Only the first is acknowledged; the connection then dies with the process.
                await sub.send(.puback(MQTTAckPacket(packetIdentifier: got[0].packetIdentifier!)))
                // Let the journal write what happened so far (as a running gateway would).
                while !broker.journal!.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                return got.dropFirst().map { $0.packetIdentifier! }
            }
            try await withBroker(path) { broker, report in
                #expect(report.inflightMessages == 2)
                #expect(report.queuedMessages == 0)
                let sub = Client(broker)
                #expect(await sub.connect("inflight", cleanStart: false)?.sessionPresent == true)
                let again = sub.drainPublishes()
                #expect(again.map(\.text) == ["m2", "m3"])
                let againIDs = again.compactMap(\.packetIdentifier)
                #expect(againIDs == ids)
                let dups = again.map(\.dup)
                #expect(dups == [true, true])
                sub.closed()
            }
        }
    }

    @Test("Crash: a QoS 2 delivery awaiting PUBCOMP comes back as PUBREL with its packet id", arguments: StorageBackend.available)
    func restartResendsPubrel(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            let id = try await withBroker(path, crash: true) { broker, _ in
                let sub = Client(broker)
                _ = await sub.connect("qos2", cleanStart: false)
                await sub.subscribe([MQTTSubscription(topicFilter: "e/#", qos: .exactlyOnce)])
                let pub = Client(broker)
                _ = await pub.connect("pub")
                await pub.publish("e/1", "once", qos: .exactlyOnce, id: 1)
                let got = sub.drainPublishes()
                #expect(got.map(\.text) == ["once"])
                let id = got[0].packetIdentifier!
                let actions = await sub.send(.pubrec(MQTTAckPacket(packetIdentifier: id)))
                var pubrels: [UInt16] = []
                for case .send(.pubrel(let ack)) in actions { pubrels.append(ack.packetIdentifier) }
                #expect(pubrels == [id])
                while !broker.journal!.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                return id
            }
            try await withBroker(path) { broker, report in
                #expect(report.inflightMessages == 1)
                let sub = Client(broker)
                #expect(await sub.connect("qos2", cleanStart: false)?.sessionPresent == true)
                var resent: [MQTTPacket] = []
                while let packet = sub.connection.nextOutboundPacket() { resent.append(packet) }
                guard resent.count == 1, case .pubrel(let ack) = resent[0] else {
                    Issue.record("expected one PUBREL, got \(resent)")
                    return
                }
                #expect(ack.packetIdentifier == id)
                await sub.send(.pubcomp(MQTTAckPacket(packetIdentifier: id)))
                sub.closed()
            }
            try await withBroker(path) { _, report in
                #expect(report.inflightMessages == 0)
                #expect(report.queuedMessages == 0)
            }
        }
    }

    @Test("Load: expired sessions are deleted, queues over the caps are cut and counted", arguments: StorageBackend.available)
    func loadAppliesExpiryAndCaps(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            let now = WallClock.millisecondsSinceEpoch()
            try await withStore(path) { store in
                var operations: [BrokerStateOperation] = [
                    .upsertSession(StoredSessionRecord(clientID: "old", expiryInterval: 5, disconnectedAt: now - 10_000)),
                    .upsertSession(StoredSessionRecord(clientID: "full", expiryInterval: 3600, disconnectedAt: now - 1_000)),
                    .insertMessage(message(1, client: "old")),
                ]
                for seq in Int64(10)..<Int64(20) { operations.append(.insertMessage(message(seq, client: "full"))) }
                try await store.apply(operations)
            }
            try await withBroker(path, configure: { $0.maxQueuedMessages = 4 }) { broker, report in
                #expect(report.expiredSessions == 1)
                #expect(report.sessions == 1)
                #expect(report.queuedMessages == 4)
                #expect(report.droppedMessages == 6)
                #expect(broker.session(clientID: "old") == nil)
                let sub = Client(broker)
                #expect(await sub.connect("full", cleanStart: false)?.sessionPresent == true)
                #expect(sub.drainPublishes().map(\.topic) == ["t/10", "t/11", "t/12", "t/13"])
            }
            try await withStore(path) { store in
                let snapshot = try await store.load()
                #expect(snapshot.sessions.map(\.clientID) == ["full"])
                #expect(snapshot.messages.allSatisfy { $0.clientID == "full" })
            }
        }
    }

    @Test("Clean start and session expiry remove the stored session", arguments: StorageBackend.available)
    func cleanStartRemovesRows(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            try await withBroker(path) { broker, _ in
                let a = Client(broker)
                _ = await a.connect("gone", cleanStart: false)
                await a.subscribe([MQTTSubscription(topicFilter: "x", qos: .atLeastOnce)])
                a.closed()
                let b = Client(broker)
                _ = await b.connect("gone", cleanStart: true)
                b.closed()
            }
            try await withBroker(path) { broker, report in
                #expect(report.sessions == 0)
                #expect(broker.sessionCount == 0)
            }
        }
    }
}

/// A client driven without sockets (the transport's role played by the test).
final class Client {
    let broker: Broker
    let handle = WakeHandle()
    let connection: ClientConnection

    init(_ broker: Broker) {
        self.broker = broker
        self.connection = ClientConnection(broker: broker, handle: handle, peer: nil, logger: silentLogger)
    }

    func connect(_ clientID: String, cleanStart: Bool = true, username: String? = nil) async -> MQTTConnAckPacket? {
        let actions = await send(
            .connect(MQTTConnectPacket(version: .v3_1_1, cleanStart: cleanStart, keepAlive: 60, clientIdentifier: clientID, username: username))
        )
        for case .send(.connack(let connack)) in actions { return connack }
        return nil
    }

    @discardableResult
    func send(_ packet: MQTTPacket) async -> [ClientConnection.Action] {
        await connection.handle(packet) + connection.takeReadyAcknowledgements().map { .send($0) }
    }

    func subscribe(_ subscriptions: [MQTTSubscription]) async {
        await send(.subscribe(MQTTSubscribePacket(packetIdentifier: 1, subscriptions: subscriptions)))
    }

    @discardableResult
    func publish(_ topic: String, _ payload: String, qos: MQTTQoS, retain: Bool = false, id: UInt16) async -> [ClientConnection.Action] {
        await send(.publish(MQTTPublishPacket(topic: topic, payload: ByteBuffer(string: payload), qos: qos, retain: retain, packetIdentifier: id)))
    }

    func drainPublishes() -> [MQTTPublishPacket] {
        var result: [MQTTPublishPacket] = []
        while let packet = connection.nextOutboundPacket() {
            if case .publish(let publish) = packet { result.append(publish) }
        }
        return result
    }

    func closed() {
        connection.connectionClosed(cause: .connectionLost)
    }
}

/// Counts `deliveryAvailable()` wake-ups and lets a test wait for them.
final class WakeHandle: ConnectionHandle {
    private let state = Mutex<(wakes: Int, waiters: [(Int, CheckedContinuation<Void, Never>)])>((0, []))

    func close(reason: ServerDisconnectReason) {}

    func setReadPaused(_ paused: Bool) {}

    func deliveryAvailable() {
        let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.wakes += 1
            let wakes = state.wakes
            let ready = state.waiters.filter { $0.0 <= wakes }.map(\.1)
            state.waiters.removeAll { $0.0 <= wakes }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }

    var wakes: Int { state.withLock { $0.wakes } }

    func waitForWake(_ count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.wakes >= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }
}

extension MQTTPublishPacket {
    var text: String { String(buffer: payload) }
}

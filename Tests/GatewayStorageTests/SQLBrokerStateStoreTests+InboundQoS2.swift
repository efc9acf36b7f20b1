@testable import GatewayCore
import GatewayStorage
import MQTTCodec
import NIOCore
import Testing

extension SQLBrokerStateStoreTests {
    @Test("Inbound QoS 2 ids round-trip (migration v5): a repeated insert is harmless, delete and session delete remove them", arguments: StorageBackend.available)
    func inboundQoS2RoundTrip(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            let session = StoredSessionRecord(clientID: "c1", expiryInterval: nil, disconnectedAt: nil)
            let other = StoredSessionRecord(clientID: "c2", expiryInterval: 60, disconnectedAt: nil)
            try await withStore(path) { store in
                try await store.apply([
                    .upsertSession(session), .upsertSession(other),
                    .insertInboundQoS2(clientID: "c1", packetID: 7), .insertInboundQoS2(clientID: "c1", packetID: 65535),
                    .insertInboundQoS2(clientID: "c1", packetID: 7), .insertInboundQoS2(clientID: "c2", packetID: 7),
                ])
            }
            try await withStore(path) { store in
                #expect(
                    try await store.load().inboundQoS2 == [
                        StoredInboundQoS2(clientID: "c1", packetID: 7), StoredInboundQoS2(clientID: "c1", packetID: 65535),
                        StoredInboundQoS2(clientID: "c2", packetID: 7),
                    ]
                )
                try await store.apply([.deleteInboundQoS2(clientID: "c1", packetID: 7), .deleteSession(clientID: "c2")])
                #expect(try await store.load().inboundQoS2 == [StoredInboundQoS2(clientID: "c1", packetID: 65535)])
                let versions = try await store.database.query("SELECT version FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0["version"].int }.contains(5))
            }
        }
    }

    @Test("Restart: an inbound QoS 2 exchange stored before the stop comes back; its retransmission is not routed again", arguments: StorageBackend.available)
    func restartRestoresInboundQoS2(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { path in
            try await withStore(path) { store in
                try await store.apply([
                    .upsertSession(StoredSessionRecord(clientID: "pub", expiryInterval: nil, disconnectedAt: 1_700_000_000_000)),
                    .insertInboundQoS2(clientID: "pub", packetID: 9),
                ])
            }
            try await withBroker(path) { broker, report in
                #expect(report.inboundQoS2 == 1)
                let sub = Client(broker)
                _ = await sub.connect("sub")
                await sub.subscribe([MQTTSubscription(topicFilter: "t/#", qos: .exactlyOnce)])
                let pub = Client(broker)
                #expect(await pub.connect("pub", cleanStart: false)?.sessionPresent == true)
                let retransmission = MQTTPublishPacket(
                    topic: "t/1", payload: ByteBuffer(string: "again"), qos: .exactlyOnce, retain: false, dup: true, packetIdentifier: 9
                )
                #expect(Self.packets(await pub.send(.publish(retransmission))) == [.pubrec(MQTTAckPacket(packetIdentifier: 9))])
                #expect(sub.drainPublishes().isEmpty)
                #expect(Self.packets(await pub.send(.pubrel(MQTTAckPacket(packetIdentifier: 9)))) == [.pubcomp(MQTTAckPacket(packetIdentifier: 9))])
            }
            try await withStore(path) { store in
                let loaded = try await store.load()
                #expect(loaded.inboundQoS2.isEmpty, "PUBREL must delete the stored exchange")
            }
        }
    }

    private static func packets(_ actions: [ClientConnection.Action]) -> [MQTTPacket] {
        actions.compactMap { action in
            if case .send(let packet) = action { return packet }
            return nil
        }
    }
}

import GatewayCore
@testable import GatewayStorage
import MQTTCodec
import NIOCore
import Testing

/// Each backend's bulk telemetry path (``SQLDatabase/insertTelemetry(_:)``: SQLite's prepared-statement
/// writer, PostgreSQL's array `unnest`) stores every value exactly as given, in order, all or nothing.
@Suite("Telemetry bulk insert", .timeLimit(.minutes(1)))
struct TelemetryInsertTests {
    /// Rows that exercise every column's edge: NULL and present properties, an empty payload, a payload
    /// of all 256 byte values, text that is not ASCII (and the characters COPY's text format escapes),
    /// every QoS, both retain flags, negative and large timestamps.
    static func edgeRecords() -> [TelemetryRecord] {
        let allBytes = ByteBuffer(bytes: (0...255).map { UInt8($0) })
        let properties = ByteBuffer(bytes: [0x05, 0x01, 0x01, 0x23, 0x00, 0x07])
        return [
            TelemetryRecord(
                receivedAt: 1_700_000_000_000, clientID: "c1", topic: "plain/topic", qos: .atMostOnce, retain: false,
                payload: ByteBuffer(string: "hello"), properties: nil
            ),
            TelemetryRecord(
                receivedAt: 1_700_000_000_001, clientID: "c1", topic: "empty/payload", qos: .atLeastOnce, retain: true,
                payload: ByteBuffer(), properties: properties
            ),
            TelemetryRecord(
                receivedAt: 1_700_000_000_002, clientID: "gerät-ü", topic: "Zürich/温度/🌡", qos: .exactlyOnce, retain: false,
                payload: allBytes, properties: allBytes
            ),
            TelemetryRecord(
                receivedAt: -1, clientID: "tab\there", topic: "back\\slash/new\nline/cr\r", qos: .atLeastOnce, retain: true,
                payload: ByteBuffer(string: "\\N"), properties: nil
            ),
            TelemetryRecord(
                receivedAt: Int64.max, clientID: String(repeating: "é", count: 300), topic: "long/" + String(repeating: "x", count: 4000),
                qos: .atMostOnce, retain: false, payload: ByteBuffer(bytes: [0x00]), properties: ByteBuffer(bytes: [0x00])
            ),
        ]
    }

    @Test("A batch with NULL and present properties, empty and binary payloads, non-ASCII text reads back exactly", arguments: StorageBackend.available)
    func edgeValuesRoundTrip(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                let records = Self.edgeRecords()
                try await store.insert(records)
                let stored = try await store.messages(topic: nil, since: nil, afterID: nil, limit: 100)
                #expect(stored.map(\.record) == records)
                #expect(stored.map(\.id) == stored.map(\.id).sorted())
                // NULL stays NULL (not an empty value), and an empty payload stays empty (not NULL).
                let nulls = try await store.database.query(
                    "SELECT properties IS NULL AS missing, payload IS NULL AS payload_missing FROM messages ORDER BY id"
                )
                #expect(nulls.map { $0["missing"].bool } == records.map { $0.properties == nil })
                #expect(nulls.allSatisfy { $0["payload_missing"].bool == false })
            }
        }
    }

    @Test("A batch of 2,000 rows (storage.batch.max_rows) is stored in order, in one call", arguments: StorageBackend.available)
    func fullBatchInOrder(backend: StorageBackend) async throws {
        try await TestDatabase.withFresh(backend) { database in
            try await database.withStore { store in
                let records = (0..<2000).map { index in
                    var row = record(index, clientID: "c\(index % 7)", payloadBytes: index % 300)
                    row.properties = index % 2 == 0 ? nil : ByteBuffer(bytes: [UInt8(index % 256)])
                    return row
                }
                try await store.insert(records)
                let stored = try await store.messages(topic: nil, since: nil, afterID: nil, limit: 5000)
                #expect(stored.count == records.count)
                #expect(stored.map(\.record) == records)
            }
        }
    }

    @Test(
        "PostgreSQL: a batch the server refuses stores none of its rows, throws, and the next batch is stored",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func refusedBatchIsAllOrNothing() async throws {
        try await TestDatabase.withFresh(.postgres) { database in
            try await database.withStore { store in
                // PostgreSQL's text cannot hold U+0000: the server rejects the whole statement.
                var records = (0..<50).map { record($0) }
                records[37].topic = "bad/\u{0}/topic"
                await #expect(throws: (any Error).self) { try await store.insert(records) }
                let count = try await store.database.query("SELECT count(*) AS n FROM messages")
                #expect(count.first?["n"].int == 0)

                records[37].topic = "good/topic"
                try await store.insert(records)
                let stored = try await store.messages(topic: nil, since: nil, afterID: nil, limit: 100)
                #expect(stored.map(\.record) == records)
            }
        }
    }
}

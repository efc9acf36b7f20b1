import GatewayCore
import MQTTCodec
import NIOCore
import PostgresNIO

/// One column of a telemetry batch bound as a one-dimensional PostgreSQL array in the binary format,
/// written straight from the records into the statement's bind buffer.
///
/// postgres-nio's own `[Int64]`, `[String]` and `[ByteBuffer]` encoders would need seven intermediate
/// Swift arrays per batch, and they cannot express NULL elements (`Optional` is not
/// `PostgresArrayEncodable`), which `properties` needs. The array format (`array_recv` on the server) is:
/// dimensions, a has-NULLs flag, the element type's OID, then per dimension its length and lower bound,
/// then each element as an Int32 byte length (-1 for NULL) followed by its binary value.
struct TelemetryArrayColumn: PostgresDynamicTypeEncodable {
    /// The `messages` columns, in the order of ``TelemetryArrayColumn/insertSQL``.
    enum Column: CaseIterable {
        case receivedAt, clientID, topic, qos, retain, payload, properties
    }

    /// Every row of the batch in one statement: each `$N` is an array holding one column of the batch,
    /// and `unnest` of several arrays zips them back into rows, in array order.
    static let insertSQL = """
        INSERT INTO messages (received_at, client_id, topic, qos, retain, payload, properties) \
        SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int2[], $5::int2[], $6::bytea[], $7::bytea[])
        """

    let records: [TelemetryRecord]
    let column: Column

    /// The seven binds of ``insertSQL`` for `records`.
    static func bindings(for records: [TelemetryRecord]) -> PostgresBindings {
        var bindings = PostgresBindings(capacity: Column.allCases.count)
        for column in Column.allCases {
            bindings.append(TelemetryArrayColumn(records: records, column: column))
        }
        return bindings
    }

    var psqlType: PostgresDataType {
        switch column {
        case .receivedAt: .int8Array
        case .clientID, .topic: .textArray
        case .qos, .retain: .int2Array
        case .payload, .properties: .byteaArray
        }
    }

    var psqlFormat: PostgresFormat { .binary }

    private var elementType: PostgresDataType {
        switch column {
        case .receivedAt: .int8
        case .clientID, .topic: .text
        case .qos, .retain: .int2
        case .payload, .properties: .bytea
        }
    }

    func encode<JSONEncoder: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        guard !records.isEmpty else {
            // Zero dimensions: the empty array.
            buffer.writeInteger(0, as: Int32.self)
            buffer.writeInteger(0, as: Int32.self)
            buffer.writeInteger(elementType.rawValue)
            return
        }
        // Grow the bind buffer once per column rather than by doubling while the payloads go in.
        buffer.reserveCapacity(minimumWritableBytes: 20 + 4 * records.count + valueBytes)
        let hasNulls = column == .properties && records.contains { $0.properties == nil }
        buffer.writeInteger(1, as: Int32.self)
        buffer.writeInteger(hasNulls ? 1 : 0, as: Int32.self)
        buffer.writeInteger(elementType.rawValue)
        buffer.writeInteger(Int32(records.count))
        buffer.writeInteger(1, as: Int32.self)
        switch column {
        case .receivedAt:
            for record in records {
                buffer.writeInteger(8, as: Int32.self)
                buffer.writeInteger(record.receivedAt)
            }
        case .clientID:
            for record in records { Self.writeText(record.clientID, into: &buffer) }
        case .topic:
            for record in records { Self.writeText(record.topic, into: &buffer) }
        case .qos:
            for record in records {
                buffer.writeInteger(2, as: Int32.self)
                buffer.writeInteger(Int16(record.qos.rawValue))
            }
        case .retain:
            for record in records {
                buffer.writeInteger(2, as: Int32.self)
                buffer.writeInteger(Int16(record.retain ? 1 : 0))
            }
        case .payload:
            for record in records { Self.writeBytes(record.payload, into: &buffer) }
        case .properties:
            for record in records {
                if let properties = record.properties {
                    Self.writeBytes(properties, into: &buffer)
                } else {
                    buffer.writeInteger(-1, as: Int32.self)
                }
            }
        }
    }

    /// The bytes of this column's values (lengths excluded).
    private var valueBytes: Int {
        switch column {
        case .receivedAt: 8 * records.count
        case .qos, .retain: 2 * records.count
        case .clientID: records.reduce(0) { $0 + $1.clientID.utf8.count }
        case .topic: records.reduce(0) { $0 + $1.topic.utf8.count }
        case .payload: records.reduce(0) { $0 + $1.payload.readableBytes }
        case .properties: records.reduce(0) { $0 + ($1.properties?.readableBytes ?? 0) }
        }
    }

    /// A text element: its UTF-8 bytes (the session's client_encoding is UTF8), copied from the string's
    /// own storage.
    private static func writeText(_ text: String, into buffer: inout ByteBuffer) {
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(0, as: Int32.self)
        let written = buffer.writeString(text)
        buffer.setInteger(Int32(written), at: lengthIndex)
    }

    private static func writeBytes(_ bytes: ByteBuffer, into buffer: inout ByteBuffer) {
        buffer.writeInteger(Int32(bytes.readableBytes))
        buffer.writeImmutableBuffer(bytes)
    }
}

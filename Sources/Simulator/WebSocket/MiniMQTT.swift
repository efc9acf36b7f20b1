/// The few MQTT packets a simulated WebSocket device needs, encoded and decoded here rather than by iotgw's codec so
/// that a simulation stays an independent check of the gateway. Client side only: CONNECT, SUBSCRIBE, PUBLISH and
/// its acknowledgements, PINGREQ and DISCONNECT out; CONNACK, SUBACK, PUBLISH, acknowledgements and PINGRESP in.
enum MiniMQTT {
    /// A packet received from the server.
    enum Incoming: Equatable {
        /// CONNACK with its return code (3.1.1) or reason code (5); 0 is success.
        case connack(code: UInt8)
        /// SUBACK with one granted QoS or failure code per filter.
        case suback(packetID: UInt16, codes: [UInt8])
        /// PUBLISH.
        case publish(topic: String, payload: [UInt8], qos: Int, retain: Bool, duplicate: Bool, packetID: UInt16?)
        case puback(packetID: UInt16)
        case pubrec(packetID: UInt16)
        case pubrel(packetID: UInt16)
        case pubcomp(packetID: UInt16)
        case pingresp
        /// DISCONNECT from the server (MQTT 5), with its reason code.
        case disconnect(reason: UInt8)
    }

    /// A malformed or unsupported packet; the connection cannot continue.
    struct ProtocolError: Error, Equatable {
        var reason: String
    }

    // MARK: Encoding

    /// CONNECT with a clean session / clean start.
    static func connect(clientID: String, keepAlive: Int, version: Scenario.ProtocolVersion, username: String?, password: String?) -> [UInt8] {
        var body: [UInt8] = []
        appendString("MQTT", to: &body)
        body.append(version == .v5 ? 5 : 4)
        var flags: UInt8 = 0x02
        if username != nil { flags |= 0x80 }
        if password != nil { flags |= 0x40 }
        body.append(flags)
        appendUInt16(UInt16(clamping: keepAlive), to: &body)
        if version == .v5 { body.append(0) }  // no properties
        appendString(clientID, to: &body)
        if let username { appendString(username, to: &body) }
        if let password { appendString(password, to: &body) }
        return packet(0x10, body)
    }

    /// SUBSCRIBE to one filter.
    static func subscribe(packetID: UInt16, filter: String, qos: Int, version: Scenario.ProtocolVersion) -> [UInt8] {
        var body: [UInt8] = []
        appendUInt16(packetID, to: &body)
        if version == .v5 { body.append(0) }
        appendString(filter, to: &body)
        body.append(UInt8(qos & 0x03))
        return packet(0x82, body)
    }

    /// PUBLISH; `packetID` is required for QoS 1 and 2.
    static func publish(topic: String, payload: [UInt8], qos: Int, retain: Bool, packetID: UInt16?, version: Scenario.ProtocolVersion) -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(topic.utf8.count + payload.count + 8)
        appendString(topic, to: &body)
        if qos > 0 { appendUInt16(packetID ?? 0, to: &body) }
        if version == .v5 { body.append(0) }
        body.append(contentsOf: payload)
        return packet(0x30 | UInt8(qos & 0x03) << 1 | (retain ? 1 : 0), body)
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP: the fixed header and a packet id (reason code 0 is implied in MQTT 5).
    static func acknowledgement(_ type: UInt8, packetID: UInt16) -> [UInt8] {
        [type, 2, UInt8(packetID >> 8), UInt8(packetID & 0xff)]
    }
    static let pubackType: UInt8 = 0x40
    static let pubrecType: UInt8 = 0x50
    static let pubrelType: UInt8 = 0x62
    static let pubcompType: UInt8 = 0x70

    /// PINGREQ.
    static let pingreq: [UInt8] = [0xC0, 0x00]
    /// DISCONNECT (normal disconnection in both versions).
    static let disconnect: [UInt8] = [0xE0, 0x00]

    private static func packet(_ header: UInt8, _ body: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = [header]
        var length = body.count
        repeat {
            var byte = UInt8(length & 0x7f)
            length >>= 7
            if length > 0 { byte |= 0x80 }
            bytes.append(byte)
        } while length > 0
        bytes.append(contentsOf: body)
        return bytes
    }

    private static func appendUInt16(_ value: UInt16, to bytes: inout [UInt8]) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(value & 0xff))
    }

    private static func appendString(_ string: String, to bytes: inout [UInt8]) {
        let utf8 = Array(string.utf8)
        appendUInt16(UInt16(clamping: utf8.count), to: &bytes)
        bytes.append(contentsOf: utf8.prefix(65535))
    }

    // MARK: Decoding

    /// Splits a byte stream into packets, whatever the WebSocket frame boundaries were.
    struct Decoder {
        private var buffer: [UInt8] = []
        private var offset = 0
        private let version: Scenario.ProtocolVersion
        /// Packets larger than this are refused rather than buffered. Default 16 MiB.
        private let maximumPacketSize: Int

        init(version: Scenario.ProtocolVersion, maximumPacketSize: Int = 16 << 20) {
            self.version = version
            self.maximumPacketSize = maximumPacketSize
        }

        /// Appends received bytes.
        mutating func feed(_ bytes: UnsafeRawBufferPointer) {
            if offset > 0 && offset == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                offset = 0
            }
            buffer.append(contentsOf: bytes)
        }

        /// Returns the next complete packet, or `nil` when more bytes are needed.
        mutating func next() throws(ProtocolError) -> Incoming? {
            let available = buffer.count - offset
            guard available >= 2 else { return nil }
            var length = 0
            var multiplier = 1
            var index = offset + 1
            while true {
                guard index < buffer.count else { return nil }
                let byte = buffer[index]
                length += Int(byte & 0x7f) * multiplier
                index += 1
                if byte & 0x80 == 0 { break }
                multiplier *= 128
                guard index - offset <= 4 else { throw ProtocolError(reason: "remaining length longer than 4 bytes") }
            }
            guard length <= maximumPacketSize else { throw ProtocolError(reason: "packet of \(length) bytes exceeds the limit") }
            guard buffer.count - index >= length else { return nil }
            let header = buffer[offset]
            let body = Array(buffer[index..<(index + length)])
            offset = index + length
            if offset > 65536 {
                buffer.removeFirst(offset)
                offset = 0
            }
            return try parse(header: header, body: body)
        }

        private func parse(header: UInt8, body: [UInt8]) throws(ProtocolError) -> Incoming {
            var reader = Reader(bytes: body)
            switch header >> 4 {
            case 2:
                _ = try reader.byte()  // session present
                return .connack(code: try reader.byte())
            case 3:
                let qos = Int(header >> 1 & 0x03)
                guard qos < 3 else { throw ProtocolError(reason: "PUBLISH with QoS 3") }
                let topic = try reader.string()
                let packetID = qos > 0 ? try reader.uint16() : nil
                if version == .v5 { try reader.skipProperties() }
                return .publish(
                    topic: topic, payload: reader.rest(), qos: qos, retain: header & 0x01 != 0,
                    duplicate: header & 0x08 != 0, packetID: packetID
                )
            case 4: return .puback(packetID: try reader.uint16())
            case 5: return .pubrec(packetID: try reader.uint16())
            case 6: return .pubrel(packetID: try reader.uint16())
            case 7: return .pubcomp(packetID: try reader.uint16())
            case 9:
                let packetID = try reader.uint16()
                if version == .v5 { try reader.skipProperties() }
                return .suback(packetID: packetID, codes: reader.rest())
            case 13: return .pingresp
            case 14: return .disconnect(reason: body.first ?? 0)
            default: throw ProtocolError(reason: "unexpected packet type \(header >> 4) from server")
            }
        }
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0

        mutating func byte() throws(ProtocolError) -> UInt8 {
            guard index < bytes.count else { throw ProtocolError(reason: "packet too short") }
            defer { index += 1 }
            return bytes[index]
        }

        mutating func uint16() throws(ProtocolError) -> UInt16 {
            UInt16(try byte()) << 8 | UInt16(try byte())
        }

        mutating func string() throws(ProtocolError) -> String {
            let length = Int(try uint16())
            guard index + length <= bytes.count else { throw ProtocolError(reason: "string runs past the packet") }
            defer { index += length }
            return String(decoding: bytes[index..<(index + length)], as: UTF8.self)
        }

        mutating func skipProperties() throws(ProtocolError) {
            var length = 0
            var multiplier = 1
            for _ in 0..<4 {
                let byte = try byte()
                length += Int(byte & 0x7f) * multiplier
                if byte & 0x80 == 0 {
                    guard index + length <= bytes.count else { throw ProtocolError(reason: "properties run past the packet") }
                    index += length
                    return
                }
                multiplier *= 128
            }
            throw ProtocolError(reason: "property length longer than 4 bytes")
        }

        func rest() -> [UInt8] { Array(bytes[index...]) }
    }
}

/// The measurement fields a simulated message carries: who sent it, its sequence number and when.
struct Probe: Sendable, Equatable {
    /// The publishing client's index in the simulation.
    var publisher: Int
    /// The publisher's sequence number, from 0 without gaps.
    var sequence: UInt64
    /// The send time on ``MonotonicClock``, in nanoseconds.
    var timestamp: UInt64
}

/// Writes and finds the probe fields inside JSON payloads.
///
/// Payloads are JSON objects so the same bytes travel unchanged over MQTT and through the JSON WebSocket API,
/// where the gateway may re-serialize them. The reader therefore does not assume key order or spacing: it looks
/// for each key (`"sim_pub"`, `"sim_seq"`, `"sim_ts"`) independently and skips quotes, escapes, spaces and the colon
/// before the digits, which also finds the fields when a payload arrives as an escaped JSON string.
enum ProbeCodec {
    /// The smallest `payload.size` a scenario may ask for: room for the three fields with realistic numbers.
    static let minimumSize = 64

    private static let publisherKey = Array("\"sim_pub\"".utf8)
    private static let sequenceKey = Array("\"sim_seq\"".utf8)
    private static let timestampKey = Array("\"sim_ts\"".utf8)
    private static let requestKey = Array("\"sim_req\"".utf8)

    /// Appends the probe fields as JSON members (without braces): `"sim_pub":1,"sim_seq":2,"sim_ts":3`.
    static func appendFields(_ probe: Probe, to buffer: inout [UInt8]) {
        buffer.append(contentsOf: publisherKey)
        buffer.append(UInt8(ascii: ":"))
        appendDecimal(UInt64(probe.publisher), to: &buffer)
        buffer.append(UInt8(ascii: ","))
        buffer.append(contentsOf: sequenceKey)
        buffer.append(UInt8(ascii: ":"))
        appendDecimal(probe.sequence, to: &buffer)
        buffer.append(UInt8(ascii: ","))
        buffer.append(contentsOf: timestampKey)
        buffer.append(UInt8(ascii: ":"))
        appendDecimal(probe.timestamp, to: &buffer)
    }

    /// Replaces `buffer` with a JSON object of exactly `size` bytes (or the bare fields if they are longer).
    static func encodeSized(_ probe: Probe, size: Int, into buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        buffer.append(UInt8(ascii: "{"))
        appendFields(probe, to: &buffer)
        // `,"pad":""` costs 9 bytes plus the closing brace; below that, pad with JSON whitespace instead.
        let remaining = size - buffer.count - 1
        if remaining >= 9 {
            buffer.append(contentsOf: Array(",\"pad\":\"".utf8))
            buffer.append(contentsOf: repeatElement(UInt8(ascii: "x"), count: remaining - 9))
            buffer.append(UInt8(ascii: "\""))
        } else if remaining > 0 {
            buffer.append(contentsOf: repeatElement(UInt8(ascii: " "), count: remaining))
        }
        buffer.append(UInt8(ascii: "}"))
    }

    /// Replaces `buffer` with a request payload: `{"sim_req":N,"sim_ts":T}`.
    static func encodeRequest(id: UInt64, timestamp: UInt64, into buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        buffer.append(UInt8(ascii: "{"))
        buffer.append(contentsOf: requestKey)
        buffer.append(UInt8(ascii: ":"))
        appendDecimal(id, to: &buffer)
        buffer.append(UInt8(ascii: ","))
        buffer.append(contentsOf: timestampKey)
        buffer.append(UInt8(ascii: ":"))
        appendDecimal(timestamp, to: &buffer)
        buffer.append(UInt8(ascii: "}"))
    }

    /// Finds the probe fields in a payload, or returns `nil` when one is missing.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> Probe? {
        guard let publisher = value(for: publisherKey, in: bytes),
            let sequence = value(for: sequenceKey, in: bytes),
            let timestamp = value(for: timestampKey, in: bytes),
            publisher <= UInt64(Int.max)
        else { return nil }
        return Probe(publisher: Int(publisher), sequence: sequence, timestamp: timestamp)
    }

    /// Finds a request's id and timestamp, or returns `nil` when the payload is not a request.
    static func decodeRequest(_ bytes: UnsafeRawBufferPointer) -> (id: UInt64, timestamp: UInt64)? {
        guard let id = value(for: requestKey, in: bytes), let timestamp = value(for: timestampKey, in: bytes) else { return nil }
        return (id, timestamp)
    }

    /// Convenience for byte arrays.
    static func decode(_ bytes: [UInt8]) -> Probe? {
        bytes.withUnsafeBytes { decode($0) }
    }

    /// Convenience for byte arrays.
    static func decodeRequest(_ bytes: [UInt8]) -> (id: UInt64, timestamp: UInt64)? {
        bytes.withUnsafeBytes { decodeRequest($0) }
    }

    /// Reads the unsigned integer after `key`, tolerating an escaped or re-serialized key.
    private static func value(for key: [UInt8], in bytes: UnsafeRawBufferPointer) -> UInt64? {
        // Match the key without its quotes so `\"sim_pub\"` (an escaped string) matches too.
        let name = key[1..<(key.count - 1)]
        let count = bytes.count
        guard count >= name.count else { return nil }
        var index = 0
        outer: while index <= count - name.count {
            for (offset, byte) in name.enumerated() where bytes[index + offset] != byte {
                index += 1
                continue outer
            }
            var cursor = index + name.count
            // Only a key is followed by `"` (or `\"`) then `:`; anything else is the same text inside a value.
            var sawColon = false
            while cursor < count {
                let byte = bytes[cursor]
                if byte == UInt8(ascii: ":") {
                    sawColon = true
                } else if byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\") && byte != UInt8(ascii: " ") && byte != UInt8(ascii: "\t") {
                    break
                }
                cursor += 1
            }
            if sawColon, cursor < count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[cursor]) {
                var result: UInt64 = 0
                while cursor < count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[cursor]) {
                    let (times, overflow1) = result.multipliedReportingOverflow(by: 10)
                    let (sum, overflow2) = times.addingReportingOverflow(UInt64(bytes[cursor] - UInt8(ascii: "0")))
                    if overflow1 || overflow2 { return nil }
                    result = sum
                    cursor += 1
                }
                return result
            }
            index += 1
        }
        return nil
    }

    /// Appends the decimal digits of `value` without going through `String`.
    static func appendDecimal(_ value: UInt64, to buffer: inout [UInt8]) {
        if value == 0 {
            buffer.append(UInt8(ascii: "0"))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { raw in
            while rest > 0 {
                raw[count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            }
            for index in stride(from: count - 1, through: 0, by: -1) { buffer.append(raw[index]) }
        }
    }
}

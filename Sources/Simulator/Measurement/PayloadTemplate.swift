import Foundation

/// A compiled JSON payload template such as `{"device":"{id}","temp":21.5,"n":{seq}}`.
///
/// The template must be a JSON object once its placeholders are filled in: `{id}` (the device id, put in quotes
/// yourself), `{seq}` (sequence number) and `{ts}` (send time, monotonic nanoseconds). Rendering puts the probe
/// fields first inside the object, so receivers can measure any template.
struct PayloadTemplate: Sendable {
    /// Why a template was rejected.
    struct Invalid: Error, Sendable {
        /// What is wrong, in words.
        var reason: String
    }

    private enum Segment: Sendable {
        case literal([UInt8])
        case deviceID
        case sequence
        case timestamp
    }

    private let segments: [Segment]

    /// Compiles and checks a template.
    /// - Throws: ``Invalid`` when the text is not a JSON object or names an unknown placeholder.
    init(_ text: String) throws(Invalid) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix("{"), trimmed.hasSuffix("}") else {
            throw Invalid(reason: "a payload template must be a JSON object, starting with '{' and ending with '}'")
        }
        // Everything after the opening brace; the probe fields are spliced in front of it.
        let body = trimmed.dropFirst().trimmingCharacters(in: .whitespacesAndNewlines)
        var segments: [Segment] = [.literal(body == "}" ? [] : [UInt8(ascii: ",")])]
        var literal: [UInt8] = []
        var rest = Substring(body)
        while let open = rest.firstIndex(of: "{") {
            literal.append(contentsOf: rest[..<open].utf8)
            let afterOpen = rest.index(after: open)
            if let close = rest[afterOpen...].firstIndex(of: "}"), ["id", "seq", "ts"].contains(rest[afterOpen..<close]) {
                segments.append(.literal(literal))
                literal = []
                switch rest[afterOpen..<close] {
                case "id": segments.append(.deviceID)
                case "seq": segments.append(.sequence)
                default: segments.append(.timestamp)
                }
                rest = rest[rest.index(after: close)...]
            } else {
                // A nested JSON object, not a placeholder.
                literal.append(UInt8(ascii: "{"))
                rest = rest[afterOpen...]
            }
        }
        literal.append(contentsOf: rest.utf8)
        segments.append(.literal(literal))
        self.segments = segments

        var sample: [UInt8] = []
        render(Probe(publisher: 1, sequence: 2, timestamp: 3), deviceID: "sim-1", into: &sample)
        let parsed = try? JSONSerialization.jsonObject(with: Data(sample))
        guard parsed is [String: Any] else {
            throw Invalid(reason: "the template is not a JSON object once {id}, {seq} and {ts} are filled in: \(String(decoding: sample, as: UTF8.self))")
        }
    }

    /// Replaces `buffer` with the rendered payload.
    func render(_ probe: Probe, deviceID: String, into buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        buffer.append(UInt8(ascii: "{"))
        ProbeCodec.appendFields(probe, to: &buffer)
        for segment in segments {
            switch segment {
            case .literal(let bytes): buffer.append(contentsOf: bytes)
            case .deviceID: buffer.append(contentsOf: deviceID.utf8)
            case .sequence: ProbeCodec.appendDecimal(probe.sequence, to: &buffer)
            case .timestamp: ProbeCodec.appendDecimal(probe.timestamp, to: &buffer)
            }
        }
    }
}

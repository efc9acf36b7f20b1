/// A JSON value for admin API responses, rendered without Foundation.
enum AdminJSON: Sendable {
    case object([(String, AdminJSON)])
    case array([AdminJSON])
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case null

    /// The UTF-8 text of the value, followed by a newline (friendlier for `curl`).
    var bytes: [UInt8] {
        var out: [UInt8] = []
        render(into: &out)
        out.append(UInt8(ascii: "\n"))
        return out
    }

    func render(into out: inout [UInt8]) {
        switch self {
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (index, (key, value)) in members.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.renderString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                value.render(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        case .array(let values):
            out.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                value.render(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .string(let text):
            Self.renderString(text, into: &out)
        case .int(let value):
            out.append(contentsOf: String(value).utf8)
        case .double(let value):
            out.append(contentsOf: (value.isFinite ? String(value) : "null").utf8)
        case .bool(let value):
            out.append(contentsOf: (value ? "true" : "false").utf8)
        case .null:
            out.append(contentsOf: "null".utf8)
        }
    }

    /// Writes `text` as a JSON string: quotes, backslashes and control characters escaped.
    static func renderString(_ text: String, into out: inout [UInt8]) {
        JSONText.appendString(text, to: &out)
    }
}

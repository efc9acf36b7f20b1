import MQTTCodec
import NIOCore

/// One request of the JSON WebSocket API, parsed and checked. The connection task turns it into the
/// MQTT packet the core handles.
///
/// Requests (text frames):
/// - `{"op":"subscribe","filter":"sensors/#","qos":0|1,"id":...}`
/// - `{"op":"unsubscribe","filter":"sensors/#","id":...}`
/// - `{"op":"publish","topic":"t","payload":<any JSON>,"qos":0|1,"retain":false,"id":...}`; with
///   `"encoding":"base64"` the payload is a base64 string carrying arbitrary bytes.
/// - `{"op":"ping","id":...}`
///
/// `id` is optional and echoed exactly as sent in the `ack` or `error` reply.
enum JSONAPIRequestOp: Equatable {
    case subscribe(filter: String, qos: MQTTQoS)
    case unsubscribe(filter: String)
    case publish(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool)
    case ping
}

/// A parsed request with the raw JSON text of its `id` (`null` when absent).
struct JSONAPIRequestMessage: Equatable {
    var id: [UInt8]
    var op: JSONAPIRequestOp
}

/// A request that cannot be served: the raw `id` (when it could be read) and why.
struct JSONAPIRequestError: Error, Equatable {
    var id: [UInt8]
    var reason: String
}

enum JSONAPIProtocol {
    static let nullID: [UInt8] = Array("null".utf8)

    /// Parses one text message.
    static func parse(_ text: [UInt8]) -> Result<JSONAPIRequestMessage, JSONAPIRequestError> {
        let members: [JSONScanner.Member]
        do {
            members = try JSONScanner.objectMembers(text)
        } catch {
            return .failure(JSONAPIRequestError(id: nullID, reason: "bad JSON: \(error.message) at byte \(error.offset)"))
        }
        let scanner = JSONScanner(text)
        var fields: [String: Range<Int>] = [:]
        for member in members { fields[member.name] = member.value }
        var id = nullID
        if let range = fields["id"] {
            // Echo only scalars: a nested id would let a client make the server copy large values.
            guard range.count <= 256, text[range.lowerBound] != UInt8(ascii: "{"), text[range.lowerBound] != UInt8(ascii: "[") else {
                return .failure(JSONAPIRequestError(id: nullID, reason: "id must be a string, number or null of at most 256 bytes"))
            }
            id = Array(text[range])
        }
        func fail(_ reason: String) -> Result<JSONAPIRequestMessage, JSONAPIRequestError> {
            .failure(JSONAPIRequestError(id: id, reason: reason))
        }
        guard let opRange = fields["op"] else { return fail("missing op") }
        guard let op = scanner.string(at: opRange) else { return fail("op must be a string") }

        func qos(_ key: String) -> MQTTQoS?? {
            guard let range = fields[key] else { return .some(.atMostOnce) }
            switch scanner.integer(at: range) {
            case 0: return .some(.atMostOnce)
            case 1: return .some(.atLeastOnce)
            default: return .none
            }
        }

        switch op {
        case "subscribe", "unsubscribe":
            guard let range = fields["filter"], let filter = scanner.string(at: range) else {
                return fail("filter must be a string")
            }
            guard isValidFilter(filter) else { return fail("bad topic filter '\(filter)'") }
            if op == "unsubscribe" { return .success(JSONAPIRequestMessage(id: id, op: .unsubscribe(filter: filter))) }
            guard let level = qos("qos"), let level else { return fail("qos must be 0 or 1") }
            return .success(JSONAPIRequestMessage(id: id, op: .subscribe(filter: filter, qos: level)))
        case "publish":
            guard let range = fields["topic"], let topic = scanner.string(at: range) else {
                return fail("topic must be a string")
            }
            guard isValidTopicName(topic) else { return fail("bad topic '\(topic)'") }
            guard let level = qos("qos"), let level else { return fail("qos must be 0 or 1") }
            var retain = false
            if let range = fields["retain"] {
                guard let value = scanner.bool(at: range) else { return fail("retain must be true or false") }
                retain = value
            }
            var payload: [UInt8] = []
            var base64 = false
            if let range = fields["encoding"] {
                switch scanner.string(at: range) {
                case "base64": base64 = true
                case "json": base64 = false
                default: return fail("encoding must be \"json\" or \"base64\"")
                }
            }
            if let range = fields["payload"] {
                if base64 {
                    guard let text = scanner.string(at: range), let bytes = Base64.decode(Array(text.utf8)) else {
                        return fail("payload is not a base64 string")
                    }
                    payload = bytes
                } else {
                    payload = Array(text[range])
                }
            }
            return .success(JSONAPIRequestMessage(id: id, op: .publish(topic: topic, payload: payload, qos: level, retain: retain)))
        case "ping":
            return .success(JSONAPIRequestMessage(id: id, op: .ping))
        default:
            return fail("unknown op '\(op)'")
        }
    }

    /// A topic name: non-empty, no wildcards, no U+0000, at most 65535 bytes (MQTT-4.7.3).
    static func isValidTopicName(_ topic: String) -> Bool {
        topic.utf8.count <= 65535 && !topic.utf8.contains(0) && MQTTTopic.isValidName(topic)
    }

    /// A topic filter, shared subscriptions included.
    static func isValidFilter(_ filter: String) -> Bool {
        guard filter.utf8.count <= 65535, !filter.utf8.contains(0), MQTTTopic.isValidFilter(filter) else { return false }
        if case .invalid = MQTTTopic.parseShared(filter) { return false }
        return true
    }

    // MARK: Replies and pushes

    /// `{"op":"ack","id":ID}` plus extra members given as raw JSON.
    static func ack(id: [UInt8], extra: [(String, [UInt8])] = []) -> [UInt8] {
        var out: [UInt8] = Array(#"{"op":"ack","id":"#.utf8)
        out.append(contentsOf: id)
        for (key, value) in extra {
            out.append(UInt8(ascii: ","))
            JSONText.appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: value)
        }
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// `{"op":"error","id":ID,"reason":"..."}`.
    static func error(id: [UInt8], reason: String) -> [UInt8] {
        var out: [UInt8] = Array(#"{"op":"error","id":"#.utf8)
        out.append(contentsOf: id)
        out.append(contentsOf: #","reason":"#.utf8)
        JSONText.appendString(reason, to: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// `{"op":"connected","client_id":"..."}`, the first message on a JSON API connection.
    static func connected(clientID: String) -> [UInt8] {
        var out: [UInt8] = Array(#"{"op":"connected","client_id":"#.utf8)
        JSONText.appendString(clientID, to: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// The push for a delivered message: `{"op":"message","topic":...,"payload":...,"qos":...,
    /// "retain":...,"ts":...}`. A payload that is UTF-8 JSON is embedded as is; any other payload is
    /// base64 with `"encoding":"base64"`. `ts` is the delivery time in milliseconds since the Unix epoch.
    static func message(_ publish: MQTTPublishPacket, timestampMilliseconds: Int64, into buffer: inout ByteBuffer) {
        var out: [UInt8] = []
        out.reserveCapacity(64 + publish.topic.utf8.count + publish.payload.readableBytes * 4 / 3)
        out.append(contentsOf: #"{"op":"message","topic":"#.utf8)
        JSONText.appendString(publish.topic, to: &out)
        out.append(contentsOf: #","payload":"#.utf8)
        let payload = Array(publish.payload.readableBytesView)
        if JSONScanner.isJSON(payload) {
            out.append(contentsOf: payload)
        } else {
            out.append(UInt8(ascii: "\""))
            Base64.encode(payload, into: &out)
            out.append(contentsOf: #"","encoding":"base64""#.utf8)
        }
        out.append(contentsOf: #","qos":"#.utf8)
        out.append(UInt8(ascii: "0") + publish.qos.rawValue)
        out.append(contentsOf: (publish.retain ? #","retain":true"# : #","retain":false"#).utf8)
        out.append(contentsOf: #","ts":"#.utf8)
        out.append(contentsOf: String(timestampMilliseconds).utf8)
        out.append(UInt8(ascii: "}"))
        buffer.writeBytes(out)
    }

    /// A short reason for an MQTT reason code, for `error` replies.
    static func describe(_ code: MQTTReasonCode) -> String {
        switch code {
        case .notAuthorized: "not authorized"
        case .topicFilterInvalid: "bad topic filter"
        case .topicNameInvalid: "bad topic"
        case .quotaExceeded: "quota exceeded"
        case .qosNotSupported: "qos not supported"
        case .retainNotSupported: "retain not supported"
        case .sharedSubscriptionsNotSupported: "shared subscriptions not supported"
        case .wildcardSubscriptionsNotSupported: "wildcard subscriptions not supported"
        case .packetTooLarge: "message too large"
        case .serverUnavailable: "server unavailable"
        case .serverShuttingDown: "server shutting down"
        case .badUserNameOrPassword: "bad username or password"
        case .clientIdentifierNotValid: "client id not valid"
        case .payloadFormatInvalid: "payload format invalid"
        default: "refused (reason code \(code))"
        }
    }
}

import Foundation
import Yams

extension Scenario {
    /// Loads and validates a scenario from a YAML file.
    ///
    /// Every key is optional and defaults as documented on ``Scenario``. Keys (kebab-case, as in `Configs/scenarios/`):
    ///
    /// | key | type | default |
    /// | --- | --- | --- |
    /// | `name` | string | file name without extension |
    /// | `description` | string | empty |
    /// | `protocol` | `"3.1.1"` or `"5"` | `"3.1.1"` |
    /// | `duration`, `drain` | duration (`10s`, `500ms`, `2m`, or seconds as a number) | `10s`, `5s` |
    /// | `loss-tolerance` | fraction 0...1 | 0 |
    /// | `devices.mqtt`, `devices.ws-mqtt`, `devices.ws-json` | integer | 100, 0, 0 |
    /// | `connect.rate` (devices/s, 0 = all at once), `connect.timeout`, `connect.keepalive` (s), `connect.failure-tolerance` | | 500, 30s, 60, 0 |
    /// | `publish.publishers` (integer or `all`), `publish.rate` (per publisher), `publish.total-rate`, `publish.qos`, `publish.retain`, `publish.topic` | | all, 1, none, 0, false, `devices/{id}/telemetry` |
    /// | `publish.payload.size` or `publish.payload.template` | integer or JSON-object text | size 64 |
    /// | `consumers.count`, `consumers.transport` (`mqtt`, `ws-mqtt`, `ws-json`), `consumers.filter`, `consumers.partition`, `consumers.qos` | | 1, mqtt, `devices/+/telemetry`, false, 0 |
    /// | `requests.rate`, `requests.qos`, `requests.command-topic`, `requests.reply-topic` | | 0, 1, `devices/{id}/commands`, `devices/{id}/replies` |
    ///
    /// - Parameter path: the YAML file.
    /// - Throws: ``ScenarioError`` naming the file, the key path and what is wrong.
    public static func load(contentsOf path: String) throws(ScenarioError) -> Scenario {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ScenarioError(code: .unreadableFile, file: path, keyPath: "", reason: "cannot read file: \(error.localizedDescription)")
        }
        let defaultName = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        return try parse(yaml: text, file: path, defaultName: defaultName)
    }

    /// Parses and validates a scenario from YAML text.
    /// - Parameters:
    ///   - yaml: the document.
    ///   - file: the file name to put in errors, if any.
    ///   - defaultName: the name used when the document has no `name` key.
    public static func parse(yaml: String, file: String? = nil, defaultName: String = "custom") throws(ScenarioError) -> Scenario {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw ScenarioError(code: .invalidSyntax, file: file, keyPath: "", reason: "not valid YAML: \(error)")
        }
        var scenario = Scenario(name: defaultName)
        guard let root else { return scenario }  // An empty file is the default scenario.
        let reader = ScenarioYAMLReader(file: file)
        try reader.read(root, into: &scenario)
        try scenario.validate(file: file)
        return scenario
    }
}

/// Maps YAML nodes onto a ``Scenario``, rejecting unknown keys and wrong types with their key path.
private struct ScenarioYAMLReader {
    let file: String?

    func read(_ root: Node, into scenario: inout Scenario) throws(ScenarioError) {
        try mapping(root, "", keys: [
            "name", "description", "protocol", "duration", "drain", "loss-tolerance",
            "devices", "connect", "publish", "consumers", "requests",
        ]) { (key, value, path) throws(ScenarioError) in
            switch key {
            case "name": scenario.name = try string(value, path)
            case "description": scenario.summary = try string(value, path)
            case "protocol":
                let text = try string(value, path)
                switch text {
                case "3.1.1", "311", "4": scenario.protocolVersion = .v311
                case "5", "5.0": scenario.protocolVersion = .v5
                default: throw invalid(path, "must be \"3.1.1\" or \"5\", got '\(text)'")
                }
            case "duration": scenario.duration = try duration(value, path)
            case "drain": scenario.drain = try duration(value, path)
            case "loss-tolerance": scenario.lossTolerance = try number(value, path)
            case "devices":
                try mapping(value, path, keys: ["mqtt", "ws-mqtt", "ws-json"]) { (key, value, path) throws(ScenarioError) in
                    switch key {
                    case "mqtt": scenario.devices.mqtt = try integer(value, path)
                    case "ws-mqtt": scenario.devices.wsMQTT = try integer(value, path)
                    default: scenario.devices.wsJSON = try integer(value, path)
                    }
                }
            case "connect":
                try mapping(value, path, keys: ["rate", "timeout", "keepalive", "failure-tolerance"]) { (key, value, path) throws(ScenarioError) in
                    switch key {
                    case "rate": scenario.connect.rate = try number(value, path)
                    case "timeout": scenario.connect.timeout = try duration(value, path)
                    case "keepalive": scenario.connect.keepAlive = try integer(value, path)
                    default: scenario.connect.failureTolerance = try number(value, path)
                    }
                }
            case "publish":
                try readPublish(value, path, into: &scenario.publish)
            case "consumers":
                try mapping(value, path, keys: ["count", "transport", "filter", "partition", "qos"]) { (key, value, path) throws(ScenarioError) in
                    switch key {
                    case "count": scenario.consumers.count = try integer(value, path)
                    case "transport": scenario.consumers.transport = try transport(value, path)
                    case "filter": scenario.consumers.filter = try string(value, path)
                    case "partition": scenario.consumers.partition = try bool(value, path)
                    default: scenario.consumers.qos = try integer(value, path)
                    }
                }
            default:  // "requests"
                try mapping(value, path, keys: ["rate", "qos", "command-topic", "reply-topic"]) { (key, value, path) throws(ScenarioError) in
                    switch key {
                    case "rate": scenario.requests.rate = try number(value, path)
                    case "qos": scenario.requests.qos = try integer(value, path)
                    case "command-topic": scenario.requests.commandTopic = try string(value, path)
                    default: scenario.requests.replyTopic = try string(value, path)
                    }
                }
            }
        }
    }

    private func readPublish(_ node: Node, _ path: String, into publish: inout Scenario.Publish) throws(ScenarioError) {
        try mapping(node, path, keys: ["publishers", "rate", "total-rate", "qos", "retain", "topic", "window", "payload"]) { (key, value, path) throws(ScenarioError) in
            switch key {
            case "publishers":
                if value.scalar?.string == "all" {
                    publish.publishers = nil
                } else {
                    publish.publishers = try integer(value, path)
                }
            case "rate": publish.rate = try number(value, path)
            case "total-rate": publish.totalRate = try number(value, path)
            case "qos": publish.qos = try integer(value, path)
            case "retain": publish.retain = try bool(value, path)
            case "topic": publish.topic = try string(value, path)
            case "window": publish.window = try integer(value, path)
            default:  // "payload"
                var seen: [String] = []
                try mapping(value, path, keys: ["size", "template"]) { (key, value, path) throws(ScenarioError) in
                    seen.append(key)
                    if key == "size" {
                        publish.payload = .size(try integer(value, path))
                    } else {
                        publish.payload = .template(try string(value, path))
                    }
                }
                if seen.count > 1 { throw invalid(path, "give either size or template, not both") }
            }
        }
    }

    // MARK: Typed accessors

    private func invalid(_ path: String, _ reason: String) -> ScenarioError {
        ScenarioError(code: .invalidValue, file: file, keyPath: path, reason: reason)
    }

    private func located(_ node: Node) -> String {
        node.mark.map { " (line \($0.line))" } ?? ""
    }

    /// Iterates a mapping, rejecting keys outside `keys` and duplicate keys.
    private func mapping(
        _ node: Node,
        _ path: String,
        keys: Set<String>,
        _ body: (String, Node, String) throws(ScenarioError) -> Void
    ) throws(ScenarioError) {
        guard let mapping = node.mapping else {
            throw invalid(path, "must be a mapping\(located(node))")
        }
        var seen: Set<String> = []
        for (keyNode, value) in mapping {
            guard let key = keyNode.scalar?.string else { throw invalid(path, "keys must be plain strings\(located(keyNode))") }
            let childPath = path.isEmpty ? key : "\(path).\(key)"
            guard keys.contains(key) else {
                throw ScenarioError(
                    code: .unknownKey, file: file, keyPath: childPath,
                    reason: "unknown key\(located(keyNode)); expected one of: \(keys.sorted().joined(separator: ", "))"
                )
            }
            guard seen.insert(key).inserted else { throw invalid(childPath, "duplicate key\(located(keyNode))") }
            try body(key, value, childPath)
        }
    }

    private func scalar(_ node: Node, _ path: String, _ expected: String) throws(ScenarioError) -> String {
        guard let scalar = node.scalar else { throw invalid(path, "must be \(expected)\(located(node))") }
        return scalar.string
    }

    private func string(_ node: Node, _ path: String) throws(ScenarioError) -> String {
        try scalar(node, path, "a string")
    }

    private func integer(_ node: Node, _ path: String) throws(ScenarioError) -> Int {
        let text = try scalar(node, path, "an integer")
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")) else {
            throw invalid(path, "must be an integer, got '\(text)'\(located(node))")
        }
        return value
    }

    private func number(_ node: Node, _ path: String) throws(ScenarioError) -> Double {
        let text = try scalar(node, path, "a number")
        guard let value = Double(text.replacingOccurrences(of: "_", with: "")), value.isFinite else {
            throw invalid(path, "must be a number, got '\(text)'\(located(node))")
        }
        return value
    }

    private func bool(_ node: Node, _ path: String) throws(ScenarioError) -> Bool {
        let text = try scalar(node, path, "true or false")
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw invalid(path, "must be true or false, got '\(text)'\(located(node))")
        }
    }

    private func transport(_ node: Node, _ path: String) throws(ScenarioError) -> Scenario.Transport {
        let text = try string(node, path)
        guard let transport = Scenario.Transport(rawValue: text) else {
            throw invalid(path, "must be one of mqtt, ws-mqtt, ws-json, got '\(text)'\(located(node))")
        }
        return transport
    }

    private func duration(_ node: Node, _ path: String) throws(ScenarioError) -> Duration {
        let text = try scalar(node, path, "a duration")
        guard let value = DurationParser.parse(text) else {
            throw invalid(path, "must be a duration such as 10s, 500ms or 2m, got '\(text)'\(located(node))")
        }
        return value
    }
}

/// Parses durations written as `250ms`, `10s`, `2m`, `1h` or a plain number of seconds.
enum DurationParser {
    /// Returns the duration, or `nil` when the text is not one (negative values are returned and rejected by validation).
    static func parse(_ text: String) -> Duration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [(suffix: String, seconds: Double)] = [("ms", 0.001), ("us", 0.000_001), ("s", 1), ("m", 60), ("h", 3600)]
        for unit in units where trimmed.hasSuffix(unit.suffix) {
            guard let number = Double(trimmed.dropLast(unit.suffix.count)), number.isFinite else { return nil }
            return .nanoseconds(Int64((number * unit.seconds * 1e9).rounded()))
        }
        guard let seconds = Double(trimmed), seconds.isFinite else { return nil }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }
}

extension Scenario {
    /// Parses a duration as scenario files write them: `250ms`, `10s`, `2m`, `1h`, or a number of seconds.
    /// - Returns: the duration, or `nil` when `text` is not one.
    public static func parseDuration(_ text: String) -> Duration? {
        DurationParser.parse(text)
    }
}

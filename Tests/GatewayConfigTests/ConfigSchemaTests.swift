import Foundation
import GatewayConfig
import Testing

/// The repository root, found from this file's path (Tests/GatewayConfigTests/ConfigSchemaTests.swift).
private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// Any JSON value, decoded without Foundation's type guessing (so `true` and `1` stay distinct).
private enum JSONValue: Decodable, Equatable, CustomStringConvertible {
    case object([String: JSONValue])
    case array([JSONValue])
    case string(String)
    case number(Double)
    case bool(Bool)
    case null

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let value = try? c.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? c.decode(Double.self) {
            self = .number(value)
        } else if let value = try? c.decode(String.self) {
            self = .string(value)
        } else if let value = try? c.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    var object: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    var description: String {
        switch self {
        case .object(let members): "{" + members.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        case .array(let values): "[" + values.map(\.description).joined(separator: ", ") + "]"
        case .string(let text): "\"\(text)\""
        case .number(let value): "\(value)"
        case .bool(let value): "\(value)"
        case .null: "null"
        }
    }
}

/// `Configs/iotgw.schema.json` (the JSON Schema editors use) is kept in step with the model: every key
/// the model encodes is in the schema with the model's default, and the schema has no key the model
/// does not know.
@Suite("Configuration schema")
struct ConfigSchemaTests {
    /// The model's default configuration: every key of every config struct (none is optional).
    private func modelDefaults() throws -> [String: JSONValue] {
        let value = try JSONDecoder().decode(JSONValue.self, from: try JSONEncoder().encode(GatewayConfigFile()))
        return try #require(value.object)
    }

    private func schema() throws -> [String: JSONValue] {
        let data = try Data(contentsOf: root.appendingPathComponent("Configs/iotgw.schema.json"))
        return try #require(try JSONDecoder().decode(JSONValue.self, from: data).object)
    }

    /// Follows `{"$ref": "#/$defs/NAME"}`, keeping the referring node's own keys (its default).
    private func resolve(_ node: [String: JSONValue], in schema: [String: JSONValue]) -> [String: JSONValue] {
        guard case .string(let ref)? = node["$ref"], ref.hasPrefix("#/$defs/"),
            let target = schema["$defs"]?.object?[String(ref.dropFirst("#/$defs/".count))]?.object
        else { return node }
        return target.merging(node.filter { $0.key != "$ref" }) { _, own in own }
    }

    /// Dotted paths of every leaf key in the model, with its default.
    private func leaves(ofModel object: [String: JSONValue], prefix: String = "") -> [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for (key, value) in object {
            let path = prefix.isEmpty ? key : "\(prefix).\(key)"
            if let child = value.object {
                out.merge(leaves(ofModel: child, prefix: path)) { a, _ in a }
            } else {
                out[path] = value
            }
        }
        return out
    }

    /// Dotted paths of every leaf property in the schema, with its `default` (or the enclosing
    /// object's default for that key; nil when there is none).
    private func leaves(
        ofSchema node: [String: JSONValue],
        schema: [String: JSONValue],
        prefix: String = "",
        inheritedDefault: JSONValue? = nil
    ) -> [String: JSONValue?] {
        let node = resolve(node, in: schema)
        guard let properties = node["properties"]?.object else {
            return [prefix: node["default"] ?? inheritedDefault]
        }
        #expect(node["additionalProperties"] == .bool(false), "\(prefix.isEmpty ? "(top level)" : prefix) must set additionalProperties: false")
        var out: [String: JSONValue?] = [:]
        let objectDefault = node["default"]?.object
        for (key, child) in properties {
            let path = prefix.isEmpty ? key : "\(prefix).\(key)"
            out.merge(leaves(ofSchema: child.object ?? [:], schema: schema, prefix: path, inheritedDefault: objectDefault?[key])) { a, _ in a }
        }
        return out
    }

    @Test("every model key is in the schema and every schema key is in the model")
    func sameKeys() throws {
        let model = leaves(ofModel: try modelDefaults())
        let schema = try self.schema()
        let documented = leaves(ofSchema: schema, schema: schema)
        let missingFromSchema = Set(model.keys).subtracting(documented.keys).sorted()
        let unknownToModel = Set(documented.keys).subtracting(model.keys).sorted()
        #expect(missingFromSchema.isEmpty, "keys the model has but Configs/iotgw.schema.json lacks: \(missingFromSchema)")
        #expect(unknownToModel.isEmpty, "keys Configs/iotgw.schema.json has but the model does not: \(unknownToModel)")
    }

    @Test("every schema default is the model's default")
    func sameDefaults() throws {
        let model = leaves(ofModel: try modelDefaults())
        let schema = try self.schema()
        let documented = leaves(ofSchema: schema, schema: schema)
        for (key, value) in model.sorted(by: { $0.key < $1.key }) {
            guard let entry = documented[key] else { continue }  // reported by sameKeys
            #expect(entry == value, "\(key): schema default \(entry.map(\.description) ?? "(none)"), model default \(value)")
        }
    }
}

import Foundation
import Yams

/// Loads a ``GatewayConfigFile`` from YAML (`.yaml`, `.yml`) or JSON (`.json`), chosen by extension.
public enum ConfigLoader {
    /// Reads, decodes and validates `path`.
    /// - Throws: ``ConfigError`` naming the file, the key path and the problem.
    public static func load(path: String) throws(ConfigError) -> GatewayConfigFile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, key: nil, message: "cannot read the file (\(error.localizedDescription))")
        }
        return try decode(text, path: path)
    }

    /// Decodes and validates configuration text; `path` decides the syntax and names the source in errors.
    public static func decode(_ text: String, path: String) throws(ConfigError) -> GatewayConfigFile {
        let lower = path.lowercased()
        let config: GatewayConfigFile
        do {
            if lower.hasSuffix(".json") {
                config = try JSONDecoder().decode(GatewayConfigFile.self, from: Data(text.utf8))
            } else if lower.hasSuffix(".yaml") || lower.hasSuffix(".yml") {
                // An empty YAML document (or one with only comments) means "all defaults".
                let isEmpty = text.split(separator: "\n").allSatisfy {
                    let line = $0.trimmingCharacters(in: .whitespaces)
                    return line.isEmpty || line.hasPrefix("#") || line == "---"
                }
                config = isEmpty ? GatewayConfigFile() : try decodeYAML(text, path: path)
            } else {
                throw ConfigError(file: path, key: nil, message: "unknown file type: use .yaml, .yml or .json")
            }
        } catch let error as ConfigError {
            throw error
        } catch let error as DecodingError {
            throw describe(error, path: path)
        } catch {
            throw ConfigError(file: path, key: nil, message: "not valid \(lower.hasSuffix(".json") ? "JSON" : "YAML"): \(error)")
        }
        if let first = config.validationErrors().first {
            throw ConfigError(file: path, key: first.key, message: first.message)
        }
        return config
    }

    /// The most nodes a configuration may expand to. Aliases are copies sharing storage, so a small
    /// document can stand for billions of nodes ("billion laughs"); ``decodeYAML(_:path:)`` visits each one.
    static let maxNodes = 100_000

    /// Decodes YAML as `YAMLDecoder.decode(_:from:)` does, with one difference: a plain scalar holding
    /// a `:` is decoded as quoted text. Yams reads such a scalar as a YAML 1.1 base-60 number when a
    /// number is expected (`1:30` is 90) and traps on overflow (`port: 8888888888888888:88888:88888`);
    /// quoted, it is text: a string key reads it unchanged, a number key reports "expected an integer".
    private static func decodeYAML(_ text: String, path: String) throws -> GatewayConfigFile {
        let parser: Parser
        let root: Node
        do {
            // The resolver YAMLDecoder uses: only merge keys (`<<`) are resolved while parsing.
            parser = try Parser(yaml: text, resolver: Resolver.basic.appending(.merge))
            root = try parser.singleRoot() ?? ""
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "The given data was not valid YAML.", underlyingError: error))
        }
        // The parser holds the anchors that the nodes refer to.
        return try withExtendedLifetime(parser) {
            var budget = maxNodes
            guard let rewritten = quotingColons(root, budget: &budget) else {
                throw ConfigError(file: path, key: nil, message: "the document expands to more than \(maxNodes) YAML nodes (aliases?)")
            }
            return try YAMLDecoder().decode(GatewayConfigFile.self, from: rewritten)
        }
    }

    /// `node` with its plain scalars holding `:` quoted; nil once more than `budget` nodes were visited.
    private static func quotingColons(_ node: Node, budget: inout Int) -> Node? {
        budget -= 1
        guard budget >= 0 else { return nil }
        switch node {
        case .scalar(var scalar):
            if scalar.style == .plain || scalar.style == .any, scalar.string.contains(":") { scalar.style = .singleQuoted }
            return .scalar(scalar)
        case .mapping(let mapping):
            var pairs: [(Node, Node)] = []
            pairs.reserveCapacity(mapping.count)
            for pair in mapping {
                guard let key = quotingColons(pair.key, budget: &budget), let value = quotingColons(pair.value, budget: &budget) else {
                    return nil
                }
                pairs.append((key, value))
            }
            return .mapping(Node.Mapping(pairs, mapping.tag, mapping.style, mapping.mark))
        case .sequence(let sequence):
            var nodes: [Node] = []
            nodes.reserveCapacity(sequence.count)
            for element in sequence {
                guard let rewritten = quotingColons(element, budget: &budget) else { return nil }
                nodes.append(rewritten)
            }
            return .sequence(Node.Sequence(nodes, sequence.tag, sequence.style, sequence.mark))
        case .alias:
            return node
        }
    }

    private static func describe(_ error: DecodingError, path: String) -> ConfigError {
        switch error {
        case .typeMismatch(let type, let context):
            return ConfigError(file: path, key: keyPath(context.codingPath), message: "expected \(typeName(type))")
        case .valueNotFound(let type, let context):
            return ConfigError(file: path, key: keyPath(context.codingPath), message: "expected \(typeName(type)), found null")
        case .keyNotFound(let key, let context):
            return ConfigError(file: path, key: keyPath(context.codingPath + [key]), message: "missing")
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                let underlying = context.underlyingError.map { " (\($0))" } ?? ""
                return ConfigError(file: path, key: nil, message: "cannot be parsed: \(context.debugDescription)\(underlying)")
            }
            return ConfigError(file: path, key: keyPath(context.codingPath), message: context.debugDescription)
        @unknown default:
            return ConfigError(file: path, key: nil, message: "\(error)")
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type: "an integer"
        case is Double.Type: "a number"
        case is Bool.Type: "true or false"
        case is String.Type: "a string"
        default: "\(type)"
        }
    }
}

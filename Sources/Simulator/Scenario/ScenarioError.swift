/// A scenario that cannot run: a file that does not parse, an unknown key, or a bad value.
///
/// The error names the file (when there is one), the key path (`publish.qos`) and what is wrong,
/// so `iotgw simulate --scenario FILE` can print one line that tells the user what to fix.
public struct ScenarioError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of problem this is. New codes may be added.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Base: String, Sendable { case unreadableFile, invalidSyntax, unknownKey, invalidValue }
        fileprivate let base: Base

        /// The file could not be read.
        public static let unreadableFile = Code(base: .unreadableFile)
        /// The file is not valid YAML, or its top level is not a mapping.
        public static let invalidSyntax = Code(base: .invalidSyntax)
        /// A key the scenario format does not know.
        public static let unknownKey = Code(base: .unknownKey)
        /// A value of the wrong type or out of range.
        public static let invalidValue = Code(base: .invalidValue)

        public var description: String { base.rawValue }
    }

    /// What kind of problem this is.
    public var code: Code
    /// The scenario file, or `nil` for scenarios built from flags or code.
    public var file: String?
    /// The dotted key path of the offending value (`consumers.transport`), empty for whole-file problems.
    public var keyPath: String
    /// What is wrong, in words.
    public var reason: String

    /// Creates an error.
    public init(code: Code, file: String? = nil, keyPath: String, reason: String) {
        self.code = code
        self.file = file
        self.keyPath = keyPath
        self.reason = reason
    }

    public var description: String {
        var text = file.map { "\($0): " } ?? "scenario: "
        if !keyPath.isEmpty { text += "\(keyPath): " }
        return text + reason
    }
}

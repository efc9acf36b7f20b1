/// A configuration file that cannot be used, with where and why.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    /// The file the problem is in.
    public var file: String
    /// The dotted key path (`listeners.mqtt.port`), or nil when the file as a whole is the problem.
    public var key: String?
    /// What is wrong.
    public var message: String

    public init(file: String, key: String?, message: String) {
        self.file = file
        self.key = key
        self.message = message
    }

    public var description: String {
        if let key { return "\(file): \(key): \(message)" }
        return "\(file): \(message)"
    }
}

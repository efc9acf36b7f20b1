import GatewayTransport
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The log level and format all of the gateway's loggers share; SIGHUP changes the level live.
final class LogControl: Sendable {
    /// How each entry is written.
    enum Format: String, Sendable {
        /// `2025-01-31T12:00:00.123Z info iotgw: message key=value` (UTC, milliseconds).
        case text
        /// One JSON object per line: `ts`, `level`, `label`, `source`, `message`, then metadata keys.
        case json
    }

    private let levelIndex: Atomic<Int>
    let format: Format

    init(level: Logger.Level, format: Format) {
        self.levelIndex = Atomic(Logger.Level.allCases.firstIndex(of: level) ?? 2)
        self.format = format
    }

    /// The level below which entries are not written.
    var level: Logger.Level {
        get { Logger.Level.allCases[levelIndex.load(ordering: .relaxed)] }
        set { levelIndex.store(Logger.Level.allCases.firstIndex(of: newValue) ?? 2, ordering: .relaxed) }
    }
}

/// swift-log handler that formats entries (text or JSON) and hands them to a ``LogWriter``: formatting
/// happens on the caller, writing on the writer thread.
struct GatewayLogHandler: LogHandler {
    let label: String
    let control: LogControl
    let writer: LogWriter
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    /// A level set on one logger (`logger.logLevel = ...`) applies to that logger only; without it the
    /// shared, reloadable level applies.
    private var overrideLevel: Logger.Level?

    init(label: String, control: LogControl, writer: LogWriter, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.control = control
        self.writer = writer
        self.metadataProvider = metadataProvider
    }

    var logLevel: Logger.Level {
        get { overrideLevel ?? control.level }
        set { overrideLevel = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let line: [UInt8]
        switch control.format {
        case .text: line = Self.textLine(label: label, level: event.level, message: event.message, metadata: merged, source: event.source)
        case .json: line = Self.jsonLine(label: label, level: event.level, message: event.message, metadata: merged, source: event.source)
        }
        writer.enqueue(line)
    }

    static func textLine(label: String, level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata, source: String) -> [UInt8] {
        var line = "\(timestamp()) \(level) \(label):"
        if !metadata.isEmpty {
            line += " [" + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + "]"
        }
        line += " \(message)\n"
        return Array(line.utf8)
    }

    static func jsonLine(label: String, level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata, source: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        func member(_ key: String, _ value: String, first: Bool = false) {
            if !first { out.append(UInt8(ascii: ",")) }
            JSONText.appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            JSONText.appendString(value, to: &out)
        }
        out.append(UInt8(ascii: "{"))
        member("ts", timestamp(), first: true)
        member("level", level.rawValue)
        member("label", label)
        member("source", source)
        member("message", message.description)
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) where !["ts", "level", "label", "source", "message"].contains(key) {
            member(key, value.description)
        }
        out.append(contentsOf: "}\n".utf8)
        return out
    }

    /// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}

public import Logging
import NIOCore

/// A connection's logger: the transport's logger, with the connection's metadata (peer address, client
/// identifier) added only to a line that is actually logged.
///
/// A `Logger` with metadata holds a dictionary: about 330 bytes of every idle connection, for lines that
/// are rarely written. The level is checked first, so a line below the level costs what it costs on a
/// plain `Logger`.
public struct ConnectionLogger: Sendable {
    private var base: Logger
    /// The peer's address, added as `net.peer.address` (printed only for a line that is logged).
    var peer: SocketAddress?
    /// The client identifier once CONNECT was accepted, added as `mqtt.client.id`.
    var clientID: String?

    init(base: Logger, peer: SocketAddress?) {
        self.base = base
        self.peer = peer
    }

    /// The level below which lines are not logged.
    public var logLevel: Logger.Level { base.logLevel }

    /// A `Logger` with the connection's metadata.
    public var withMetadata: Logger {
        var logger = base
        if let peer { logger[metadataKey: "net.peer.address"] = "\(peer)" }
        if let clientID { logger[metadataKey: "mqtt.client.id"] = "\(clientID)" }
        return logger
    }

    @inlinable
    public func log(
        level: Logger.Level,
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata? = nil,
        file: String = #fileID,
        function: String = #function,
        line: UInt = #line
    ) {
        guard logLevel <= level else { return }
        withMetadata.log(level: level, message(), metadata: metadata(), file: file, function: function, line: line)
    }

    @inlinable
    public func trace(
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata? = nil,
        file: String = #fileID,
        function: String = #function,
        line: UInt = #line
    ) {
        log(level: .trace, message(), metadata: metadata(), file: file, function: function, line: line)
    }

    @inlinable
    public func debug(
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata? = nil,
        file: String = #fileID,
        function: String = #function,
        line: UInt = #line
    ) {
        log(level: .debug, message(), metadata: metadata(), file: file, function: function, line: line)
    }

    @inlinable
    public func info(
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata? = nil,
        file: String = #fileID,
        function: String = #function,
        line: UInt = #line
    ) {
        log(level: .info, message(), metadata: metadata(), file: file, function: function, line: line)
    }

    @inlinable
    public func notice(
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata? = nil,
        file: String = #fileID,
        function: String = #function,
        line: UInt = #line
    ) {
        log(level: .notice, message(), metadata: metadata(), file: file, function: function, line: line)
    }
}

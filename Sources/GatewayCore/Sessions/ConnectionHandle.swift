public import MQTTCodec

/// Why the gateway itself ends a client's connection. The transport turns it into an MQTT 5
/// DISCONNECT reason code (and a WebSocket close code) before closing.
public enum ServerDisconnectReason: Sendable, Hashable {
    /// Another connection took over the session (0x8E).
    case sessionTakenOver
    /// The client's queue overflowed with QoS 1/2 messages (0x97).
    case quotaExceeded
    /// Graceful shutdown (0x8B).
    case serverShuttingDown
    /// An operator asked for it (0x98).
    case administrativeAction
    /// No packet within 1.5 × keep alive (0x8D).
    case keepAliveTimeout

    public var reasonCode: MQTTReasonCode {
        switch self {
        case .sessionTakenOver: .sessionTakenOver
        case .quotaExceeded: .quotaExceeded
        case .serverShuttingDown: .serverShuttingDown
        case .administrativeAction: .administrativeAction
        case .keepAliveTimeout: .keepAliveTimeout
        }
    }

    var metricReason: GatewayMetrics.DisconnectReason {
        switch self {
        case .sessionTakenOver: .takenOver
        case .quotaExceeded: .slowConsumer
        case .serverShuttingDown: .serverShutdown
        case .administrativeAction: .administrative
        case .keepAliveTimeout: .keepAliveTimeout
        }
    }
}

/// What the core needs from a live connection: a way to end it. Implemented by the transport.
public protocol ConnectionHandle: AnyObject, Sendable {
    /// Ends the connection: an MQTT 5 client is sent DISCONNECT with `reason` first. Must not block;
    /// may be called more than once and from any thread.
    func close(reason: ServerDisconnectReason)

    /// Tells the connection's task that its session has messages to send. Called from any thread,
    /// at most once per "nothing to send" poll; must not block.
    func deliveryAvailable()

    /// Stops (true) or resumes (false) reading from the client's socket: back-pressure on a publisher
    /// whose messages fill a slow subscriber's queue (``ReadThrottle``). Packets already read are still
    /// handled. Called from any thread, in the order the calls are to take effect (the throttle calls it
    /// under its lock); must not block.
    func setReadPaused(_ paused: Bool)
}

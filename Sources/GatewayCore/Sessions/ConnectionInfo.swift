public import NIOCore

/// Where a session's connection came from, as the admin API and the dashboard list it.
public struct ConnectionInfo: Sendable, Hashable {
    /// The peer's address; nil when unknown.
    public var peer: SocketAddress?
    /// The peer's address as NIO prints it (`[IPv4]127.0.0.1/127.0.0.1:50000`), made when asked (the
    /// admin API): a connected session keeps the channel's address, not a string of its own.
    public var address: String? { peer?.description }
    /// The listener's transport; nil when the transport did not say (sessions made in tests).
    public var transport: GatewayMetrics.Transport?
    /// `3.1.1` or `5.0` for MQTT clients, `json` for the JSON WebSocket API.
    public var protocolName: String
    /// When CONNECT was accepted, in milliseconds since the Unix epoch.
    public var connectedAt: Int64

    public init(peer: SocketAddress?, transport: GatewayMetrics.Transport?, protocolName: String, connectedAt: Int64) {
        self.peer = peer
        self.transport = transport
        self.protocolName = protocolName
        self.connectedAt = connectedAt
    }
}

/// Where a session's connection came from, as the admin API and the dashboard list it.
public struct ConnectionInfo: Sendable, Hashable {
    /// The peer's address (`[IPv4]127.0.0.1/127.0.0.1:50000` as NIO prints it); nil when unknown.
    public var address: String?
    /// The listener's transport; nil when the transport did not say (sessions made in tests).
    public var transport: GatewayMetrics.Transport?
    /// `3.1.1` or `5.0` for MQTT clients, `json` for the JSON WebSocket API.
    public var protocolName: String
    /// When CONNECT was accepted, in milliseconds since the Unix epoch.
    public var connectedAt: Int64

    public init(address: String?, transport: GatewayMetrics.Transport?, protocolName: String, connectedAt: Int64) {
        self.address = address
        self.transport = transport
        self.protocolName = protocolName
        self.connectedAt = connectedAt
    }
}

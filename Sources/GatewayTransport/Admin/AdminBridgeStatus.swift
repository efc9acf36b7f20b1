/// One bridge as `GET /api/v1/stats` lists it under `bridges`. The daemon fills it from the bridge's
/// status, so this module need not know the bridge.
public struct AdminBridgeStatus: Sendable, Hashable {
    public var name: String
    /// `connected`, `connecting` or `down`.
    public var state: String
    /// The last connection failure or loss, if any.
    public var lastError: String?
    /// Messages waiting in the bridge queue (queued or in flight).
    public var queued: Int
    /// Messages forwarded to the upstream (acknowledged by it for QoS 1/2).
    public var forwarded: Int
    /// Messages received from the upstream.
    public var received: Int
    /// Messages that did not cross, in all.
    public var dropped: Int

    public init(name: String, state: String, lastError: String?, queued: Int, forwarded: Int, received: Int, dropped: Int) {
        self.name = name
        self.state = state
        self.lastError = lastError
        self.queued = queued
        self.forwarded = forwarded
        self.received = received
        self.dropped = dropped
    }
}

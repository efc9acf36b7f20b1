import GatewayCore
import MQTTCodec
import NIOCore
import Synchronization

/// Lets the core end a connection: for an MQTT 5 client it writes DISCONNECT with the reason first;
/// on a WebSocket it then chooses the close code (1001 on shutdown) before closing.
/// Channel operations are thread-safe, so this may be called from any task or thread.
final class ChannelConnectionHandle: ConnectionHandle {
    let channel: any Channel
    /// Whether ``WebSocketProtocolHandler`` is in the pipeline (it turns the close into a close handshake).
    let isWebSocket: Bool
    private let state = Mutex<State>(State())

    private struct State {
        var version: MQTTProtocolVersion?
        var reason: ServerDisconnectReason?
        var writer: ConnectionWriter?
    }

    init(channel: any Channel, isWebSocket: Bool = false) {
        self.channel = channel
        self.isWebSocket = isWebSocket
    }

    /// Records the version once CONNECT was accepted, so a later close can speak it.
    func connected(version: MQTTProtocolVersion) {
        state.withLock { $0.version = version }
    }

    /// Why the server closed the connection, if it did.
    var closeReason: ServerDisconnectReason? { state.withLock { $0.reason } }

    /// The MQTT connection's writer, set by its task before CONNECT is handled: deliveries are then
    /// written on the event loop directly. Without one (the JSON API) the task is woken instead.
    var writer: ConnectionWriter? {
        get { state.withLock { $0.writer } }
        set { state.withLock { $0.writer = newValue } }
    }

    func deliveryAvailable() {
        if let writer {
            // Always a job of its own, never inline: the caller may be this connection's own task
            // (publishing to its own subscription) in the middle of handling a packet.
            channel.eventLoop.execute { writer.drainAndFlush() }
        } else {
            channel.pipeline.fireUserInboundEventTriggered(DeliverySignal())
        }
    }

    func setReadPaused(_ paused: Bool) {
        // ConnectionInbound holds the reads. Always through `execute`, also on the channel's own loop: the
        // calls (made in order, under ReadThrottle's lock) then take effect in the order they were made,
        // where an inline one could overtake one queued from another loop.
        let channel = self.channel
        channel.eventLoop.execute {
            channel.pipeline.syncOperations.triggerUserOutboundEvent(ConnectionInbound.SetReadPaused(paused: paused), promise: nil)
        }
    }

    func close(reason: ServerDisconnectReason) {
        let (first, version) = state.withLock { state -> (Bool, MQTTProtocolVersion?) in
            guard state.reason == nil else { return (false, nil) }
            state.reason = reason
            return (true, state.version)
        }
        guard first else { return }
        let channel = self.channel
        let isWebSocket = self.isWebSocket
        let writer = self.writer
        channel.eventLoop.execute {
            // Nothing is written after the DISCONNECT.
            writer?.stop()
            guard version == .v5 else {
                Self.closeChannel(channel, reason: reason, isWebSocket: isWebSocket)
                return
            }
            let packet = MQTTPacket.disconnect(MQTTReasonPacket(reasonCode: reason.reasonCode))
            channel.writeAndFlush(packet.encode(version: .v5, allocator: channel.allocator)).whenComplete { _ in
                Self.closeChannel(channel, reason: reason, isWebSocket: isWebSocket)
            }
            // A client that stopped reading (a slow consumer) never takes the DISCONNECT: close anyway.
            channel.eventLoop.scheduleTask(in: Self.disconnectGrace) {
                Self.closeChannel(channel, reason: reason, isWebSocket: isWebSocket)
            }
        }
    }

    /// How long a DISCONNECT may wait to be written before the connection is closed without it.
    static let disconnectGrace = TimeAmount.seconds(1)

    private static func closeChannel(_ channel: any Channel, reason: ServerDisconnectReason, isWebSocket: Bool) {
        if isWebSocket {
            channel.triggerUserOutboundEvent(WebSocketProtocolHandler.CloseRequest(reason), promise: nil)
        }
        channel.close(promise: nil)
    }
}

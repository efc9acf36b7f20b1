import GatewayCore
import Logging
import MQTTCodec
import NIOCore

/// The async channel of one MQTT connection: decoded packets (and writability changes) in; writes go
/// straight into the channel from ``ConnectionWriter`` on its event loop, so there is no outbound writer.
typealias MQTTAsyncChannel = NIOAsyncChannel<ConnectionInput, Never>

/// Runs one MQTT connection: the per-connection task.
///
/// The task runs on its channel's event loop (``EventLoopTaskExecutor``): it reads ``ConnectionInput`` —
/// client packets, which it hands to the core and answers, and writability changes — and every write
/// goes through the connection's ``ConnectionWriter`` on that loop. Messages routed to this connection
/// are written by the writer when the session wakes it, without waking the task. Every error stays
/// inside this connection.
struct MQTTConnectionRunner: Sendable {
    let broker: Broker
    let transport: GatewayMetrics.Transport
    let registry: ConnectionRegistry
    let logger: Logger
    /// Whether the client certificate's CN replaces the username of CONNECT (TLS listeners with
    /// `tls.use_cn_as_username`).
    var useCertificateCommonName = false
    /// Whether the connection runs over WebSocket (closing it is a close handshake).
    var isWebSocket = false

    /// Inbound packets handled before the task yields the loop to other jobs: a publisher whose packets
    /// are already buffered never suspends on `next()`.
    private static let packetsPerYield = 16

    func run(_ channel: MQTTAsyncChannel) async {
        guard broker.admitConnection(transport: transport) else {
            logger.debug("connection refused: limit reached or draining")
            // Through executeThenClose, so NIO sees the wrapped channel finished.
            try? await channel.executeThenClose { _ in }
            return
        }
        defer { broker.releaseConnection(transport: transport) }
        await withTaskExecutorPreference(EventLoopTaskExecutor.of(channel.channel.eventLoop)) {
            await runOnEventLoop(channel)
        }
    }

    private func runOnEventLoop(_ channel: MQTTAsyncChannel) async {
        let handle = ChannelConnectionHandle(channel: channel.channel, isWebSocket: isWebSocket)
        let token = registry.add(handle)
        defer { registry.remove(token) }

        let connection = ClientConnection(
            broker: broker,
            handle: handle,
            remoteAddress: channel.channel.remoteAddress?.description,
            logger: logger
        )
        let writer = ConnectionWriter(channel: channel.channel, connection: connection, metrics: broker.metrics)
        handle.writer = writer
        var cause = ClientConnection.CloseCause.connectionLost
        do {
            try await channel.executeThenClose { inbound in
                var actions: [ClientConnection.Action] = []
                var handledSinceYield = 0
                do {
                    for try await input in inbound {
                        if case .packet(var packet) = input {
                            if useCertificateCommonName, case .connect(var connect) = packet,
                                let name = await TLSContext.peerCommonName(of: handle.channel)
                            {
                                connect.username = name
                                packet = .connect(connect)
                                // Only a certificate verified against tls.ca_file reaches here (without
                                // a CA none is requested): it authenticates the client.
                                connection.certificateIdentity = name
                            }
                            actions = await connection.handle(packet)
                            if await perform(actions, connection: connection, handle: handle, writer: writer) {
                                writer.flush()
                                return
                            }
                        }
                        if connection.isConnected { writer.drain() }
                        handledSinceYield += 1
                        if handledSinceYield >= Self.packetsPerYield {
                            handledSinceYield = 0
                            await Task.yield()
                        }
                    }
                    return
                } catch let error as MQTTCodecError {
                    cause = .protocolError
                    actions = connection.handleDecodeError(error)
                } catch is KeepAliveHandler.KeepAliveExpired {
                    cause = .keepAliveTimeout
                    actions = connection.keepAliveExpired()
                }
                _ = await perform(actions, connection: connection, handle: handle, writer: writer)
                writer.flush()
            }
        } catch {
            logger.debug("connection ended with error", metadata: ["error": "\(error)"])
        }
        if let reason = handle.closeReason { cause = .server(reason) }
        connection.connectionClosed(cause: cause)
    }

    /// Performs the core's actions in order. Returns true when the connection is to close.
    private func perform(
        _ actions: [ClientConnection.Action],
        connection: ClientConnection,
        handle: ChannelConnectionHandle,
        writer: ConnectionWriter
    ) async -> Bool {
        for action in actions {
            switch action {
            case .send(let packet):
                writer.send(packet)
            case .keepAlive(let seconds):
                handle.connected(version: connection.version)
                try? await handle.channel.triggerUserOutboundEvent(KeepAliveHandler.SetKeepAlive(seconds: seconds))
            case .close:
                return true
            }
        }
        return false
    }
}

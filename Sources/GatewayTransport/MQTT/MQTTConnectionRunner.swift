import GatewayCore
import Logging
import MQTTCodec
import NIOCore

/// Runs one MQTT connection: the per-connection task.
///
/// The task reads packets and performs the core's actions; once CONNECT is accepted a child task
/// writes what the session's outbound queue yields. The first of the two to finish cancels the other
/// (a discarding task group), and every error stays inside this connection.
struct MQTTConnectionRunner: Sendable {
    let broker: Broker
    let transport: GatewayMetrics.Transport
    let registry: ConnectionRegistry
    let logger: Logger

    func run(_ channel: NIOAsyncChannel<MQTTPacket, ByteBuffer>) async {
        guard broker.admitConnection(transport: transport) else {
            logger.debug("connection refused: limit reached or draining")
            try? await channel.channel.close()
            return
        }
        defer { broker.releaseConnection(transport: transport) }
        let handle = ChannelConnectionHandle(channel: channel.channel)
        let token = registry.add(handle)
        defer { registry.remove(token) }

        let connection = ClientConnection(
            broker: broker,
            handle: handle,
            remoteAddress: channel.channel.remoteAddress?.description,
            logger: logger
        )
        var cause = ClientConnection.CloseCause.connectionLost
        do {
            try await channel.executeThenClose { inbound, outbound in
                try await withThrowingDiscardingTaskGroup { group in
                    defer { group.cancelAll() }
                    var actions: [ClientConnection.Action] = []
                    do {
                        for try await packet in inbound {
                            actions = await connection.handle(packet)
                            if try await perform(actions, connection: connection, handle: handle, outbound: outbound, group: &group) {
                                return
                            }
                        }
                    } catch let error as MQTTCodecError {
                        cause = .protocolError
                        actions = connection.handleDecodeError(error)
                    } catch is KeepAliveHandler.KeepAliveExpired {
                        cause = .keepAliveTimeout
                        actions = connection.keepAliveExpired()
                    }
                    _ = try await perform(actions, connection: connection, handle: handle, outbound: outbound, group: &group)
                }
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
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        group: inout ThrowingDiscardingTaskGroup<any Error>
    ) async throws -> Bool {
        let allocator = handle.channel.allocator
        for action in actions {
            switch action {
            case .send(let packet):
                try await outbound.write(packet.encode(version: connection.version, allocator: allocator))
            case .keepAlive(let seconds):
                try await handle.channel.triggerUserOutboundEvent(KeepAliveHandler.SetKeepAlive(seconds: seconds))
            case .startDelivery(let source):
                handle.connected(version: connection.version)
                let version = connection.version
                let metrics = broker.metrics
                group.addTask {
                    while let packet = await source.next() {
                        let buffer = packet.encode(version: version, allocator: allocator)
                        try await outbound.write(buffer)
                        if case .publish(let publish) = packet {
                            metrics.messageSent(qos: publish.qos, bytes: publish.payload.readableBytes)
                        }
                    }
                }
            case .then(let body):
                body()
            case .close:
                return true
            }
        }
        return false
    }
}

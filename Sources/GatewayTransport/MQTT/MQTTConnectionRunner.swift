import GatewayCore
import Logging
import MQTTCodec
import NIOCore

/// Runs one MQTT connection: the per-connection task.
///
/// One task both reads and writes. It reads ``ConnectionInput``: client packets, which it hands to the
/// core and answers, and wake-ups, after which it writes what the session has queued. It writes queued
/// messages only while the socket is writable, so a slow reader never makes the task wait: the task
/// keeps reading (acknowledgements, pings) and its messages wait in the session's bounded queue, where
/// the queue's policy applies. Every error stays inside this connection.
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

    /// The most messages written between two flushes.
    private static let writeBatch = 64
    /// Inbound packets handled before the task yields to others.
    private static let packetsPerYield = 4

    func run(_ channel: NIOAsyncChannel<ConnectionInput, ByteBuffer>) async {
        guard broker.admitConnection(transport: transport) else {
            logger.debug("connection refused: limit reached or draining")
            // Through executeThenClose, so NIO sees the wrapped channel finished.
            try? await channel.executeThenClose { _, _ in }
            return
        }
        defer { broker.releaseConnection(transport: transport) }
        let handle = ChannelConnectionHandle(channel: channel.channel, isWebSocket: isWebSocket)
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
                var actions: [ClientConnection.Action] = []
                var handledSinceYield = 0
                // False once a write failed (the peer closed): packets it sent before closing are still
                // buffered inbound and are handled — a PUBLISH followed by DISCONNECT and close is
                // routed — but nothing more is written.
                var output = Output()
                defer {
                    if let error = output.error {
                        logger.debug("connection stopped writing", metadata: ["error": "\(error)"])
                    }
                }
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
                            if await perform(actions, connection: connection, handle: handle, outbound: outbound, output: &output) {
                                return
                            }
                        }
                        if connection.isConnected && output.open {
                            await writeQueued(connection: connection, channel: handle.channel, outbound: outbound, output: &output)
                        }
                        // A publisher whose packets are already buffered never suspends on `next()`, so it
                        // could keep a cooperative thread for thousands of packets while its subscribers'
                        // tasks wait and their queues overflow. Yield now and then to stay fair.
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
                _ = await perform(actions, connection: connection, handle: handle, outbound: outbound, output: &output)
            }
        } catch {
            logger.debug("connection ended with error", metadata: ["error": "\(error)"])
        }
        if let reason = handle.closeReason { cause = .server(reason) }
        connection.connectionClosed(cause: cause)
    }

    /// Whether the connection can still be written to, and the first write error.
    struct Output {
        var open = true
        var error: (any Error)?

        /// Runs one write; a failure closes the output (later writes are skipped) and is kept for the log.
        mutating func attempt(_ write: () async throws -> Void) async {
            guard open else { return }
            do {
                try await write()
            } catch {
                open = false
                self.error = error
            }
        }
    }

    /// Performs the core's actions in order. Returns true when the connection is to close.
    private func perform(
        _ actions: [ClientConnection.Action],
        connection: ClientConnection,
        handle: ChannelConnectionHandle,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        output: inout Output
    ) async -> Bool {
        for action in actions {
            switch action {
            case .send(let packet):
                await output.attempt {
                    try await outbound.write(packet.encode(version: connection.version, allocator: handle.channel.allocator))
                }
            case .keepAlive(let seconds):
                handle.connected(version: connection.version)
                await output.attempt {
                    try await handle.channel.triggerUserOutboundEvent(KeepAliveHandler.SetKeepAlive(seconds: seconds))
                }
            case .close:
                return true
            }
        }
        return false
    }

    /// Writes what the session has queued, in batches, while the socket is writable. When the socket
    /// fills up this returns; `ConnectionInputHandler` signals when it drains.
    private func writeQueued(
        connection: ClientConnection,
        channel: any Channel,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        output: inout Output
    ) async {
        let version = connection.version
        let metrics = broker.metrics
        var batch: [ByteBuffer] = []
        while channel.isWritable {
            batch.removeAll(keepingCapacity: true)
            while batch.count < Self.writeBatch, let packet = connection.nextOutboundPacket() {
                batch.append(packet.encode(version: version, allocator: channel.allocator))
                if case .publish(let publish) = packet {
                    metrics.messageSent(qos: publish.qos, bytes: publish.payload.readableBytes)
                }
            }
            if batch.isEmpty { return }
            await output.attempt { try await outbound.write(contentsOf: batch) }
            if !output.open || batch.count < Self.writeBatch { return }
        }
    }
}

import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import NIOWebSocket

/// Runs one JSON WebSocket API connection: the per-connection task.
///
/// The JSON client is a full MQTT participant: the task drives a ``ClientConnection`` with the packets
/// an MQTT 5 client would send (a synthesized CONNECT, then SUBSCRIBE, UNSUBSCRIBE and PUBLISH), so
/// sessions, limits, ACLs, back-pressure and metrics are the core's. MQTT 5 is used so that refusals
/// come back with reason codes the task turns into `error` replies.
///
/// Delivery: messages the session queues are pushed as `{"op":"message",...}` while the socket is
/// writable. QoS 1 deliveries are acknowledged to the core by the gateway itself, once the frame is
/// handed to the socket: the JSON session is clean (nothing survives a disconnect), so a client-side
/// acknowledgement could not make delivery any more certain, and the in-flight window still bounds
/// how much is written ahead of the socket.
struct JSONAPIConnectionRunner: Sendable {
    let broker: Broker
    let transport: GatewayMetrics.Transport
    let registry: ConnectionRegistry
    let logger: Logger
    /// The largest message accepted, as for an MQTT PUBLISH packet (bytes).
    let maxPacketSize: Int

    private static let writeBatch = 64

    func run(_ channel: NIOAsyncChannel<JSONAPIInput, ByteBuffer>, request: JSONAPIRequest, certificateName: String?) async {
        guard broker.admitConnection(transport: transport) else {
            logger.debug("connection refused: limit reached or draining")
            try? await channel.channel.triggerUserOutboundEvent(
                WebSocketProtocolHandler.CloseRequest(code: .unexpectedServerError, reason: "server unavailable")
            )
            try? await channel.executeThenClose { _, _ in }
            return
        }
        defer { broker.releaseConnection(transport: transport) }
        let handle = ChannelConnectionHandle(channel: channel.channel, isWebSocket: true)
        let token = registry.add(handle)
        defer { registry.remove(token) }

        var logger = self.logger
        logger[metadataKey: "iotgw.api"] = "json"
        let connection = ClientConnection(
            broker: broker,
            handle: handle,
            peer: channel.channel.remoteAddress,
            logger: logger
        )
        connection.transport = transport
        connection.isJSONAPI = true
        var cause = ClientConnection.CloseCause.connectionLost
        do {
            try await channel.executeThenClose { inbound, outbound in
                var session = APISession(broker: broker, connection: connection, channel: channel.channel, outbound: outbound, maxPacketSize: maxPacketSize)
                guard try await session.connect(request: request, certificateName: certificateName) else { return }
                for try await input in inbound {
                    if case .message(let text) = input {
                        if try await session.handle(Array(text.readableBytesView)) {
                            cause = .protocolError
                            return
                        }
                    }
                    try await session.writeQueued()
                }
            }
        } catch {
            logger.debug("connection ended with error", metadata: ["error": "\(error)"])
        }
        if let reason = handle.closeReason { cause = .server(reason) }
        connection.connectionClosed(cause: cause)
    }

    /// The state of one JSON API connection inside its task.
    private struct APISession {
        let broker: Broker
        let connection: ClientConnection
        let channel: any Channel
        let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
        let maxPacketSize: Int
        var nextPacketID: UInt16 = 0
        /// QoS 1 publishes awaiting their PUBACK (which may wait for a storage commit): packet id →
        /// the request id to answer.
        var pendingPublishes: [UInt16: [UInt8]] = [:]

        init(broker: Broker, connection: ClientConnection, channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, maxPacketSize: Int) {
            self.broker = broker
            self.connection = connection
            self.channel = channel
            self.outbound = outbound
            self.maxPacketSize = maxPacketSize
        }

        /// Sends the synthesized CONNECT; returns false (after telling the client why) when refused.
        mutating func connect(request: JSONAPIRequest, certificateName: String?) async throws -> Bool {
            let connect = MQTTConnectPacket(
                version: .v5,
                cleanStart: true,
                keepAlive: 0,
                clientIdentifier: request.clientID ?? "",
                username: certificateName ?? request.username,
                password: request.password.map { ByteBuffer(bytes: $0) }
            )
            // A certificate CN (verified against tls.ca_file) authenticates the client.
            connection.certificateIdentity = certificateName
            let actions = await connection.handle(.connect(connect))
            for action in actions {
                if case .send(.connack(let connack)) = action, connack.reasonCode.isFailure {
                    try await send(JSONAPIProtocol.error(id: JSONAPIProtocol.nullID, reason: "connection refused: \(JSONAPIProtocol.describe(connack.reasonCode))"))
                    try await channel.triggerUserOutboundEvent(
                        WebSocketProtocolHandler.CloseRequest(code: .policyViolation, reason: "connection refused")
                    )
                    return false
                }
            }
            guard connection.isConnected, let clientID = connection.clientID else { return false }
            try await send(JSONAPIProtocol.connected(clientID: clientID))
            return true
        }

        /// Handles one request; returns true when the connection is to close.
        mutating func handle(_ text: [UInt8]) async throws -> Bool {
            let message: JSONAPIRequestMessage
            switch JSONAPIProtocol.parse(text) {
            case .success(let parsed):
                message = parsed
            case .failure(let error):
                connection.logger.debug("bad JSON API request", metadata: ["reason": "\(error.reason)"])
                try await send(JSONAPIProtocol.error(id: error.id, reason: error.reason))
                return false
            }
            let id = message.id
            switch message.op {
            case .ping:
                try await send(JSONAPIProtocol.ack(id: id))
                return false
            case .subscribe(let filter, let qos):
                let packet = MQTTPacket.subscribe(
                    MQTTSubscribePacket(packetIdentifier: packetID(), subscriptions: [MQTTSubscription(topicFilter: filter, qos: qos)])
                )
                return try await perform(await connection.handle(packet), id: id) { packet in
                    guard case .suback(let suback) = packet, let code = suback.reasonCodes.first else { return nil }
                    if code.isFailure { return JSONAPIProtocol.error(id: id, reason: JSONAPIProtocol.describe(code)) }
                    return JSONAPIProtocol.ack(id: id, extra: [("qos", Array(String(code.rawValue).utf8))])
                }
            case .unsubscribe(let filter):
                let packet = MQTTPacket.unsubscribe(MQTTUnsubscribePacket(packetIdentifier: packetID(), topicFilters: [filter]))
                return try await perform(await connection.handle(packet), id: id) { packet in
                    guard case .unsuback(let unsuback) = packet, let code = unsuback.reasonCodes.first else { return nil }
                    if code.isFailure { return JSONAPIProtocol.error(id: id, reason: JSONAPIProtocol.describe(code)) }
                    return JSONAPIProtocol.ack(id: id)
                }
            case .publish(let topic, let payload, let qos, let retain):
                let configuration = broker.configuration
                if retain && !configuration.retainAvailable {
                    try await send(JSONAPIProtocol.error(id: id, reason: "retain not supported"))
                    return false
                }
                if Int(qos.rawValue) > configuration.maxQoS {
                    try await send(JSONAPIProtocol.error(id: id, reason: "qos not supported"))
                    return false
                }
                // The size the same message would have as an MQTT 5 PUBLISH (fixed header, topic,
                // packet id, empty properties): the same limit as for MQTT clients.
                if 5 + 2 + topic.utf8.count + 2 + 1 + payload.count > maxPacketSize {
                    try await send(JSONAPIProtocol.error(id: id, reason: "message too large"))
                    return false
                }
                if broker.isDraining {
                    try await send(JSONAPIProtocol.error(id: id, reason: "server shutting down"))
                    return false
                }
                let packetIdentifier = qos == .atMostOnce ? nil : packetID()
                let publish = MQTTPublishPacket(
                    topic: topic,
                    payload: ByteBuffer(bytes: payload),
                    qos: qos,
                    retain: retain,
                    packetIdentifier: packetIdentifier
                )
                let actions = await connection.handle(.publish(publish))
                if actions.isEmpty {
                    if let packetIdentifier {
                        // Answered when the core's PUBACK comes out of the connection's queue
                        // (`writeQueued`), after the storage commit when `ack: persisted`.
                        pendingPublishes[packetIdentifier] = id
                    } else {
                        try await send(JSONAPIProtocol.ack(id: id))
                    }
                    return false
                }
                return try await perform(actions, id: id) { packet in
                    guard case .puback(let ack) = packet else { return nil }
                    if ack.reasonCode.isFailure { return JSONAPIProtocol.error(id: id, reason: JSONAPIProtocol.describe(ack.reasonCode)) }
                    return JSONAPIProtocol.ack(id: id)
                }
            }
        }

        /// Turns the core's actions into replies. A close (a protocol violation the core detected)
        /// becomes an error reply and a close with 1008.
        private mutating func perform(
            _ actions: [ClientConnection.Action],
            id: [UInt8],
            _ translate: (MQTTPacket) -> [UInt8]?
        ) async throws -> Bool {
            var answered = false
            for action in actions {
                switch action {
                case .send(let packet):
                    if case .disconnect(let disconnect) = packet {
                        try await send(JSONAPIProtocol.error(id: id, reason: JSONAPIProtocol.describe(disconnect.reasonCode)))
                        try await channel.triggerUserOutboundEvent(
                            WebSocketProtocolHandler.CloseRequest(code: .policyViolation, reason: JSONAPIProtocol.describe(disconnect.reasonCode))
                        )
                        return true
                    }
                    if let text = translate(packet) {
                        try await send(text)
                        answered = true
                    }
                case .keepAlive:
                    break  // WebSocket pings watch liveness on this transport.
                case .close:
                    return true
                }
            }
            if !answered {
                try await send(JSONAPIProtocol.error(id: id, reason: "not accepted"))
            }
            return false
        }

        private mutating func packetID() -> UInt16 {
            nextPacketID = nextPacketID == UInt16.max ? 1 : nextPacketID + 1
            return nextPacketID
        }

        private func send(_ text: [UInt8]) async throws {
            try await outbound.write(channel.allocator.buffer(bytes: text))
        }

        /// Pushes what the session has queued while the socket is writable, and acknowledges QoS 1/2
        /// deliveries to the core once they are written.
        mutating func writeQueued() async throws {
            guard connection.isConnected else { return }
            var batch: [ByteBuffer] = []
            var delivered: [(UInt16, MQTTQoS)] = []
            while channel.isWritable {
                batch.removeAll(keepingCapacity: true)
                delivered.removeAll(keepingCapacity: true)
                let now = WallClock.millisecondsSinceEpoch()
                while batch.count < JSONAPIConnectionRunner.writeBatch, let packet = connection.nextOutboundPacket() {
                    switch packet {
                    case .publish(let publish):
                        var buffer = channel.allocator.buffer(capacity: 96 + publish.topic.utf8.count + publish.payload.readableBytes * 4 / 3)
                        JSONAPIProtocol.message(publish, timestampMilliseconds: now, into: &buffer)
                        batch.append(buffer)
                        broker.metrics.messageSent(qos: publish.qos, bytes: publish.payload.readableBytes)
                        if let id = publish.packetIdentifier { delivered.append((id, publish.qos)) }
                    case .pubrel(let release):
                        delivered.append((release.packetIdentifier, .exactlyOnce))
                    case .puback(let ack):
                        // The acknowledgement of one of this client's own QoS 1 publishes.
                        if let id = pendingPublishes.removeValue(forKey: ack.packetIdentifier) {
                            let reply = ack.reasonCode.isFailure
                                ? JSONAPIProtocol.error(id: id, reason: JSONAPIProtocol.describe(ack.reasonCode))
                                : JSONAPIProtocol.ack(id: id)
                            batch.append(channel.allocator.buffer(bytes: reply))
                        }
                    default:
                        break
                    }
                }
                if batch.isEmpty && delivered.isEmpty { return }
                if !batch.isEmpty { try await outbound.write(contentsOf: batch) }
                for (id, qos) in delivered {
                    switch qos {
                    case .atMostOnce:
                        break
                    case .atLeastOnce:
                        _ = await connection.handle(.puback(MQTTAckPacket(packetIdentifier: id)))
                    case .exactlyOnce:
                        // PUBREC releases the message; PUBCOMP ends the exchange (the PUBREL the core
                        // answers with is not sent anywhere).
                        _ = await connection.handle(.pubrec(MQTTAckPacket(packetIdentifier: id)))
                        _ = await connection.handle(.pubcomp(MQTTAckPacket(packetIdentifier: id)))
                    }
                }
            }
        }
    }
}

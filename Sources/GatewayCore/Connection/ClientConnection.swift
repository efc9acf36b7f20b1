public import Logging
public import MQTTCodec
public import NIOCore

/// The MQTT protocol logic of one client connection, without I/O.
///
/// The transport feeds it decoded packets and performs the ``Action``s it returns, in order. It owns no
/// socket and starts no task, so every rule here is testable with plain unit tests. One instance
/// belongs to one connection task; it is deliberately not `Sendable`.
public final class ClientConnection {
    /// What the transport must do, in order.
    public enum Action: Sendable {
        /// Encode and write a packet.
        case send(MQTTPacket)
        /// Enforce a keep-alive of this many seconds (0: none); the transport closes the connection when
        /// no packet arrives within 1.5 times that.
        case keepAlive(seconds: Int)
        /// Close the connection (after writing what came before).
        case close
    }

    /// How the connection ended, for the log and metrics.
    public enum CloseCause: Sendable {
        /// The socket closed or failed without DISCONNECT.
        case connectionLost
        /// A decode or protocol error.
        case protocolError
        /// No packet within 1.5 × keep alive.
        case keepAliveTimeout
        /// The server ended it (``ServerDisconnectReason``).
        case server(ServerDisconnectReason)
    }

    let broker: Broker
    let handle: any ConnectionHandle
    public private(set) var logger: ConnectionLogger
    /// The negotiated version (3.1.1 until CONNECT says otherwise).
    public private(set) var version: MQTTProtocolVersion = .v3_1_1
    /// The client id, once CONNECT was accepted.
    public var clientID: String? { session?.clientID }
    /// The peer's address as NIO prints it (`[IPv4]127.0.0.1/127.0.0.1:50000`), made when asked: CONNECT,
    /// a log line. The connection keeps the channel's `SocketAddress`, not a string of its own.
    var remoteAddress: String? { logger.peer?.description }
    private var session: Session?
    /// The configuration and authorizer this connection's PUBLISHes read: copied from the broker and
    /// copied again only after a change (``Broker/liveGeneration``), so a PUBLISH takes neither of their
    /// locks. Nil until the first PUBLISH: an idle connection carries no copy.
    private var live: LiveCopy?
    /// The subscribers this client's last PUBLISH went to, reused for the next one to the same topic while
    /// the subscriptions and the access control stay as they were. Nil until the first PUBLISH.
    private(set) var routeCache: RouteCache?
    private var owner: UInt64 = 0
    private var username: String?
    /// The will (boxed: most connections have none, and an inline optional took its full size in every
    /// connection).
    private var will: MQTTWill? {
        get { willBox?.will }
        set { willBox = newValue.map(WillBox.init) }
    }
    private var willBox: WillBox?
    private var gracefulDisconnect = false
    private var connectSessionExpiry: UInt32 = 0
    /// Inbound topic aliases (MQTT 5): alias → topic.
    private var topicAliases: [UInt16: String] = [:]
    /// The client's Maximum Packet Size (MQTT 5): larger messages are not sent to it (MQTT-3.1.2-25).
    private var clientMaximumPacketSize: Int?
    private let clock = ContinuousClock()
    /// Outbound topic aliases (MQTT 5): topic → alias, up to the client's Topic Alias Maximum.
    private var outboundAliases: [String: UInt16] = [:]
    private var clientTopicAliasMaximum: UInt16 = 0
    /// PUBACK/PUBREC packets in receive order; some wait for a storage commit. Made at the first QoS 1/2
    /// PUBLISH: a connection that only subscribes never has one.
    private var ackQueue: AckQueue?
    private var acks: AckQueue {
        if let ackQueue { return ackQueue }
        let made = AckQueue()
        ackQueue = made
        return made
    }
    /// Holds this publisher back while a subscriber it fed is full (back-pressure); made on the first
    /// PUBLISH, so a connection that only subscribes never has one.
    private lazy var throttle = ReadThrottle(handle: handle, metrics: broker.metrics)
    /// The CN of the client certificate the TLS layer verified, when the transport made it the CONNECT
    /// username (`tls.use_cn_as_username`); set before the CONNECT is handled. The authenticator then
    /// accepts the client by its certificate.
    public var certificateIdentity: String?
    /// Set by the transport when the peer's address already holds `limits.max_connections_per_address`
    /// connections: the CONNECT is refused (0x97 / 3).
    public var overAddressLimit = false
    /// The listener's transport, set by the transport before CONNECT; the admin API lists it.
    public var transport: GatewayMetrics.Transport?
    /// Set by the JSON WebSocket API, whose clients the admin API lists with protocol `json`.
    public var isJSONAPI = false

    /// - Parameters:
    ///   - broker: the broker core.
    ///   - handle: how the broker ends this connection (takeover, slow consumer, shutdown).
    ///   - peer: the peer's address (the channel's), for logs, address limits and the admin API.
    ///   - logger: the transport's logger; connection metadata is added here.
    public init(broker: Broker, handle: any ConnectionHandle, peer: SocketAddress?, logger: Logger) {
        self.broker = broker
        self.handle = handle
        self.logger = ConnectionLogger(base: logger, peer: peer)
    }

    /// Whether CONNECT was accepted.
    public var isConnected: Bool { session != nil }

    // MARK: Inbound packets

    /// Handles one decoded packet.
    ///
    /// Only CONNECT and PUBLISH can suspend (authentication, session restore, a storage commit); each has
    /// an async function of its own and every other packet is handled synchronously, so the frame a
    /// connection's task keeps for this call (a task keeps its deepest frames for its whole life) holds
    /// little more than the packet.
    public func handle(_ packet: MQTTPacket) async -> [Action] {
        if let actions = handleSynchronously(packet) { return actions }
        return await handleSuspending(packet)
    }

    /// Handles a packet that ``handleSynchronously(_:)`` returned nil for.
    public func handleSuspending(_ packet: MQTTPacket) async -> [Action] {
        switch packet {
        case .publish(let publish):
            return await handlePublish(publish)
        case .connect(let connect) where session == nil:
            return await handleConnect(connect)
        default:
            return handleSynchronously(packet) ?? []
        }
    }

    /// Handles `packet` without suspending, or returns nil for the two that may suspend: the first CONNECT
    /// and a PUBLISH (``handle(_:)`` then does).
    @inline(never)
    public func handleSynchronously(_ packet: MQTTPacket) -> [Action]? {
        logger.trace("received packet", metadata: ["mqtt.packet.type": "\(packet.type)"])
        guard let session else {
            guard case .connect = packet else {
                return protocolViolation("first packet is \(packet.type), not CONNECT")
            }
            return nil
        }
        if case .publish = packet { return nil }
        return handleControl(packet, session: session)
    }

    /// Handles a packet of a connected client other than PUBLISH.
    @inline(never)
    private func handleControl(_ packet: MQTTPacket, session: Session) -> [Action] {
        switch packet {
        case .connect:
            return protocolViolation("second CONNECT")
        case .publish:
            // Never reached: handleSynchronously leaves PUBLISH to handlePublish.
            assertionFailure("PUBLISH is handled by handlePublish")
            return []
        case .puback(let ack):
            if !session.acknowledge(puback: ack.packetIdentifier) {
                logger.debug("PUBACK for unknown packet id", metadata: ["mqtt.packet.id": "\(ack.packetIdentifier)"])
            }
            return []
        case .pubrec(let ack):
            if ack.reasonCode.isFailure {
                // MQTT 5: a failed PUBREC ends the exchange; treat it like PUBCOMP.
                _ = session.acknowledge(pubrec: ack.packetIdentifier)
                _ = session.acknowledge(pubcomp: ack.packetIdentifier)
                return []
            }
            let known = session.acknowledge(pubrec: ack.packetIdentifier)
            let code: MQTTReasonCode = known || version == .v3_1_1 ? .success : .packetIdentifierNotFound
            return [.send(.pubrel(MQTTAckPacket(packetIdentifier: ack.packetIdentifier, reasonCode: code)))]
        case .pubrel(let ack):
            let known = session.releasedQoS2(packetID: ack.packetIdentifier)
            let code: MQTTReasonCode = known || version == .v3_1_1 ? .success : .packetIdentifierNotFound
            return [.send(.pubcomp(MQTTAckPacket(packetIdentifier: ack.packetIdentifier, reasonCode: code)))]
        case .pubcomp(let ack):
            _ = session.acknowledge(pubcomp: ack.packetIdentifier)
            return []
        case .subscribe(let subscribe):
            return handleSubscribe(subscribe, session: session)
        case .unsubscribe(let unsubscribe):
            let codes = broker.unsubscribe(unsubscribe.topicFilters, session: session)
            return [.send(.unsuback(MQTTSubAckPacket(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: codes)))]
        case .pingreq:
            return [.send(.pingresp)]
        case .disconnect(let disconnect):
            return handleDisconnect(disconnect, session: session)
        case .auth:
            // Enhanced authentication is not offered (no Authentication Method is accepted in CONNECT),
            // so an AUTH packet is a protocol error (MQTT-4.12.0-1).
            return protocolViolation("AUTH without an authentication method")
        case .connack, .suback, .unsuback, .pingresp:
            return protocolViolation("\(packet.type) sent by a client")
        }
    }

    /// Handles a packet that failed to decode: answers with the right code where the protocol has one,
    /// logs it, and closes.
    public func handleDecodeError(_ error: MQTTCodecError) -> [Action] {
        broker.metrics.malformedPacket()
        broker.logLimited(.badPacket, address: remoteAddress) {
            logger.info(
                "closing connection after bad packet",
                metadata: ["error": "\(error)", "mqtt.reason_code": "\(error.reasonCode)"]
            )
        }
        if error.code == .unsupportedProtocolVersion && session == nil {
            // MQTT-3.1.2-2: answer an unsupported level with return code 1 (0x01 is also what an MQTT 5
            // client reads as "unsupported" when it sees a 3.1.1-format CONNACK), then close.
            broker.metrics.connectRejected(returnCode: 1)
            return [
                .send(.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(1)))),
                .close,
            ]
        }
        broker.metrics.disconnected(.protocolError)
        return disconnect(with: error.reasonCode)
    }

    /// Handles the keep-alive timer firing: MQTT 5 clients are told 0x8D, then the connection closes.
    public func keepAliveExpired() -> [Action] {
        logger.debug("keep alive expired")
        return disconnect(with: .keepAliveTimeout)
    }

    /// The packet that tells an MQTT 5 client why the server closes the connection (nil for 3.1.1, which
    /// has no server DISCONNECT).
    public func serverDisconnectPacket(_ reason: ServerDisconnectReason) -> MQTTPacket? {
        version == .v5 && session != nil ? .disconnect(MQTTReasonPacket(reasonCode: reason.reasonCode)) : nil
    }

    /// Cleans up once the connection has ended: publishes the Will unless the client disconnected
    /// normally, and releases (or discards) the session.
    public func connectionClosed(cause: CloseCause) {
        guard let session else { return }
        if !gracefulDisconnect {
            switch cause {
            case .connectionLost: broker.metrics.disconnected(.connectionLost)
            case .protocolError: break  // counted where it was detected
            case .keepAliveTimeout: broker.metrics.disconnected(.keepAliveTimeout)
            case .server(let reason): broker.metrics.disconnected(reason.metricReason)
            }
        }
        broker.closeSession(session, owner: owner)
        if let will {
            // After the session was released, so a takeover (the session already owned again) is seen.
            publishWill(will, honourDelay: version == .v5)
        }
        self.session = nil
        logger.debug("connection closed", metadata: ["iotgw.close.cause": "\(cause)"])
    }

    // MARK: CONNECT

    // Not inlined into `handle`: an async function's frame holds every local its inlined callees keep
    // across a suspension, and the connection task keeps the largest frame chain it ever used (the
    // task allocator does not give slabs back). CONNECT and PUBLISH get frames of their own.
    @inline(never)
    private func handleConnect(_ connect: MQTTConnectPacket) async -> [Action] {
        version = connect.version
        if overAddressLimit {
            broker.metrics.refusedByFloodLimit(.addressLimit)
            return rejectConnect(.serverUnavailable, v5: .quotaExceeded, "too many connections from this address")
        }
        if let remoteAddress, !broker.takeConnectToken(address: remoteAddress) {
            broker.metrics.refusedByFloodLimit(.connectRate)
            return rejectConnect(.serverUnavailable, v5: .connectionRateExceeded, "CONNECT rate of this address exceeded")
        }
        let configuration = broker.configuration
        var clientID = connect.clientIdentifier
        var assigned: String?
        if clientID.isEmpty {
            if version == .v3_1_1 && !connect.cleanStart {
                // MQTT-3.1.3-8: an empty id requires clean session 1.
                return rejectConnect(.identifierRejected, v5: .clientIdentifierNotValid, "empty client id with clean session 0")
            }
            clientID = "iotgw-" + Self.randomIdentifier()
            if version == .v5 { assigned = clientID }
        }
        guard clientID.utf8.count <= configuration.maxClientIDLength else {
            return rejectConnect(.identifierRejected, v5: .clientIdentifierNotValid, "client id longer than \(configuration.maxClientIDLength) bytes")
        }
        if clientID.hasPrefix(InternalClient.reservedPrefix) {
            // The bridges' own sessions live under `$bridge/`; a network client taking one over would
            // receive (and acknowledge away) what is queued for an upstream.
            return rejectConnect(.identifierRejected, v5: .clientIdentifierNotValid, "client ids starting with \(InternalClient.reservedPrefix) are reserved")
        }
        logger.clientID = clientID
        if connect.properties.authenticationMethod != nil {
            return rejectConnect(.notAuthorized, v5: .badAuthenticationMethod, "enhanced authentication is not supported")
        }
        if let will = connect.will {
            if will.qos.rawValue > configuration.maxQoS && version == .v5 {
                return rejectConnect(.notAuthorized, v5: .qosNotSupported, "will QoS \(will.qos.rawValue) above the maximum")
            }
            if will.retain && !configuration.retainAvailable && version == .v5 {
                return rejectConnect(.notAuthorized, v5: .retainNotSupported, "retained will but retain is not available")
            }
        }
        let verdict = await broker.authenticator.authenticate(
            ConnectCredentials(
                clientID: clientID,
                username: connect.username,
                password: connect.password,
                remoteAddress: remoteAddress,
                certificateIdentity: certificateIdentity.flatMap { $0 == connect.username ? $0 : nil }
            )
        )
        switch verdict {
        case .accepted(let name):
            username = name
        case .badCredentials:
            return rejectConnect(.badUsernameOrPassword, v5: .badUserNameOrPassword, "bad username or password")
        case .notAuthorized:
            return rejectConnect(.notAuthorized, v5: .notAuthorized, "not authorized")
        case .unavailable:
            return rejectConnect(.serverUnavailable, v5: .serverUnavailable, "authentication unavailable")
        case .throttled:
            return rejectConnect(.notAuthorized, v5: .connectionRateExceeded, "too many failed logins from this address")
        }
        if let will = connect.will,
            !broker.authorizer.isAllowed(.publish, topic: will.topic, clientID: clientID, username: username)
        {
            return rejectConnect(.notAuthorized, v5: .notAuthorized, "will topic not allowed")
        }

        let persistent: Bool
        let expiry: Double?
        switch version {
        case .v3_1_1:
            persistent = !connect.cleanStart
            expiry = configuration.sessionExpiry
        case .v5:
            let interval = connect.properties.sessionExpiryInterval ?? 0
            connectSessionExpiry = interval
            persistent = interval > 0
            expiry = interval == UInt32.max ? nil : Double(interval)
        }
        guard
            let opened = broker.openSession(
                clientID: clientID,
                username: username,
                cleanStart: connect.cleanStart,
                persistent: persistent,
                expiryInterval: expiry,
                clientReceiveMaximum: Int(connect.properties.receiveMaximum ?? UInt16.max),
                handle: handle,
                connectionInfo: ConnectionInfo(
                    peer: logger.peer,
                    transport: transport,
                    protocolName: isJSONAPI ? "json" : (version == .v5 ? "5.0" : "3.1.1"),
                    connectedAt: WallClock.millisecondsSinceEpoch()
                )
            )
        else {
            return rejectConnect(.serverUnavailable, v5: .serverUnavailable, "gateway is shutting down")
        }
        session = opened.session
        owner = opened.owner
        will = connect.will

        var keepAlive = Int(connect.keepAlive)
        var properties = MQTTProperties()
        if version == .v5 {
            properties.assignedClientIdentifier = assigned
            if configuration.maxKeepAlive > 0 && (keepAlive == 0 || keepAlive > configuration.maxKeepAlive) {
                keepAlive = configuration.maxKeepAlive
                properties.serverKeepAlive = UInt16(keepAlive)
            }
            if configuration.maxQoS < 2 { properties.maximumQoS = UInt8(configuration.maxQoS) }
            if !configuration.retainAvailable { properties.retainAvailable = 0 }
            properties.maximumPacketSize = UInt32(configuration.maxPacketSize)
            if configuration.topicAliasMaximum > 0 { properties.topicAliasMaximum = UInt16(configuration.topicAliasMaximum) }
            if configuration.receiveMaximum < 65_535 { properties.receiveMaximum = UInt16(configuration.receiveMaximum) }
            properties.wildcardSubscriptionAvailable = 1
            properties.subscriptionIdentifierAvailable = 1
            properties.sharedSubscriptionAvailable = 1
        }
        broker.metrics.connectAccepted()
        logger.debug(
            "client connected",
            metadata: [
                "mqtt.protocol.version": "\(version)", "mqtt.clean_start": "\(connect.cleanStart)",
                "mqtt.keep_alive": "\(keepAlive)", "mqtt.session_present": "\(opened.sessionPresent)",
            ]
        )
        let connack = MQTTConnAckPacket(
            sessionPresent: opened.sessionPresent && !connect.cleanStart,
            reasonCode: .success,
            properties: properties
        )
        clientMaximumPacketSize = connect.properties.maximumPacketSize.map(Int.init)
        clientTopicAliasMaximum = version == .v5 ? connect.properties.topicAliasMaximum ?? 0 : 0
        return [.send(.connack(connack)), .keepAlive(seconds: keepAlive)]
    }

    private func rejectConnect(_ code: MQTTConnectReturnCode, v5: MQTTReasonCode, _ why: String) -> [Action] {
        broker.logLimited(.refusedConnect, address: remoteAddress) {
            logger.info("connection refused", metadata: ["reason": "\(why)"])
        }
        broker.metrics.connectRejected(returnCode: code.rawValue)
        let reason = version == .v5 ? v5 : MQTTReasonCode(code.rawValue)
        return [.send(.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: reason))), .close]
    }

    private static func randomIdentifier() -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    // MARK: PUBLISH

    private final class LiveCopy {
        let generation: UInt64
        let configuration: BrokerConfiguration
        let authorizer: any Authorizer

        init(generation: UInt64, configuration: BrokerConfiguration, authorizer: any Authorizer) {
            self.generation = generation
            self.configuration = configuration
            self.authorizer = authorizer
        }
    }

    /// ``live``, copied again if the broker's configuration or access control changed since.
    private func liveCopy() -> LiveCopy {
        // The generation is read before the values: a change racing with this copy bumps it again
        // afterwards, so a stale copy is replaced at the next PUBLISH.
        let generation = broker.liveGeneration
        if let live, live.generation == generation { return live }
        let copy = LiveCopy(generation: generation, configuration: broker.configuration, authorizer: broker.authorizer)
        live = copy
        return copy
    }

    /// What is left of a PUBLISH once it was checked: the waits (session store room, the telemetry queue),
    /// the routing and the acknowledgement.
    ///
    /// PUBLISH is the one packet a connected client's task may suspend in, and a task keeps the frames of
    /// its deepest chain for its whole life: the checks and the routing are synchronous functions of
    /// their own, so what the suspending function holds across its waits is this and little more (the
    /// whole function was a 5.4 KiB frame, which every publishing connection kept).
    fileprivate struct PublishStep {
        var message: Message
        /// Set when the message is refused (MQTT 5 says why in the acknowledgement).
        var failure: MQTTReasonCode?
        /// False for a QoS 2 retransmission (same id before PUBREL): acknowledged again, not routed.
        var isNew: Bool
        /// The acknowledgement's slot, taken at receipt so acknowledgements leave in receive order.
        var ackSlot: UInt64?
        var gate: CommitGate?
        /// The telemetry row, when the topic is stored.
        var record: TelemetryRecord?
    }

    /// What ``checkPublish(_:session:)`` decided.
    private enum PublishCheck {
        /// Done: these are the actions (a refusal that closes, or nothing while draining).
        case answered([Action])
        /// Go on with this.
        case proceed(PublishStep)
    }

    /// Handles a PUBLISH of a connected client (what ``handleSuspending(_:)`` does with one, without the
    /// frame of a whole packet).
    @inline(never)
    public func handlePublish(_ publish: MQTTPublishPacket) async -> [Action] {
        switch handlePublishWithoutWaiting(publish) {
        case .done(let actions): return actions
        case .mustWait(let pending): return await finishPublish(pending)
        }
    }

    /// What ``handlePublishWithoutWaiting(_:)`` did with a PUBLISH.
    public enum PublishOutcome: Sendable {
        /// Handled: these are the actions.
        case done([Action])
        /// Checked, but routing it has to wait for room (the session store's queue over its caps, or a full
        /// telemetry queue with `overflow: backpressure`): ``finishPublish(_:)`` does the rest.
        case mustWait(PendingPublish)
    }

    /// A PUBLISH checked by ``handlePublishWithoutWaiting(_:)`` that waits for room before it is routed.
    public struct PendingPublish: Sendable {
        fileprivate let publish: MQTTPublishPacket
        fileprivate let step: PublishStep
        fileprivate let session: Session
    }

    /// Handles a PUBLISH when nothing on its way needs a wait — the common case: no storage, or room in the
    /// queues — so that a connection's event loop can take it the moment it is read, without waking the
    /// connection's task. Otherwise the checks are done (topic alias, limits, authorization, the
    /// acknowledgement's slot) and the rest is left to ``finishPublish(_:)``, which must be called next.
    public func handlePublishWithoutWaiting(_ publish: MQTTPublishPacket) -> PublishOutcome {
        guard let session else { return .done(protocolViolation("PUBLISH before CONNECT")) }
        var step: PublishStep
        switch checkPublish(publish, session: session) {
        case .answered(let actions): return .done(actions)
        case .proceed(let checked): step = checked
        }
        if step.failure == nil && step.isNew, let journal = broker.journal, !journal.hasRoom {
            return .mustWait(PendingPublish(publish: publish, step: step, session: session))
        }
        if let record = step.record, let ingest = broker.ingest {
            let gate = step.gate
            guard let result = ingest.trySubmit(record, onCommit: { gate?.hold() }) else {
                return .mustWait(PendingPublish(publish: publish, step: step, session: session))
            }
            if result == .rejected, let actions = refuseForFullIngest(publish, step: &step, session: session) {
                return .done(actions)
            }
        }
        return .done(routeAndAcknowledge(publish, step: step, session: session))
    }

    /// Waits for room for a PUBLISH that ``handlePublishWithoutWaiting(_:)`` left pending, then routes and
    /// acknowledges it (back-pressure: the publisher's task waits here, and its socket is not read meanwhile).
    public func finishPublish(_ pending: PendingPublish) async -> [Action] {
        let session = pending.session
        var step = pending.step
        if step.failure == nil && step.isNew, let journal = broker.journal {
            // The session store's write-behind queue is over its caps: stop reading this publisher.
            await journal.waitForRoom()
        }
        if let record = step.record, let ingest = broker.ingest {
            let result = await ingest.submit(record, onCommit: step.gate?.hold())
            if result == .rejected, let actions = refuseForFullIngest(pending.publish, step: &step, session: session) {
                return actions
            }
        }
        return routeAndAcknowledge(pending.publish, step: step, session: session)
    }

    /// The checks of a PUBLISH (topic alias, limits, authorization) and what they decide.
    @inline(never)
    private func checkPublish(_ publish: MQTTPublishPacket, session: Session) -> PublishCheck {
        let live = liveCopy()
        if broker.isDraining {
            // Draining: take in nothing new. The PUBLISH is neither routed nor acknowledged, so the
            // client still owns it and will send it again (to us after a restart, or elsewhere).
            logger.trace("ignoring PUBLISH while draining")
            return .answered([])
        }
        var topic = publish.topic
        if version == .v5 {
            if let alias = publish.properties.topicAlias {
                guard alias <= live.configuration.topicAliasMaximum else {
                    return .answered(disconnectForViolation(.topicAliasInvalid, "topic alias \(alias) above the maximum"))
                }
                if topic.isEmpty {
                    guard let known = topicAliases[alias] else {
                        return .answered(disconnectForViolation(.protocolError, "unknown topic alias \(alias)"))
                    }
                    topic = known
                } else {
                    topicAliases[alias] = topic
                }
            } else if topic.isEmpty {
                return .answered(disconnectForViolation(.protocolError, "empty topic without a topic alias"))
            }
            if publish.qos.rawValue > live.configuration.maxQoS {
                return .answered(disconnectForViolation(.qosNotSupported, "PUBLISH QoS \(publish.qos.rawValue) above the maximum"))
            }
            if publish.retain && !live.configuration.retainAvailable {
                return .answered(disconnectForViolation(.retainNotSupported, "retained PUBLISH but retain is not available"))
            }
        }
        // Receive Maximum (MQTT 5 section 4.9) counts QoS 1 PUBLISHes not yet answered with PUBACK and QoS 2
        // ones not yet completed with PUBCOMP. The QoS 2 ids held, and the acknowledgements not yet sent
        // (QoS 1 PUBACKs waiting for their commit, and PUBRECs), each count a part of that without
        // overlap beyond the PUBRECs: the larger of the two never exceeds the true count, so a client
        // within its quota is never disconnected.
        if publish.qos != .atMostOnce && version == .v5
            && max(session.inboundQoS2Count, ackQueue?.count ?? 0) >= live.configuration.receiveMaximum
        {
            return .answered(
                disconnectForViolation(
                    .receiveMaximumExceeded,
                    "more than \(live.configuration.receiveMaximum) QoS 1 and 2 messages unacknowledged"
                )
            )
        }
        broker.metrics.messageReceived(qos: publish.qos, bytes: publish.payload.readableBytes)

        var failure: MQTTReasonCode?
        if version == .v5 && publish.properties.payloadFormatIndicator == 1
            && String(validating: publish.payload.readableBytesView, as: UTF8.self) == nil
        {
            failure = .payloadFormatInvalid
        } else if topic == "$SYS" || topic.hasPrefix("$SYS/") {
            // $SYS/ belongs to the gateway's own statistics; clients may read it, not write it.
            logger.debug("PUBLISH to $SYS refused", metadata: ["mqtt.topic": "\(topic)"])
            failure = .notAuthorized
        } else if !live.authorizer.isAllowed(.publish, topic: topic, clientID: session.clientID, username: username) {
            logger.debug("PUBLISH not authorized", metadata: ["mqtt.topic": "\(topic)"])
            failure = .notAuthorized
        }

        let payload = publish.payload.compacted()
        // The acknowledgement's slot is taken now, so acknowledgements leave in receive order even when
        // this one waits for a storage commit.
        let ackSlot: UInt64? = publish.qos == .atMostOnce ? nil : acks.reserve()
        // With `ack: persisted` the acknowledgement waits for every commit the message causes: its
        // telemetry row and each copy stored for a persistent session (and a retained change).
        var gate: CommitGate?
        if failure == nil, broker.acknowledgesAfterCommit, let slot = ackSlot {
            let acks = self.acks
            let handle = self.handle
            gate = CommitGate {
                if acks.complete(slot) { handle.deliveryAvailable() }
            }
        }
        var properties = publish.properties
        // Each assignment rebuilds the list: only when there is something to remove.
        if properties.topicAlias != nil { properties.topicAlias = nil }
        if !properties.subscriptionIdentifiers.isEmpty { properties.subscriptionIdentifiers = [] }
        let message = Message(
            topic: topic,
            payload: payload,
            qos: publish.qos,
            retain: publish.retain && live.configuration.retainAvailable,
            properties: properties,
            publisherClientID: session.clientID,
            expiresAt: publish.properties.messageExpiryInterval.map { clock.now.advanced(by: .seconds(Int64($0))) }
        )
        // Route (and store) on first receipt only; a QoS 2 retransmission (same id before PUBREL)
        // is just acknowledged again.
        let isNew = failure == nil
            && (publish.qos != .exactlyOnce || session.receivedQoS2(packetID: publish.packetIdentifier!, dup: publish.dup))
        var record: TelemetryRecord?
        if isNew, let ingest = broker.ingest, ingest.stores(topic: topic) {
            record = TelemetryRecord(
                receivedAt: WallClock.millisecondsSinceEpoch(),
                clientID: session.clientID,
                topic: topic,
                qos: publish.qos,
                retain: publish.retain,
                payload: payload,
                properties: version == .v5 && !properties.isEmpty ? Self.encoded(properties) : nil
            )
        }
        return .proceed(PublishStep(message: message, failure: failure, isNew: isNew, ackSlot: ackSlot, gate: gate, record: record))
    }

    /// The telemetry queue refused a message (`storage.queue.overflow: reject`). Returns the actions
    /// when the publisher is disconnected (MQTT 3.1.1 cannot refuse a message); otherwise `step` carries
    /// the refusal to the acknowledgement.
    @inline(never)
    private func refuseForFullIngest(_ publish: MQTTPublishPacket, step: inout PublishStep, session: Session) -> [Action]? {
        guard publish.qos != .atMostOnce else { return nil }
        step.failure = .quotaExceeded
        step.gate = nil
        if version == .v3_1_1 {
            // 3.1.1 cannot refuse a message; the publisher is disconnected instead and will send it again
            // when it reconnects (nothing was acknowledged).
            _ = session.releasedQoS2(packetID: publish.packetIdentifier!)
            logger.notice("ingest queue full: disconnecting publisher (overflow: reject)")
            broker.metrics.disconnected(.slowConsumer)
            return [.close]
        }
        return nil
    }

    /// Routes an accepted message and acknowledges the PUBLISH (at once, or through the commit gate).
    @inline(never)
    private func routeAndAcknowledge(_ publish: MQTTPublishPacket, step: PublishStep, session: Session) -> [Action] {
        var matched = 0
        /// A new QoS 2 message that was routed: its packet id is stored before PUBREC (``Session/storeInboundQoS2``).
        var routedQoS2 = false
        var gate = step.gate
        if step.failure == nil {
            if step.isNew {
                if routeCache == nil { routeCache = RouteCache() }
                matched = broker.publish(step.message, onPersisted: gate, throttle: throttle, route: routeCache)
            } else {
                matched = 1
            }
            routedQoS2 = step.isNew && publish.qos == .exactlyOnce
        } else {
            gate = nil
        }
        // MQTT 3.1.1 has no negative acknowledgement: a refused message is acknowledged and dropped
        // (section 3.3.5); MQTT 5 says why in the reason code.
        let code: MQTTReasonCode =
            version == .v5 ? (step.failure ?? (matched == 0 ? .noMatchingSubscribers : .success)) : .success
        guard let ackSlot = step.ackSlot, let packetID = publish.packetIdentifier else { return [] }
        let ack: MQTTPacket
        if publish.qos == .atLeastOnce {
            ack = .puback(MQTTAckPacket(packetIdentifier: packetID, reasonCode: code))
        } else {
            if step.failure != nil {
                // A failed PUBREC ends the exchange: forget the id so a new message may reuse it.
                _ = session.releasedQoS2(packetID: packetID)
            }
            ack = .pubrec(MQTTAckPacket(packetIdentifier: packetID, reasonCode: code))
        }
        if let gate {
            // The batch writers mark the slot committed (possibly already have); until then it holds
            // the acknowledgement's place in line. Releasing the creator's hold lets the gate open.
            acks.setPacket(ackSlot, ack)
            if routedQoS2 {
                // The packet id is stored only after the message's own rows, so a stored id always means
                // a stored message: after a restart its retransmission is a duplicate, never a loss.
                gate.release { open in session.storeInboundQoS2(packetID: packetID, onCommit: open) }
            } else {
                gate.release()
            }
        } else {
            _ = acks.complete(ackSlot, with: ack)
        }
        return []
    }

    private static func encoded(_ properties: MQTTProperties) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        properties.write(to: &buffer)
        return buffer
    }

    private func publishWill(_ will: MQTTWill, honourDelay: Bool) {
        guard let clientID,
            broker.authorizer.isAllowed(.publish, topic: will.topic, clientID: clientID, username: username)
        else { return }
        let now = clock.now
        var properties = will.properties
        let delay = properties.willDelayInterval ?? 0
        properties.willDelayInterval = nil
        let message = Message(
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain && broker.configuration.retainAvailable,
            properties: properties,
            publisherClientID: clientID,
            expiresAt: will.properties.messageExpiryInterval.map { now.advanced(by: .seconds(Int64($0))) }
        )
        if honourDelay && delay > 0 {
            // The session outlives the connection for its expiry interval; the Will waits for the
            // delay or the end of the session, whichever comes first (MQTT 5 section 3.1.2.5).
            let expiry: Double? = connectSessionExpiry == UInt32.max ? nil : Double(connectSessionExpiry)
            broker.scheduleWill(message, clientID: clientID, delay: Double(delay), sessionExpiry: expiry)
        } else {
            broker.publish(message)
        }
        logger.debug("will published or scheduled", metadata: ["mqtt.topic": "\(will.topic)", "mqtt.will.delay": "\(delay)"])
    }

    // MARK: SUBSCRIBE, DISCONNECT

    private func handleSubscribe(_ subscribe: MQTTSubscribePacket, session: Session) -> [Action] {
        if subscribe.subscriptions.contains(where: { $0.noLocal && MQTTTopic.parseShared($0.topicFilter) != nil }) {
            // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
            return protocolViolation("No Local on a shared subscription")
        }
        let result = broker.subscribe(subscribe, session: session, username: username, version: version)
        // Retained messages go to the session queue now; the connection task writes queued messages
        // only after performing these actions, so they follow the SUBACK on the wire.
        broker.deliverRetained(result.retained, to: session)
        return [.send(.suback(MQTTSubAckPacket(packetIdentifier: subscribe.packetIdentifier, reasonCodes: result.reasonCodes)))]
    }

    private func handleDisconnect(_ disconnect: MQTTReasonPacket, session: Session) -> [Action] {
        gracefulDisconnect = true
        if version == .v5 {
            if let interval = disconnect.properties.sessionExpiryInterval {
                if connectSessionExpiry == 0 && interval > 0 {
                    // MQTT-3.14.2-2: a session that was not persistent cannot become persistent now.
                    gracefulDisconnect = false
                    return disconnectForViolation(.protocolError, "session expiry set on DISCONNECT after 0 on CONNECT")
                }
                broker.updateSessionExpiry(session, interval: interval)
                connectSessionExpiry = interval
            }
        }
        broker.metrics.disconnected(.clientDisconnect)
        if !(version == .v5 && disconnect.reasonCode == .disconnectWithWillMessage) {
            // A normal DISCONNECT discards the Will; 0x04 asks for it anyway (sent once the session is released).
            will = nil
        }
        logger.debug("client disconnected")
        return [.close]
    }

    // MARK: Errors

    private func protocolViolation(_ why: String) -> [Action] {
        broker.metrics.disconnected(.protocolError)
        broker.logLimited(.protocolViolation, address: remoteAddress) {
            logger.info("closing connection after protocol violation", metadata: ["reason": "\(why)"])
        }
        return disconnect(with: .protocolError)
    }

    private func disconnectForViolation(_ code: MQTTReasonCode, _ why: String) -> [Action] {
        broker.metrics.disconnected(.protocolError)
        broker.logLimited(.protocolViolation, address: remoteAddress) {
            logger.info("closing connection after protocol violation", metadata: ["reason": "\(why)", "mqtt.reason_code": "\(code)"])
        }
        return disconnect(with: code)
    }

    private func disconnect(with code: MQTTReasonCode) -> [Action] {
        if version == .v5 && session != nil {
            return [.send(.disconnect(MQTTReasonPacket(reasonCode: code))), .close]
        }
        return [.close]
    }
}

extension Broker {
    /// Whether QoS 1/2 acknowledgements wait for their commits (`storage.ack: persisted`).
    var acknowledgesAfterCommit: Bool {
        ingest?.configuration.ack == .persisted
    }

    /// Applies a new Session Expiry Interval sent in an MQTT 5 DISCONNECT.
    func updateSessionExpiry(_ session: Session, interval: UInt32) {
        session.setExpiry(persistent: interval > 0, interval: interval == UInt32.max ? nil : Double(interval))
    }
}

extension ClientConnection {
    /// Replaces the topic by a topic alias when the MQTT 5 client accepts aliases: the first message on a
    /// topic carries topic and new alias, later ones only the alias (MQTT 5 section 3.3.2.3.4). Aliases
    /// are per connection, so a reconnect starts afresh.
    private func applyingOutboundAlias(_ publish: MQTTPublishPacket) -> MQTTPublishPacket {
        guard clientTopicAliasMaximum > 0 else { return publish }
        var publish = publish
        // Aliases are this connection's own: its bytes differ from the other receivers'.
        publish.sharedEncoding = nil
        if let alias = outboundAliases[publish.topic] {
            publish.properties.topicAlias = alias
            publish.topic = ""
        } else if outboundAliases.count < Int(clientTopicAliasMaximum) {
            let alias = UInt16(outboundAliases.count + 1)
            outboundAliases[publish.topic] = alias
            publish.properties.topicAlias = alias
        }
        return publish
    }

    /// The next packet the session has for this connection, or nil when there is nothing to send now
    /// (the session then wakes the connection through ``ConnectionHandle/deliveryAvailable()`` when a
    /// message arrives) or the session was taken over.
    ///
    /// The connection task calls this after every inbound packet and every wake-up, and writes what it
    /// returns; acknowledgements free the in-flight window on the same task, so no other wake-up is needed.
    /// Removes and returns the acknowledgements ready to be written (in order). ``nextOutboundPacket()``
    /// returns these first too; this variant lets tests see acknowledgements apart from deliveries.
    package func takeReadyAcknowledgements() -> [MQTTPacket] {
        var packets: [MQTTPacket] = []
        while let ack = ackQueue?.popReady() { packets.append(ack) }
        return packets
    }

    public func nextOutboundPacket() -> MQTTPacket? {
        if let ack = ackQueue?.popReady() { return ack }
        guard let session else { return nil }
        while true {
            switch session.nextOutbound(owner: owner, now: clock.now) {
            case .wait, .finished:
                return nil
            case .item(.pubrel(let id)):
                return .pubrel(MQTTAckPacket(packetIdentifier: id))
            case .item(.publish(let publish)):
                if let limit = clientMaximumPacketSize,
                    MQTTPacket.publish(publish).encode(version: version, allocator: ByteBufferAllocator()).readableBytes > limit
                {
                    // Too large for this client: dropped as if delivered (MQTT-3.1.2-25), and counted.
                    if let id = publish.packetIdentifier {
                        _ = session.acknowledge(puback: id)
                        _ = session.acknowledge(pubrec: id)
                        _ = session.acknowledge(pubcomp: id)
                    }
                    broker.metrics.messageDropped(.tooLarge)
                    continue
                }
                return .publish(applyingOutboundAlias(publish))
            }
        }
    }
}

/// A connection's will, by reference (see `ClientConnection.will`).
private final class WillBox: Sendable {
    let will: MQTTWill

    init(_ will: MQTTWill) {
        self.will = will
    }
}

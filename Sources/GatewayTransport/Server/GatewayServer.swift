public import GatewayCore
public import Logging
import MQTTCodec
public import NIOCore
import NIOHTTP1
public import NIOPosix
import NIOWebSocket
public import ServiceLifecycle

/// Where one listener binds.
public struct ListenerConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}

/// The gateway's network side as one `Service`: the MQTT listeners (TCP and TLS), the WebSocket
/// listeners (ws and wss: MQTT over WebSocket, the JSON API, the optional echo endpoint), one task per
/// connection, and the ordered graceful shutdown of all of them.
///
/// On graceful shutdown: stop accepting, start the broker's drain (new PUBLISHes are no longer taken
/// in), wait until connected subscribers have received and acknowledged what is queued for them (or
/// the drain deadline passes), then tell every client (MQTT 5: DISCONNECT 0x8B) and close. `run()`
/// returns once every connection task has ended.
public final class GatewayServer: Service {
    /// The listeners and timing of the server.
    public struct Configuration: Sendable {
        /// The MQTT-over-TCP listener; nil disables it.
        public var mqtt: ListenerConfiguration?
        /// The MQTT-over-TLS listener; nil disables it. Needs ``tls``.
        public var mqtts: ListenerConfiguration?
        /// The plain WebSocket listener; nil disables it.
        public var ws: ListenerConfiguration?
        /// The WebSocket-over-TLS listener; nil disables it. Needs ``tls``.
        public var wss: ListenerConfiguration?
        /// The server certificate and client-certificate policy of the TLS listeners.
        public var tls: TLSContext?
        /// The WebSocket endpoints and limits of the ws and wss listeners.
        public var webSocket: WebSocketConfiguration
        /// How long the drain may take before connections are closed regardless, in seconds. Keep it
        /// below the ServiceGroup's (and systemd's) stop timeout.
        public var drainTimeout: Double
        /// Seconds a socket may stay open without CONNECT.
        public var connectTimeout: Double
        /// The largest packet accepted, in bytes.
        public var maxPacketSize: Int

        public init(
            mqtt: ListenerConfiguration?,
            mqtts: ListenerConfiguration? = nil,
            ws: ListenerConfiguration? = nil,
            wss: ListenerConfiguration? = nil,
            tls: TLSContext? = nil,
            webSocket: WebSocketConfiguration = WebSocketConfiguration(),
            drainTimeout: Double,
            connectTimeout: Double,
            maxPacketSize: Int
        ) {
            self.mqtt = mqtt
            self.mqtts = mqtts
            self.ws = ws
            self.wss = wss
            self.tls = tls
            self.webSocket = webSocket
            self.drainTimeout = drainTimeout
            self.connectTimeout = connectTimeout
            self.maxPacketSize = maxPacketSize
        }
    }

    /// A listener that is bound, with the port it got (useful with port 0).
    public struct BoundListener: Sendable {
        public var name: String
        public var address: SocketAddress
    }

    let broker: Broker
    let configuration: Configuration
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    let onBound: (@Sendable ([BoundListener]) -> Void)?
    let onShutdown: (@Sendable () -> Void)?
    private let registry = ConnectionRegistry()

    /// - Parameters:
    ///   - onBound: called once every listener is bound (tests read ports from it; the daemon logs
    ///     and notifies systemd).
    ///   - onShutdown: called when graceful shutdown starts, before the listeners close (the daemon
    ///     turns readiness off and tells systemd it is stopping).
    public init(
        broker: Broker,
        configuration: Configuration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        onBound: (@Sendable ([BoundListener]) -> Void)? = nil,
        onShutdown: (@Sendable () -> Void)? = nil
    ) {
        self.broker = broker
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.onBound = onBound
        self.onShutdown = onShutdown
    }

    /// A TLS listener was configured without ``Configuration/tls``.
    public struct MissingTLSContext: Error, CustomStringConvertible {
        public var listener: String
        public var description: String { "listener \(listener) needs a TLS certificate and key" }
    }

    public func run() async throws {
        typealias MQTTListener = (
            name: String,
            channel: NIOAsyncChannel<MQTTConnectionChannel, Never>,
            runner: MQTTConnectionRunner,
            accepted: AcceptedConnections<MQTTConnectionChannel>
        )
        typealias WebSocketListener = (
            name: String,
            channel: NIOAsyncChannel<PendingWebSocket, Never>,
            transport: GatewayMetrics.Transport,
            tls: TLSContext?,
            accepted: AcceptedConnections<PendingWebSocket>
        )
        var mqttListeners: [MQTTListener] = []
        var webSocketListeners: [WebSocketListener] = []
        if let mqtt = configuration.mqtt {
            let runner = MQTTConnectionRunner(broker: broker, transport: .tcp, registry: registry, logger: logger)
            let accepted = AcceptedConnections<MQTTConnectionChannel>()
            mqttListeners.append(("mqtt", try await bindMQTT(mqtt, tls: nil, accepted: accepted), runner, accepted))
        }
        if let mqtts = configuration.mqtts {
            guard let tls = configuration.tls else { throw MissingTLSContext(listener: "mqtts") }
            var runner = MQTTConnectionRunner(broker: broker, transport: .tls, registry: registry, logger: logger)
            runner.useCertificateCommonName = tls.useCommonNameAsUsername
            let accepted = AcceptedConnections<MQTTConnectionChannel>()
            mqttListeners.append(("mqtts", try await bindMQTT(mqtts, tls: tls, accepted: accepted), runner, accepted))
        }
        if let ws = configuration.ws {
            let accepted = AcceptedConnections<PendingWebSocket>()
            webSocketListeners.append(("ws", try await bindWebSocket(ws, tls: nil, accepted: accepted), .ws, nil, accepted))
        }
        if let wss = configuration.wss {
            guard let tls = configuration.tls else { throw MissingTLSContext(listener: "wss") }
            let accepted = AcceptedConnections<PendingWebSocket>()
            webSocketListeners.append(("wss", try await bindWebSocket(wss, tls: tls, accepted: accepted), .wss, tls, accepted))
        }
        let named: [(String, any Channel)] = mqttListeners.map { ($0.name, $0.channel.channel) } + webSocketListeners.map { ($0.name, $0.channel.channel) }
        let bound = named.compactMap { name, channel in
            channel.localAddress.map { BoundListener(name: name, address: $0) }
        }
        for listener in bound {
            logger.info("listening", metadata: ["iotgw.listener": "\(listener.name)", "net.local.address": "\(listener.address)"])
        }
        onBound?(bound)
        let listenerChannels = named.map(\.1)

        try await withThrowingDiscardingTaskGroup { group in
            for listener in mqttListeners {
                let channel = listener.channel
                let runner = listener.runner
                let accepted = listener.accepted
                group.addTask {
                    try await Self.closingOnCancellation(channel.channel, registry: self.registry) {
                        try await Self.acceptLoop(channel, runner: runner, accepted: accepted)
                    }
                }
            }
            for listener in webSocketListeners {
                var mqttRunner = MQTTConnectionRunner(broker: broker, transport: listener.transport, registry: registry, logger: logger)
                mqttRunner.isWebSocket = true
                mqttRunner.useCertificateCommonName = listener.tls?.useCommonNameAsUsername ?? false
                let jsonRunner = JSONAPIConnectionRunner(
                    broker: broker,
                    transport: listener.transport,
                    registry: registry,
                    logger: logger,
                    maxPacketSize: configuration.maxPacketSize
                )
                let registry = self.registry
                let logger = self.logger
                let useCommonName = listener.tls?.useCommonNameAsUsername ?? false
                let channel = listener.channel
                let accepted = listener.accepted
                let webSocketMQTTRunner = mqttRunner
                group.addTask {
                    try await Self.closingOnCancellation(channel.channel, registry: registry) {
                        try await accepted.acceptingThenClosingOrphans {
                            try await channel.executeThenClose { inbound in
                                try await ConnectionTasks.forEach(
                                    in: inbound,
                                    executor: { EventLoopTaskExecutor.of($0.channel.eventLoop) },
                                    AcceptedWebSocket(
                                        accepted: accepted,
                                        mqttRunner: webSocketMQTTRunner,
                                        jsonRunner: jsonRunner,
                                        useCommonName: useCommonName,
                                        registry: registry,
                                        logger: logger
                                    )
                                )
                            }
                        }
                    }
                }
            }
            group.addTask {
                // Waits for SIGTERM/SIGINT (or the group's own graceful shutdown), then drains.
                do {
                    try await gracefulShutdown()
                } catch {
                    return  // cancelled: the service group is going down hard.
                }
                await self.shutDown(listeners: listenerChannels)
            }
        }
        logger.info("all connections closed")
    }

    /// Runs an accept loop so that cancellation ends it by closing the listener instead of cancelling
    /// the loop's task.
    ///
    /// A cancelled `for await` over a server channel drops the connections still buffered in it without
    /// `executeThenClose`, and NIO traps on such an unused child channel ("Deinited NIOAsyncWriter
    /// without calling finish()"). Closing the listener lets the loop take every buffered connection
    /// and end normally; the connections themselves are told to close. The loop runs in its own task
    /// (awaited here, so it is not fire-and-forget) because cancellation would otherwise reach it.
    private static func closingOnCancellation(
        _ listener: any Channel,
        registry: ConnectionRegistry,
        _ loop: @escaping @Sendable () async throws -> Void
    ) async throws {
        let task = Task { try await loop() }
        try await withTaskCancellationHandler {
            try await task.value
        } onCancel: {
            listener.close(promise: nil)
            registry.closeAll(reason: .serverShuttingDown)
        }
    }

    private static func acceptLoop(
        _ server: NIOAsyncChannel<MQTTConnectionChannel, Never>,
        runner: MQTTConnectionRunner,
        accepted: AcceptedConnections<MQTTConnectionChannel>
    ) async throws {
        try await accepted.acceptingThenClosingOrphans {
            try await server.executeThenClose { inbound in
                try await ConnectionTasks.forEach(
                    in: inbound,
                    executor: { EventLoopTaskExecutor.of($0.channel.eventLoop) },
                    AcceptedMQTTConnection(runner: runner, accepted: accepted)
                )
            }
        }
    }

    private func shutDown(listeners: [any Channel]) async {
        let started = ContinuousClock.now
        onShutdown?()
        logger.info("graceful shutdown: no longer accepting connections")
        for listener in listeners { try? await listener.close() }
        broker.beginDrain()
        logger.info(
            "graceful shutdown: draining queued messages to connected subscribers",
            metadata: ["iotgw.queued.messages": "\(broker.queuedMessages)"]
        )
        let deadline = started.advanced(by: .seconds(configuration.drainTimeout))
        while !broker.connectedSessionsIdle && ContinuousClock.now < deadline {
            // Acknowledgements arrive on other tasks; look again shortly. Bounded by the deadline.
            try? await Task.sleep(for: .milliseconds(10))
        }
        let abandoned = broker.undeliveredToConnected
        if abandoned > 0 {
            logger.notice("graceful shutdown: drain deadline reached", metadata: ["iotgw.undelivered.messages": "\(abandoned)"])
        }
        logger.info("graceful shutdown: closing connections", metadata: ["iotgw.connections": "\(registry.count)"])
        registry.closeAll(reason: .serverShuttingDown)
    }

    /// How much a connection's socket reads at a time. NIO keeps each channel's last read buffer for the
    /// next read, so the starting size is what every idle connection holds: 128 bytes fit a typical CONNECT
    /// and its keep-alive traffic (512 cost 0.38 KiB more per idle connection, measured with 19,000); a
    /// read that fills the buffer grows the next one, so a busy publisher is read in large reads after its
    /// first few.
    static let receiveAllocator = ReceiveSizer(minimum: 64, initial: 128, maximum: 65536)
    /// Reads per readable event (NIO's default is 4). NIO keeps up to this many read buffers per channel
    /// once a read finds the previous one still referenced (a packet in a queue holds a slice of it, or
    /// the HTTP upgrade held it), for the channel's life: with 1 it keeps one. Epoll is level-triggered,
    /// so a socket with more to read is read again on the loop's next turn.
    static let readsPerEvent: UInt = 1

    /// Sets an accepted connection's options, in its initializer: `TCP_NODELAY` (also inherited from the
    /// listening socket, where NIO sets it), the receive sizer and reads per event.
    ///
    /// `ServerBootstrap`'s `childChannelOption`s did this through a chain of futures per option and
    /// connection (generic metadata look-ups and allocations that showed in a connect storm's profile).
    /// Nothing here throws: NIO ends a server's whole accept sequence on any error from a child's set-up,
    /// which would stop the listener for one connection's sake. An option can only fail on a socket that
    /// is already gone, and that connection then ends by itself. Until 2026-12-05 the first option here was
    /// `.socketOption(.tcp_nodelay)`: the socket level with TCP_NODELAY's number, which is `SO_DEBUG`. As
    /// root that set a debug flag; as any other user (the systemd unit's `iotgw`) it failed with EPERM and
    /// stopped the gateway at its first connection.
    static func setAcceptedOptions(_ channel: any Channel) {
        guard let options = channel.syncOptions else { return }
        try? options.setOption(.tcpOption(.tcp_nodelay), value: 1)
        try? options.setOption(.recvAllocator, value: receiveAllocator)
        try? options.setOption(.maxMessagesPerRead, value: readsPerEvent)
    }

    private func bindMQTT(
        _ listener: ListenerConfiguration,
        tls: TLSContext?,
        accepted: AcceptedConnections<MQTTConnectionChannel>
    ) async throws -> NIOAsyncChannel<MQTTConnectionChannel, Never> {
        let connectTimeout = TimeAmount.milliseconds(Int64(configuration.connectTimeout * 1000))
        let maxPacketSize = configuration.maxPacketSize
        return try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: listener.host, port: listener.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    GatewayServer.setAcceptedOptions(channel)
                    if let tls {
                        try tls.addServerHandlers(to: channel.pipeline.syncOperations)
                    }
                    let inbound = ConnectionInbound(
                        eventLoop: channel.eventLoop,
                        parser: MQTTPacketParser(maximumPacketSize: maxPacketSize),
                        connectTimeout: connectTimeout
                    )
                    try channel.pipeline.syncOperations.addHandler(inbound)
                    let connection = MQTTConnectionChannel(channel: channel, inbound: inbound)
                    accepted.accepted(connection)
                    return connection
                }
            }
    }
}

/// An accepted MQTT connection's task (TCP or TLS): taken from the orphan list, then run. A class: the
/// task's closure and frames hold one reference to it, not a copy (see `MQTTConnectionRunner.run(_:)`).
private final class AcceptedMQTTConnection: ConnectionBody {
    let runner: MQTTConnectionRunner
    let accepted: AcceptedConnections<MQTTConnectionChannel>

    init(runner: MQTTConnectionRunner, accepted: AcceptedConnections<MQTTConnectionChannel>) {
        self.runner = runner
        self.accepted = accepted
    }

    @inline(__always)
    func run(_ connection: MQTTConnectionChannel) async {
        accepted.take(connection)
        await runner.run(connection)
    }
}

/// An accepted WebSocket connection's task: taken from the orphan list, then its handshake and endpoint
/// run on the connection's event loop. A class, like ``AcceptedMQTTConnection``.
private final class AcceptedWebSocket: ConnectionBody {
    let accepted: AcceptedConnections<PendingWebSocket>
    let mqttRunner: MQTTConnectionRunner
    let jsonRunner: JSONAPIConnectionRunner
    let useCommonName: Bool
    let registry: ConnectionRegistry
    let logger: Logger

    init(
        accepted: AcceptedConnections<PendingWebSocket>,
        mqttRunner: MQTTConnectionRunner,
        jsonRunner: JSONAPIConnectionRunner,
        useCommonName: Bool,
        registry: ConnectionRegistry,
        logger: Logger
    ) {
        self.accepted = accepted
        self.mqttRunner = mqttRunner
        self.jsonRunner = jsonRunner
        self.useCommonName = useCommonName
        self.registry = registry
        self.logger = logger
    }

    func run(_ pending: PendingWebSocket) async {
        accepted.take(pending)
        await GatewayServer.runWebSocket(
            pending,
            mqttRunner: mqttRunner,
            jsonRunner: jsonRunner,
            useCommonName: useCommonName,
            registry: registry,
            logger: logger
        )
    }
}

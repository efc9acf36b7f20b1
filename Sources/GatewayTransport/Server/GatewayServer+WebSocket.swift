import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// Where an upgraded (or refused) WebSocket connection goes.
enum WebSocketRoute: Sendable {
    /// MQTT over WebSocket: the same pipeline tail and connection task as TCP.
    case mqtt(MQTTConnectionChannel)
    /// The JSON API, with what the upgrade request said about the client. Boxed: the route is small for
    /// the MQTT connections whose task frame holds it.
    indirect case json(NIOAsyncChannel<JSONAPIInput, ByteBuffer>, JSONAPIRequest)
    /// The echo endpoint: handled entirely in the pipeline.
    case echo(any Channel)
    /// Not upgraded: ``HTTPRefusalHandler`` answers and closes.
    case refused
}

/// A connection accepted by a WebSocket listener, before its HTTP upgrade has finished. A class: the
/// connection's task holds it for its life (in the accept loop's closure), and once the upgrade is done
/// it lets go of the upgrade's future (``takeRoute()``).
final class PendingWebSocket: AcceptedConnection {
    let channel: any Channel
    private let route: Mutex<EventLoopFuture<WebSocketRoute>?>

    init(channel: any Channel, route: EventLoopFuture<WebSocketRoute>) {
        self.channel = channel
        self.route = Mutex(route)
    }

    var acceptedID: ObjectIdentifier { ObjectIdentifier(channel) }

    /// The upgrade's future, for the connection's task to wait on: from then on it is not kept here.
    func takeRoute() -> EventLoopFuture<WebSocketRoute>? {
        route.withLock { $0.take() }
    }

    /// Closes the connection; an upgrade that still completes hands over an async channel, which is
    /// finished too. Never waits for the upgrade (it may never complete).
    func discard() async {
        channel.close(promise: nil)
        route.withLock { $0 }?.whenSuccess { route in
            switch route {
            case .mqtt(let channel): Task { await channel.discard() }
            case .json(let channel, _): Task { await channel.discard() }
            case .echo, .refused: break
            }
        }
    }
}

extension GatewayServer {
    /// Binds a ws or wss listener: (TLS), HTTP/1.1, and the typed WebSocket upgrade that routes by path.
    func bindWebSocket(
        _ listener: ListenerConfiguration,
        tls: TLSContext?,
        accepted: AcceptedConnections<PendingWebSocket>
    ) async throws -> NIOAsyncChannel<PendingWebSocket, Never> {
        let pipeline = WebSocketPipeline(
            webSocket: configuration.webSocket,
            connectTimeout: .milliseconds(Int64(configuration.connectTimeout * 1000)),
            maxPacketSize: configuration.maxPacketSize
        )
        return try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: listener.host, port: listener.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    GatewayServer.setAcceptedOptions(channel)
                    let sync = channel.pipeline.syncOperations
                    if let tls { try tls.addServerHandlers(to: sync) }
                    let route = try pipeline.configure(channel)
                    // A client that never finishes the handshake is closed after the connect timeout.
                    let timeout = channel.eventLoop.scheduleTask(in: pipeline.connectTimeout) {
                        channel.close(promise: nil)
                    }
                    route.whenSuccess { route in
                        if case .refused = route { return }
                        timeout.cancel()
                    }
                    let pending = PendingWebSocket(channel: channel, route: route)
                    accepted.accepted(pending)
                    return pending
                }
            }
    }

    /// One WebSocket connection's task: wait for the upgrade, then run the endpoint's connection task.
    static func runWebSocket(
        _ pending: PendingWebSocket,
        mqttRunner: MQTTConnectionRunner,
        jsonRunner: JSONAPIConnectionRunner,
        useCommonName: Bool,
        registry: ConnectionRegistry,
        logger: Logger
    ) async {
        guard let route = await upgraded(pending, broker: mqttRunner.broker, registry: registry, logger: logger) else {
            return
        }
        // An MQTT connection's task keeps its deepest chain of frames for its life (see
        // `MQTTConnectionRunner.run(_:)`): the MQTT endpoint runs right here, the others in a function of
        // their own.
        if case .mqtt(let channel) = route {
            await mqttRunner.run(channel)
        } else {
            await runOtherRoute(route, jsonRunner: jsonRunner, useCommonName: useCommonName, registry: registry, logger: logger)
        }
    }

    /// Runs the JSON API or echo endpoint the upgrade reached.
    @inline(never)
    private static func runOtherRoute(
        _ route: WebSocketRoute,
        jsonRunner: JSONAPIConnectionRunner,
        useCommonName: Bool,
        registry: ConnectionRegistry,
        logger: Logger
    ) async {
        switch route {
        case .mqtt:
            assertionFailure("the MQTT endpoint runs in runWebSocket")
        case .json(let channel, let request):
            await runJSON(channel, request: request, runner: jsonRunner, useCommonName: useCommonName)
        case .echo(let channel):
            await runEcho(channel, registry: registry, logger: logger)
        case .refused:
            return
        }
    }

    /// Waits for the HTTP upgrade. Returns nil when it failed (logged, rate-limited).
    @inline(never)
    private static func upgraded(
        _ pending: PendingWebSocket,
        broker: Broker,
        registry: ConnectionRegistry,
        logger: Logger
    ) async -> WebSocketRoute? {
        // Until the upgrade is done the connection is only a channel; registering it lets a shutdown
        // close it too.
        let token = registry.add(ChannelConnectionHandle(channel: pending.channel))
        // Awaited through a continuation, not `EventLoopFuture.get()`: its frames would be the deepest an
        // MQTT-over-WebSocket connection's task ever needs (see `MQTTConnectionRunner.run(_:)`).
        guard let route = pending.takeRoute() else {
            registry.remove(token)
            return nil
        }
        let result = await withUnsafeContinuation { continuation in
            route.whenComplete { continuation.resume(returning: $0) }
        }
        return upgradeEnded(result, channel: pending.channel, token: token, broker: broker, registry: registry, logger: logger)
    }

    /// Unregisters the pending connection and returns its route, or logs a failed upgrade (rate-limited)
    /// and returns nil. Synchronous: a log call's temporaries would take space in the frame of
    /// ``upgraded(_:broker:registry:logger:)``.
    @inline(never)
    private static func upgradeEnded(
        _ result: Result<WebSocketRoute, any Error>,
        channel: any Channel,
        token: UInt64,
        broker: Broker,
        registry: ConnectionRegistry,
        logger: Logger
    ) -> WebSocketRoute? {
        registry.remove(token)
        switch result {
        case .success(let route):
            return route
        case .failure(let error):
            broker.logLimited(.handshakeFailure, address: channel.remoteAddress?.description) {
                logger.debug("WebSocket handshake failed", metadata: ["error": "\(error)"])
            }
            return nil
        }
    }

    @inline(never)
    private static func runJSON(
        _ channel: NIOAsyncChannel<JSONAPIInput, ByteBuffer>,
        request: JSONAPIRequest,
        runner: JSONAPIConnectionRunner,
        useCommonName: Bool
    ) async {
        let name = useCommonName ? await TLSContext.peerCommonName(of: channel.channel) : nil
        await runner.run(channel, request: request, certificateName: name)
    }

    @inline(never)
    private static func runEcho(_ channel: any Channel, registry: ConnectionRegistry, logger: Logger) async {
        let token = registry.add(ChannelConnectionHandle(channel: channel, isWebSocket: true))
        defer { registry.remove(token) }
        do {
            try await channel.closeFuture.get()
        } catch {
            logger.debug("echo connection ended with error", metadata: ["error": "\(error)"])
        }
    }
}

/// The HTTP/1.1 and WebSocket handlers of one ws or wss connection (after TLS, if any): the typed
/// upgrade that routes by path, and the handlers of the endpoint it reaches. The same code serves
/// the listeners and the fuzz target of the handshake and frame parser (Fuzz/).
struct WebSocketPipeline: Sendable {
    let webSocket: WebSocketConfiguration
    let connectTimeout: TimeAmount
    let maxPacketSize: Int

    var pingInterval: TimeAmount? {
        webSocket.pingInterval > 0 ? .milliseconds(Int64(webSocket.pingInterval * 1000)) : nil
    }

    /// One frame may carry a whole MQTT packet or a whole message; anything larger is refused with 1009
    /// before it is buffered.
    var maxFrameSize: Int { min(max(webSocket.maxMessageSize, maxPacketSize), Int(UInt32.max)) }

    /// Adds the HTTP server handlers and the upgrader to `channel` (on its event loop). The future tells
    /// where the connection went once the request head has been handled.
    func configure(_ channel: any Channel) throws -> EventLoopFuture<WebSocketRoute> {
        let sync = channel.pipeline.syncOperations
        let webSocket = self.webSocket
        // Why an upgrade was refused, for the HTTP answer (only touched on this channel's loop).
        let refusal = NIOLoopBoundBox<WebSocketConfiguration.Decision?>(nil, eventLoop: channel.eventLoop)
        // The permessage-deflate parameters answered in the handshake, for the upgraded pipeline.
        let deflate = NIOLoopBoundBox<PerMessageDeflate?>(nil, eventLoop: channel.eventLoop)
        let handshake = NIOTypedWebSocketServerUpgrader<WebSocketRoute>(
            maxFrameSize: maxFrameSize,
            enableAutomaticErrorHandling: false,
            shouldUpgrade: { channel, head in
                let decision = WebSocketConfiguration.asksForUpgrade(head) ? webSocket.decide(head) : .refuse(.badRequest, "a WebSocket upgrade request needs Connection: Upgrade")
                switch decision {
                case .upgrade(let subprotocol):
                    var headers = HTTPHeaders()
                    if let subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: subprotocol) }
                    if let agreed = Self.negotiateDeflate(webSocket: webSocket, head: head, channel: channel) {
                        deflate.value = agreed
                        headers.add(name: "Sec-WebSocket-Extensions", value: agreed.responseHeaderValue)
                    }
                    return channel.eventLoop.makeSucceededFuture(headers)
                case .refuse:
                    refusal.value = decision
                    return channel.eventLoop.makeSucceededFuture(nil)
                }
            },
            upgradePipelineHandler: { channel, _ in
                // Not called: WebSocketUpgrader.upgrade sets up the pipeline.
                channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
            }
        )
        let upgrader = WebSocketUpgrader(handshake: handshake) { channel, head in
            channel.eventLoop.makeCompletedFuture {
                let sync = channel.pipeline.syncOperations
                let upgradeHandler = try sync.handler(type: NIOTypedHTTPServerUpgradeHandler<WebSocketRoute>.self)
                try sync.addHandler(UpgradeLeftoverGuard(), position: .after(upgradeHandler))
                return try self.setUpUpgraded(channel: channel, head: head, deflate: deflate.value)
            }
        }
        return try sync.configureUpgradableHTTPServerPipeline(
            configuration: .init(
                upgradeConfiguration: .init(
                    upgraders: [upgrader],
                    notUpgradingCompletionHandler: { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(HTTPRefusalHandler(configuration: webSocket, refusal: refusal.value))
                            return WebSocketRoute.refused
                        }
                    }
                )
            )
        )
    }

    /// The permessage-deflate answer to an upgrade request (nil: none), on the channel's loop. A
    /// connection that keeps zlib contexts between messages takes a slot of the shared
    /// ``DeflateContextBudget`` until it closes; with none free it gets no context takeover either way.
    static func negotiateDeflate(webSocket: WebSocketConfiguration, head: HTTPRequestHead, channel: any Channel) -> PerMessageDeflate? {
        let compression = webSocket.compression
        guard let endpoint = webSocket.endpoint(forURI: head.uri), compression.isEnabled(for: endpoint),
            var agreed = PerMessageDeflate.negotiate(offers: head.headers["Sec-WebSocket-Extensions"], settings: compression.settings)
        else { return nil }
        if agreed.usesContextTakeover {
            let budget = compression.budget
            if budget.reserveTakeover() {
                channel.closeFuture.whenComplete { _ in budget.releaseTakeover() }
            } else {
                agreed.dropContextTakeover()
            }
        }
        return agreed
    }

    /// Adds the handlers of the endpoint the request reached, after the HTTP handlers are gone.
    private func setUpUpgraded(channel: any Channel, head: HTTPRequestHead, deflate: PerMessageDeflate?) throws -> WebSocketRoute {
        let sync = channel.pipeline.syncOperations
        func protocolHandler(_ endpoint: WebSocketStateMachine.Endpoint) -> WebSocketProtocolHandler {
            // A compressed MQTT message may inflate to at most one maximum-size packet.
            let maxMessageSize = endpoint == .mqttStream ? maxPacketSize : webSocket.maxMessageSize
            return WebSocketProtocolHandler(
                configuration: .init(
                    endpoint: endpoint,
                    maxMessageSize: maxMessageSize,
                    deflate: deflate,
                    deflateBudget: webSocket.compression.budget
                ),
                maxFrameSize: maxFrameSize,
                pingInterval: pingInterval,
                compressionThreshold: webSocket.compression.threshold
            )
        }
        switch webSocket.endpoint(forURI: head.uri) {
        case .mqtt:
            try sync.addHandler(protocolHandler(.mqttStream))
            let inbound = ConnectionInbound(
                eventLoop: channel.eventLoop,
                parser: MQTTPacketParser(maximumPacketSize: maxPacketSize),
                connectTimeout: connectTimeout
            )
            try sync.addHandler(inbound)
            return .mqtt(MQTTConnectionChannel(channel: channel, inbound: inbound))
        case .json:
            try sync.addHandler(protocolHandler(.textMessages))
            try sync.addHandler(JSONAPIInputHandler())
            return .json(try NIOAsyncChannel<JSONAPIInput, ByteBuffer>(wrappingChannelSynchronously: channel), JSONAPIRequest(head: head))
        case .echo:
            try sync.addHandler(protocolHandler(.echo))
            try sync.addHandler(WebSocketEchoHandler())
            return .echo(channel)
        case nil:
            // shouldUpgrade refused unknown paths; nothing else gets here.
            channel.close(promise: nil)
            return .refused
        }
    }
}

/// NIO's WebSocket upgrader for the handshake (the request's checks, `Sec-WebSocket-Accept`), without
/// the frame decoder and encoder its own `upgrade` installs: ``WebSocketProtocolHandler`` frames the byte
/// stream itself (``WebSocketFrameCodec``), so an upgraded connection keeps neither for its life.
struct WebSocketUpgrader: NIOTypedHTTPServerProtocolUpgrader {
    typealias UpgradeResult = WebSocketRoute

    let handshake: NIOTypedWebSocketServerUpgrader<WebSocketRoute>
    /// Adds the endpoint's handlers, on the channel's loop.
    let setUp: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<WebSocketRoute>

    var supportedProtocol: String { handshake.supportedProtocol }
    var requiredUpgradeHeaders: [String] { handshake.requiredUpgradeHeaders }

    func buildUpgradeResponse(channel: any Channel, upgradeRequest: HTTPRequestHead, initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        handshake.buildUpgradeResponse(channel: channel, upgradeRequest: upgradeRequest, initialResponseHeaders: initialResponseHeaders)
    }

    func upgrade(channel: any Channel, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<WebSocketRoute> {
        setUp(channel, upgradeRequest)
    }
}

/// Stands between the HTTP upgrade handler and the WebSocket layer (``WebSocketProtocolHandler``) while
/// the upgrade completes. What the upgrade handler buffered during the upgrade is replayed to that layer; NIO's HTTP
/// decoder keeps parsing after a request it did not itself see as an upgrade, so that replay can hold
/// HTTP request parts (the body or next request of a client that pipelines after its upgrade), and a
/// part reaching a handler that reads `ByteBuffer` is a process-wide fatal error. The guard drops such
/// parts and closes that connection, and leaves the pipeline once the upgrade handler has.
/// ``WebSocketConfiguration/asksForUpgrade(_:)`` keeps the two parsers agreeing in every case known;
/// this guard is for the ones not known.
final class UpgradeLeftoverGuard: ChannelInboundHandler, RemovableChannelHandler {
    // `Any`: a ByteBuffer arrives as `IOData`, an HTTP part as itself; `data` is forwarded untouched.
    typealias InboundIn = Any
    typealias InboundOut = Any

    private var closed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Once closed, nothing more goes on: bytes replayed after the parts would still reach the
        // decoders behind (a CONNECT handled on a connection that is closing).
        if closed { return }
        guard Self.unwrapInboundIn(data) is HTTPServerRequestPart else {
            context.fireChannelRead(data)
            return
        }
        closed = true
        context.fireErrorCaught(WebSocketHandshakeError.requestAfterUpgrade)
        context.close(promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        // The upgrade handler removes itself after its replay: from then on only bytes arrive.
        if (try? context.pipeline.syncOperations.handler(type: NIOTypedHTTPServerUpgradeHandler<WebSocketRoute>.self)) == nil {
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}

@available(*, unavailable)
extension UpgradeLeftoverGuard: Sendable {}

/// Why a WebSocket connection ended during its upgrade.
enum WebSocketHandshakeError: Error, CustomStringConvertible {
    /// HTTP (a request body or another request) followed an accepted upgrade request.
    case requestAfterUpgrade

    var description: String {
        switch self {
        case .requestAfterUpgrade: "HTTP data after the WebSocket upgrade request"
        }
    }
}

public import GatewayCore
public import Logging
public import NIOCore
import NIOHTTP1
public import NIOPosix
public import ServiceLifecycle
import Synchronization

/// The HTTP admin listener as a `Service`: `GET /healthz`, `GET /readyz`, `GET /metrics`,
/// `GET /api/v1/clients`, `DELETE /api/v1/clients/{id}`, `GET /api/v1/stats`, and the dashboard:
/// its page at `GET /` and its live feed at `GET /api/v1/dashboard/feed` (server-sent events).
///
/// HTTP/1.1 through NIOHTTP1 and `NIOAsyncChannel`, one task per connection in a discarding task
/// group (as the MQTT listeners). Requests are small and answered from memory; request bodies are not
/// used and are limited. On graceful shutdown the listener and its connections close; in the
/// ServiceGroup it sits before ``GatewayServer``, so it keeps answering (`/readyz`: 503) while the
/// gateway drains.
public final class AdminServer: Service {
    /// Where and how the admin listener serves.
    public struct Configuration: Sendable {
        /// Where to bind. Default 127.0.0.1:8080.
        public var listener: ListenerConfiguration
        /// When set, `/metrics` and `/api/...` require `Authorization: Bearer <token>`; `/healthz`
        /// and `/readyz` stay open for probes. Default nil.
        public var token: String?
        /// How long an event loop may take to run a no-op before `/healthz` answers 503. Default 1 s.
        public var healthTimeout: Duration
        /// Simultaneous admin connections; more are closed at accept. Default 64.
        public var maxConnections: Int
        /// Seconds a connection may stay silent before it is closed (a dashboard feed, which the
        /// client never speaks on, is exempt). Default 30.
        public var idleTimeout: Double
        /// Whether the dashboard (`/` and its feed) is served. Default true.
        public var dashboard: Bool
        /// Dashboard feeds open at once; more are refused with 503. Default 10 (each costs a
        /// connection of ``maxConnections`` while open).
        public var dashboardMaxSessions: Int
        /// Time between dashboard snapshots. Default 1 s.
        public var dashboardInterval: Duration

        public init(
            listener: ListenerConfiguration = ListenerConfiguration(host: "127.0.0.1", port: 8080),
            token: String? = nil,
            healthTimeout: Duration = .seconds(1),
            maxConnections: Int = 64,
            idleTimeout: Double = 30,
            dashboard: Bool = true,
            dashboardMaxSessions: Int = 10,
            dashboardInterval: Duration = .seconds(1)
        ) {
            self.listener = listener
            self.token = token
            self.healthTimeout = healthTimeout
            self.maxConnections = maxConnections
            self.idleTimeout = idleTimeout
            self.dashboard = dashboard
            self.dashboardMaxSessions = dashboardMaxSessions
            self.dashboardInterval = dashboardInterval
        }
    }

    /// The name of the pipeline's idle-timeout handler, removed when a dashboard feed starts.
    private static let idleHandlerName = "iotgw.admin.idle"

    /// The largest request body read (bytes); larger requests get 413 and the connection closes.
    static let maxBodySize = 64 * 1024

    private let configuration: Configuration
    private let routes: AdminRoutes
    private let dashboard: DashboardHub?
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let onBound: (@Sendable (SocketAddress) -> Void)?
    private let openConnections = Atomic<Int>(0)

    /// - Parameters:
    ///   - broker: the broker the API reads and disconnects clients of.
    ///   - readiness: the components `/readyz` reports.
    ///   - metricsText: the Prometheus text exposition (`registry.emitToBuffer()`).
    ///   - bridges: the bridges' status for `/api/v1/stats` and the dashboard.
    ///   - poolSize: the storage pool's connections, for the dashboard (nil: storage off).
    ///   - storage: the storage footprint for `/api/v1/stats` (nil: storage off).
    ///   - startedAt: when the gateway started, for uptime.
    ///   - onBound: called with the bound address (tests read the port from it with port 0).
    public init(
        configuration: Configuration,
        broker: Broker,
        readiness: ReadinessRegistry,
        metricsText: @escaping @Sendable () -> [UInt8],
        telemetry: (any TelemetryReader)? = nil,
        bridges: @escaping @Sendable () -> [AdminBridgeStatus] = { [] },
        poolSize: Int? = nil,
        storage: (@Sendable () -> AdminStorageStatus)? = nil,
        startedAt: ContinuousClock.Instant = .now,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        onBound: (@Sendable (SocketAddress) -> Void)? = nil
    ) {
        self.configuration = configuration
        let dashboard =
            configuration.dashboard
            ? DashboardHub(
                configuration: DashboardHub.Configuration(maxSessions: configuration.dashboardMaxSessions, interval: configuration.dashboardInterval),
                sources: DashboardSources(
                    broker: broker,
                    readiness: readiness,
                    metricsText: metricsText,
                    bridges: bridges,
                    poolSize: poolSize,
                    startedAt: startedAt
                )
            ) : nil
        self.dashboard = dashboard
        self.routes = AdminRoutes(
            broker: broker,
            readiness: readiness,
            probe: EventLoopProbe(group: eventLoopGroup),
            metricsText: metricsText,
            token: configuration.token,
            healthTimeout: configuration.healthTimeout,
            startedAt: startedAt,
            telemetry: telemetry,
            bridges: bridges,
            storage: storage,
            dashboard: dashboard
        )
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.onBound = onBound
    }

    public func run() async throws {
        let idleTimeout = TimeAmount.milliseconds(Int64(configuration.idleTimeout * 1000))
        let accepted = AcceptedConnections<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>>()
        let server = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: configuration.listener.host, port: configuration.listener.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(IdleStateHandler(readTimeout: idleTimeout), name: Self.idleHandlerName)
                    try sync.addHandler(CloseOnIdleHandler())
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    let connection = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
                    accepted.accepted(connection)
                    return connection
                }
            }
        if let address = server.channel.localAddress {
            logger.info("listening", metadata: ["iotgw.listener": "admin", "net.local.address": "\(address)"])
            onBound?(address)
        }
        let routes = self.routes
        let logger = self.logger
        let maxConnections = configuration.maxConnections
        let dashboard = self.dashboard
        // Graceful shutdown cancels the accept loop and every connection task: admin requests are short
        // (a dashboard feed just ends) and nothing is lost by cutting them. The cancellation that ends
        // the loop is not an error. The dashboard's ticker runs beside the loop and stops with it.
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                if let dashboard {
                    group.addTask { await dashboard.run() }
                }
                group.addTask {
                    try await accepted.acceptingThenClosingOrphans {
                        try await self.serve(server, accepted: accepted, routes: routes, logger: logger, maxConnections: maxConnections)
                    }
                }
                defer { group.cancelAll() }
                try await group.next()
            }
        } catch is CancellationError {
            logger.debug("admin listener closed")
        }
    }

    private func serve(
        _ server: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>,
        accepted: AcceptedConnections<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>>,
        routes: AdminRoutes,
        logger: Logger,
        maxConnections: Int
    ) async throws {
        try await cancelWhenGracefulShutdown {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        accepted.take(connection)
                        guard self.openConnections.wrappingAdd(1, ordering: .relaxed).newValue <= maxConnections else {
                            self.openConnections.subtract(1, ordering: .relaxed)
                            // Closed through its async wrapper: dropping an unfinished NIOAsyncChannel traps.
                            group.addTask { await connection.discard() }
                            continue
                        }
                        group.addTask {
                            defer { self.openConnections.subtract(1, ordering: .relaxed) }
                            await Self.serve(connection, routes: routes, logger: logger)
                        }
                    }
                }
            }
        }
    }

    /// Answers requests on one connection until the client closes, asks to close, or an error ends it.
    private static func serve(
        _ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>,
        routes: AdminRoutes,
        logger: Logger
    ) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var bodyBytes = 0
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        bodyBytes = 0
                    case .body(let chunk):
                        bodyBytes += chunk.readableBytes
                        if bodyBytes > maxBodySize, let requestHead = head {
                            let response = AdminResponse.error(.payloadTooLarge, "request body too large")
                            try await write(response, for: requestHead, keepAlive: false, to: outbound)
                            return
                        }
                    case .end:
                        guard let requestHead = head else { continue }
                        head = nil
                        let request = AdminRequest(
                            method: requestHead.method,
                            uri: requestHead.uri,
                            authorization: requestHead.headers.first(name: "authorization")
                        )
                        if request.path == AdminRoutes.dashboardFeedPath, let hub = routes.dashboard {
                            // A feed holds the connection until the client goes or the listener stops.
                            try await feed(request, head: requestHead, hub: hub, routes: routes, channel: connection.channel, to: outbound)
                            return
                        }
                        let response = await routes.respond(to: request)
                        logger.trace(
                            "admin request",
                            metadata: [
                                "http.request.method": "\(requestHead.method)",
                                "url.path": "\(request.path)",
                                "http.response.status_code": "\(response.status.code)",
                            ]
                        )
                        try await write(response, for: requestHead, keepAlive: requestHead.isKeepAlive, to: outbound)
                        if !requestHead.isKeepAlive { return }
                    }
                }
            }
        } catch {
            logger.debug("admin connection ended with an error", metadata: ["error": "\(error)"])
        }
    }

    /// `GET /api/v1/dashboard/feed[?watch=FILTER]`: server-sent events (`history` first, then one
    /// `snapshot` per interval, and `watch` events when a filter is watched) until the client goes.
    /// Needs the bearer token like the rest of the API; refused with 503 past the session cap.
    private static func feed(
        _ request: AdminRequest,
        head: HTTPRequestHead,
        hub: DashboardHub,
        routes: AdminRoutes,
        channel: any Channel,
        to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        let session: DashboardHub.Session
        switch routes.joinFeed(request, hub: hub) {
        case .refused(let refusal):
            try await write(refusal, for: head, keepAlive: false, to: outbound)
            return
        case .joined(let joined):
            session = joined
        }
        defer { hub.leave(session) }
        // A client that goes away is noticed when its socket closes, not at the next write.
        channel.closeFuture.whenComplete { _ in session.end() }
        // The client never speaks on a feed: the read-idle timeout must not close it.
        try? await channel.pipeline.removeHandler(name: idleHandlerName).get()
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/event-stream; charset=utf-8")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        headers.add(name: "Connection", value: "close")
        // No Content-Length: the HTTP/1.1 encoder sends the stream chunked.
        try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers)))
        if head.method == .HEAD {
            try await outbound.write(.end(nil))
            return
        }
        for await event in session.events {
            try await outbound.write(.body(.byteBuffer(event)))
        }
        try await outbound.write(.end(nil))
    }

    private static func write(
        _ response: AdminResponse,
        for request: HTTPRequestHead,
        keepAlive: Bool,
        to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: request.version, status: response.status, headers: headers)
        try await outbound.write(.head(head))
        if request.method != .HEAD {
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body))))
        }
        try await outbound.write(.end(nil))
    }
}

/// Closes a connection that stayed silent for the idle timeout (``IdleStateHandler`` reports it).
private final class CloseOnIdleHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

@available(*, unavailable)
extension CloseOnIdleHandler: Sendable {}

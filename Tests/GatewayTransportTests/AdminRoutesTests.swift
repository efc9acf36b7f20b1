import Dispatch
import GatewayCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

@testable import GatewayTransport

/// The admin endpoints' answers, without sockets: the routes over a real broker, readiness registry
/// and event-loop probe.
@Suite("Admin routes", .timeLimit(.minutes(1)))
struct AdminRoutesTests {
    private static let logger = Logger(label: "iotgw.tests", factory: { _ in SwiftLogNoOpLogHandler() })

    private func routes(token: String? = nil, readiness: ReadinessRegistry = ReadinessRegistry()) -> (AdminRoutes, Broker) {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        let routes = AdminRoutes(
            broker: broker,
            readiness: readiness,
            probe: EventLoopProbe(group: MultiThreadedEventLoopGroup.singleton),
            metricsText: { Array("# TYPE x counter\nx 1\n".utf8) },
            token: token,
            // A healthy loop answers at once; the bound only matters when the test process's shared loops
            // are busy (every suite runs in parallel in one process), where 1 s was within reach.
            healthTimeout: .seconds(10),
            startedAt: .now
        )
        return (routes, broker)
    }

    private func get(_ routes: AdminRoutes, _ uri: String, method: HTTPMethod = .GET, authorization: String? = nil) async -> AdminResponse {
        await routes.respond(to: AdminRequest(method: method, uri: uri, authorization: authorization))
    }

    private func text(_ response: AdminResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    @Test("readiness needs every component ready, and at least one")
    func readiness() async {
        let readiness = ReadinessRegistry()
        let (routes, _) = routes(readiness: readiness)
        #expect(await get(routes, "/readyz").status == .serviceUnavailable)
        readiness.set("listeners", .notReady("starting"))
        readiness.set("shutdown", .ready)
        let starting = await get(routes, "/readyz")
        #expect(starting.status == .serviceUnavailable)
        #expect(text(starting).contains(#"{"name":"listeners","state":"not_ready","reason":"starting"}"#))
        readiness.set("listeners", .ready)
        #expect(await get(routes, "/readyz").status == .ok)
        readiness.set("shutdown", .notReady("draining"))
        #expect(await get(routes, "/readyz").status == .serviceUnavailable)
        #expect(readiness.snapshot.map(\.name) == ["listeners", "shutdown"])
    }

    @Test("health answers 200 while the event loops run a no-op")
    func health() async {
        let (routes, _) = routes()
        let response = await get(routes, "/healthz")
        #expect(response.status == .ok)
        #expect(text(response).hasPrefix(#"{"status":"ok","event_loops":[{"index":0,"responding":true,"lag_seconds":"#))
    }

    @Test("a stuck event loop makes the probe report it without waiting for the loop")
    func stuckLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let release = DispatchSemaphore(value: 0)
        loop.execute { release.wait() }  // blocks the loop: what a bug would do
        // The loop stays blocked until after the probe returned, so returning at all shows the probe
        // answers on its timeout, not on the loop (no wall-clock bound: that would be timing luck on a
        // loaded machine).
        let samples = await EventLoopProbe(group: group).probe(timeout: .milliseconds(200))
        #expect(samples.count == 1 && samples[0].lag == nil)
        release.signal()
        try await group.shutdownGracefully()
    }

    @Test("the token guards metrics and the API, not the probes")
    func token() async {
        let (routes, _) = routes(token: "s3cret")
        #expect(await get(routes, "/healthz").status == .ok)
        #expect(await get(routes, "/metrics").status == .unauthorized)
        #expect(await get(routes, "/metrics", authorization: "Bearer wrong").status == .unauthorized)
        #expect(await get(routes, "/metrics", authorization: "Bearer s3cret").status == .ok)
        #expect(await get(routes, "/api/v1/stats", authorization: "Basic s3cret").status == .unauthorized)
        #expect(await get(routes, "/api/v1/clients/x", method: .DELETE).status == .unauthorized)
    }

    @Test("paths, methods and query parameters")
    func routing() async {
        let (routes, _) = routes()
        #expect(await get(routes, "/nope").status == .notFound)
        #expect(await get(routes, "/healthz", method: .POST).status == .methodNotAllowed)
        #expect(await get(routes, "/api/v1/clients?limit=0").status == .badRequest)
        #expect(await get(routes, "/api/v1/clients?limit=5").status == .ok)
        #expect(await get(routes, "/api/v1/clients/nobody", method: .DELETE).status == .notFound)
        let request = AdminRequest(method: .GET, uri: "/api/v1/clients/a%20b?prefix=x+y&after=%2F", authorization: nil)
        #expect(request.path == "/api/v1/clients/a b")
        #expect(request.query == ["prefix": "x y", "after": "/"])
        #expect(AdminRequest.percentDecoded("%zz", plusIsSpace: false) == nil)
    }

    @Test("JSON strings are escaped")
    func json() {
        let value = AdminJSON.object([("k\"", .string("a\\b\n\u{1}")), ("n", .null), ("d", .double(.nan))])
        #expect(String(decoding: value.bytes, as: UTF8.self) == "{\"k\\\"\":\"a\\\\b\\n\\u0001\",\"n\":null,\"d\":null}\n")
    }
}

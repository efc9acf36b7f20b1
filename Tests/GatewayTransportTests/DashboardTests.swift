import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

@testable import GatewayTransport

/// The dashboard without a browser: the embedded page is the current `dashboard.html`, the snapshot's
/// JSON, the feed's token and session cap, and the Prometheus text it reads.
@Suite("Dashboard", .timeLimit(.minutes(1)))
struct DashboardTests {
    private static let logger = Logger(label: "iotgw.tests", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A connection handle that ignores everything (the tests only need a connected session).
    private final class QuietHandle: ConnectionHandle {
        let closed = Atomic<Int>(0)
        func close(reason: ServerDisconnectReason) { closed.add(1, ordering: .relaxed) }
        func deliveryAvailable() {}
        func setReadPaused(_ paused: Bool) {}
    }

    private static func sources(
        _ broker: Broker,
        metrics: String = "",
        readiness: ReadinessRegistry = ReadinessRegistry(),
        poolSize: Int? = nil
    ) -> DashboardSources {
        let text = Array(metrics.utf8)
        return DashboardSources(
            broker: broker,
            readiness: readiness,
            metricsText: { text },
            bridges: { [AdminBridgeStatus(name: "up", state: "connected", lastError: nil, queued: 3, forwarded: 4, received: 5, dropped: 0)] },
            poolSize: poolSize,
            startedAt: .now
        )
    }

    private static func connect(_ broker: Broker, _ clientID: String, version: MQTTProtocolVersion = .v3_1_1, transport: GatewayMetrics.Transport = .tcp) async -> ClientConnection {
        let connection = ClientConnection(broker: broker, handle: QuietHandle(), peer: try! SocketAddress(ipAddress: "127.0.0.1", port: 5000), logger: logger)
        connection.transport = transport
        _ = await connection.handle(.connect(MQTTConnectPacket(version: version, cleanStart: true, keepAlive: 60, clientIdentifier: clientID)))
        return connection
    }

    private static func text(_ buffer: ByteBuffer) -> String { String(decoding: buffer.readableBytesView, as: UTF8.self) }
    private static func text(_ json: AdminJSON) -> String {
        var bytes: [UInt8] = []
        json.render(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: The page

    @Test("the embedded page is dashboard.html byte for byte (run scripts/embed_dashboard.py when this fails)")
    func pageIsCurrent() throws {
        // Tests/GatewayTransportTests/DashboardTests.swift → the repository root.
        let root = String(#filePath).split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        let path = root + "/Sources/GatewayTransport/Admin/Dashboard/dashboard.html"
        let source = try readFile(path)
        #expect(source == Array(DashboardPage.html.utf8), "DashboardPage+Generated.swift is stale: run python3 scripts/embed_dashboard.py")
    }

    @Test("the page is served at / with a CSP of its own hashes, and not when the dashboard is off")
    func pageRoute() async {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        var routes = AdminRoutes(
            broker: broker,
            readiness: ReadinessRegistry(),
            probe: EventLoopProbe(group: MultiThreadedEventLoopGroup.singleton),
            metricsText: { [] },
            token: "s3cret",
            healthTimeout: .seconds(10),
            startedAt: .now
        )
        #expect(await routes.respond(to: AdminRequest(method: .GET, uri: "/", authorization: nil)).status == .notFound)
        routes.dashboard = DashboardHub(configuration: .init(), sources: Self.sources(broker))
        // The page holds no data: served without the token (a browser cannot send one when it navigates).
        let page = await routes.respond(to: AdminRequest(method: .GET, uri: "/", authorization: nil))
        #expect(page.status == .ok && page.contentType == "text/html; charset=utf-8")
        let csp = page.headers.first { $0.0 == "Content-Security-Policy" }?.1 ?? ""
        #expect(csp.contains("script-src '\(DashboardPage.scriptHash)'") && csp.contains("style-src '\(DashboardPage.styleHash)'"))
        #expect(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"))
        #expect(DashboardPage.scriptHash.hasPrefix("sha256-") && DashboardPage.styleHash.hasPrefix("sha256-"))
        #expect(await routes.respond(to: AdminRequest(method: .POST, uri: "/", authorization: nil)).status == .methodNotAllowed)
    }

    // MARK: Feed sessions

    @Test("the feed needs the token, refuses bad watch filters and other methods")
    func feedToken() {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        let hub = DashboardHub(configuration: .init(), sources: Self.sources(broker))
        let routes = AdminRoutes(
            broker: broker,
            readiness: ReadinessRegistry(),
            probe: EventLoopProbe(group: MultiThreadedEventLoopGroup.singleton),
            metricsText: { [] },
            token: "s3cret",
            healthTimeout: .seconds(10),
            startedAt: .now,
            dashboard: hub
        )
        func status(_ uri: String, _ authorization: String?, method: HTTPMethod = .GET) -> HTTPResponseStatus {
            switch routes.joinFeed(AdminRequest(method: method, uri: uri, authorization: authorization), hub: hub) {
            case .joined(let session):
                hub.leave(session)
                return .ok
            case .refused(let response):
                return response.status
            }
        }
        #expect(status(AdminRoutes.dashboardFeedPath, nil) == .unauthorized)
        #expect(status(AdminRoutes.dashboardFeedPath, "Bearer wrong") == .unauthorized)
        #expect(status(AdminRoutes.dashboardFeedPath, "s3cret") == .unauthorized)
        #expect(status(AdminRoutes.dashboardFeedPath, "Bearer s3cret") == .ok)
        #expect(status(AdminRoutes.dashboardFeedPath + "?watch=a/%23", "Bearer s3cret") == .ok)
        #expect(status(AdminRoutes.dashboardFeedPath + "?watch=a/%23/b", "Bearer s3cret") == .badRequest)
        #expect(status(AdminRoutes.dashboardFeedPath, "Bearer s3cret", method: .POST) == .methodNotAllowed)
        #expect(hub.sessionCount == 0 && broker.topicWatch.watcherCount == 0)
    }

    @Test("sessions are capped; the sketch counts only while one is open; leaving frees a place")
    func sessionCap() throws {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        let hub = DashboardHub(configuration: .init(maxSessions: 2), sources: Self.sources(broker))
        #expect(!broker.topicRates.isEnabled)
        let first = try hub.join(watch: nil)
        #expect(broker.topicRates.isEnabled)
        let second = try hub.join(watch: "t/#")
        #expect(throws: DashboardHub.JoinError.full) { try hub.join(watch: nil) }
        #expect(hub.sessionCount == 2 && broker.topicWatch.watcherCount == 1)
        hub.leave(second)
        #expect(broker.topicWatch.watcherCount == 0 && broker.topicRates.isEnabled)
        let third = try hub.join(watch: nil)
        hub.leave(first)
        hub.leave(third)
        #expect(hub.sessionCount == 0 && !broker.topicRates.isEnabled)
        // With nobody watching, a tick computes nothing.
        hub.tick()
        #expect(hub.snapshotsComputed == 0)
    }

    @Test("one snapshot per tick, the same bytes for every session; history first; nothing while idle")
    func ticks() async throws {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        let hub = DashboardHub(configuration: .init(interval: .milliseconds(20)), sources: Self.sources(broker))
        let runner = Task { await hub.run() }
        defer { runner.cancel() }
        let a = try hub.join(watch: nil)
        let b = try hub.join(watch: nil)
        var aEvents = a.events.makeAsyncIterator()
        var bEvents = b.events.makeAsyncIterator()
        #expect(Self.text(try #require(await aEvents.next())) == "event: history\ndata: {\"points\":[]}\n\n")
        _ = await bEvents.next()
        let fromA = try #require(await aEvents.next())
        let fromB = try #require(await bEvents.next())
        #expect(Self.text(fromA).hasPrefix("event: snapshot\ndata: {\"time\":"))
        #expect(Self.text(fromA).hasSuffix("}\n\n") && !Self.text(fromA).dropLast(2).contains("\n\n"))
        #expect(fromA == fromB)
        hub.leave(a)
        hub.leave(b)
        let computed = hub.snapshotsComputed
        try await Task.sleep(for: .milliseconds(200))
        // At most the tick that was under way when the last session left.
        #expect(hub.snapshotsComputed <= computed + 1)
    }

    // MARK: The snapshot

    @Test("the snapshot: connections by transport and protocol, rates as deltas, drops, storage, readiness, topics")
    func snapshotJSON() async throws {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        let readiness = ReadinessRegistry()
        readiness.set("listeners", .ready)
        readiness.set("storage", .notReady("unreachable"))
        let metrics = """
            # TYPE iotgw_messages_dropped_total counter
            iotgw_messages_dropped_total{reason="queue_full_qos0"} 7
            iotgw_messages_dropped_total{reason="global_cap"} 3
            # TYPE iotgw_event_loop_lag_seconds gauge
            iotgw_event_loop_lag_seconds{loop="1"} 0.5
            iotgw_event_loop_lag_seconds{loop="0"} 0.25
            iotgw_ingest_commit_seconds_sum 0.3
            iotgw_ingest_commit_seconds_count 6
            iotgw_other_metric{a="b"} 9

            """
        let sources = Self.sources(broker, metrics: metrics, readiness: readiness)
        let publisher = await Self.connect(broker, "pub")
        _ = await Self.connect(broker, "five", version: .v5, transport: .ws)
        let t0 = ContinuousClock.now
        let first = DashboardSnapshot.make(sources: sources, previous: nil, now: t0, wallTime: 1_000, sessions: 1, maxSessions: 10)
        #expect(first.point == DashboardSnapshot.Point(time: 1_000, messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0))
        broker.topicRates.setEnabled(true)
        for _ in 0..<10 {
            _ = await publisher.handle(.publish(MQTTPublishPacket(topic: "s/1", payload: ByteBuffer(string: "12345"), qos: .atMostOnce)))
        }
        broker.topicRates.tick()
        var previous = first.counters
        previous.commitSum = 0.1
        previous.commitCount = 2
        let second = DashboardSnapshot.make(
            sources: sources,
            previous: previous,
            now: t0.advanced(by: .seconds(2)),
            wallTime: 3_000,
            sessions: 1,
            maxSessions: 10
        )
        #expect(second.point == DashboardSnapshot.Point(time: 3_000, messagesIn: 5, messagesOut: 0, bytesIn: 25, bytesOut: 0))
        let json = Self.text(second.json)
        // Connections by transport come from the listeners' admission counts (none here: no listener);
        // by protocol from the connected sessions.
        #expect(json.contains(#""by_protocol":{"3.1.1":1,"5.0":1,"json":0}"#))
        #expect(json.contains(#""rates":{"messages_in":5.0,"messages_out":0.0,"bytes_in":25.0,"bytes_out":0.0,"dropped":0.0}"#))
        #expect(json.contains(#""drops":{"global_cap":3,"queue_full_qos0":7}"#))
        #expect(json.contains(#""storage":{"enabled":false}"#))
        #expect(json.contains(#""event_loop_lag_seconds":[0.25,0.5]"#))
        #expect(json.contains(#""readiness":{"status":"not_ready","components":[{"name":"listeners","state":"ready"},{"name":"storage","state":"not_ready","reason":"unreachable"}]}"#))
        #expect(json.contains(#""topics":{"window_seconds":1,"messages":10,"max_error":0,"slots":128,"top":[{"topic":"s/1","per_second":10.0,"count":10}]}"#))
        #expect(json.contains(#""bridges":[{"name":"up","state":"connected","last_error":null,"queued":3,"forwarded":4,"received":5,"dropped":0}]"#))
        #expect(json.contains(#""dashboard":{"sessions":1,"max_sessions":10}"#))
        #expect(json.contains(#""queued":{"messages":0,"bytes":0,"max_bytes":268435456,"#))
        #expect(second.counters.commitCount == 6 && second.counters.dropped == 10)
    }

    @Test("watch events carry text payloads as text and others as hex")
    func watchEvent() {
        let seen = [
            TopicWatch.Seen(topic: "a", payload: Array("héllo".utf8), payloadSize: 6, qos: .atMostOnce, retain: false, publisherClientID: "p", receivedAt: 5),
            TopicWatch.Seen(topic: "b", payload: [0, 255], payloadSize: 2, qos: .exactlyOnce, retain: true, publisherClientID: nil, receivedAt: 6),
            // Cut inside "é": the last byte is left off and the rest is text.
            TopicWatch.Seen(topic: "c", payload: [0x61, 0xC3], payloadSize: 3, qos: .atMostOnce, retain: false, publisherClientID: nil, receivedAt: 7),
        ]
        let text = Self.text(DashboardHub.watchEvent(seen, skipped: 4, filter: "#"))
        #expect(text.hasPrefix("event: watch\ndata: {\"filter\":\"#\",\"messages\":["))
        #expect(text.contains(#"{"time":5,"topic":"a","qos":0,"retain":false,"client_id":"p","size":6,"truncated":false,"text":"héllo"}"#))
        #expect(text.contains(#"{"time":6,"topic":"b","qos":2,"retain":true,"client_id":null,"size":2,"truncated":false,"hex":"00ff"}"#))
        #expect(text.contains(#""truncated":true,"text":"a"}"#))
        #expect(text.hasSuffix(#"],"skipped":4}"# + "\n\n"))
    }

    @Test("the clients API lists username, address, transport, protocol and connected since")
    func clientDetails() async {
        let broker = Broker(configuration: BrokerConfiguration(), logger: Self.logger)
        _ = await Self.connect(broker, "dev-1", version: .v5, transport: .wss)
        let routes = AdminRoutes(
            broker: broker,
            readiness: ReadinessRegistry(),
            probe: EventLoopProbe(group: MultiThreadedEventLoopGroup.singleton),
            metricsText: { [] },
            token: nil,
            healthTimeout: .seconds(10),
            startedAt: .now
        )
        let response = await routes.respond(to: AdminRequest(method: .GET, uri: "/api/v1/clients?prefix=dev", authorization: nil))
        let body = String(decoding: response.body, as: UTF8.self)
        #expect(body.contains(#""client_id":"dev-1","connected":true,"persistent":false,"subscriptions":0,"queued_messages":0,"username":null,"address":"[IPv4]127.0.0.1:5000","transport":"wss","protocol":"5.0","connected_since":"#))
    }

    // MARK: Prometheus text

    @Test("Prometheus samples: only the names asked for, labels unescaped, special values")
    func prometheus() {
        let text = """
            # HELP x_total a counter
            x_total{a="1",b="q\\"uote\\\\ \\n"} 3
            x_total 4
            y NaN
            z{le="+Inf"} +Inf
            skipped 1

            """
        let samples = PrometheusSamples(text: Array(text.utf8), names: ["x_total", "y", "z"])
        #expect(samples.value("x_total", ["a": "1", "b": "q\"uote\\ \n"]) == 3)
        #expect(samples.value("x_total") == 4)
        #expect(samples.value("y")?.isNaN == true)
        #expect(samples.value("z", ["le": "+Inf"]) == .infinity)
        #expect(samples.value("skipped") == nil && samples.samples.count == 4)
    }
}

/// Reads a whole (small) file; throws when it cannot be read.
private func readFile(_ path: String) throws -> [UInt8] {
    struct Unreadable: Error { var path: String }
    #if canImport(Glibc)
    guard let file = fopen(path, "rb") else { throw Unreadable(path: path) }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = fread(&buffer, 1, buffer.count, file)
        if count <= 0 { break }
        bytes.append(contentsOf: buffer[..<count])
    }
    return bytes
    #else
    throw Unreadable(path: path)
    #endif
}

#if canImport(Glibc)
import Glibc
#endif

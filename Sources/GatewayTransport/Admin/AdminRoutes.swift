import GatewayCore
import MQTTCodec
import NIOCore
import NIOHTTP1

/// An HTTP request as the admin routes see it.
struct AdminRequest: Sendable {
    var method: HTTPMethod
    /// The percent-decoded path, without the query.
    var path: String
    /// Query parameters, percent-decoded (`+` is a space); the last of repeated names wins.
    var query: [String: String]
    /// The `Authorization` header, if any.
    var authorization: String?

    init(method: HTTPMethod, uri: String, authorization: String?) {
        self.method = method
        self.authorization = authorization
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        path = Self.percentDecoded(parts.first.map(String.init) ?? "/", plusIsSpace: false) ?? ""
        var query: [String: String] = [:]
        if parts.count > 1 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let name = Self.percentDecoded(String(kv[0]), plusIsSpace: true) else { continue }
                query[name] = kv.count > 1 ? Self.percentDecoded(String(kv[1]), plusIsSpace: true) : ""
            }
        }
        self.query = query
    }

    /// Decodes `%XX` escapes (and `+` in queries); nil when an escape is malformed or the result is not UTF-8.
    static func percentDecoded(_ text: String, plusIsSpace: Bool) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "%") {
                guard iterator.count >= 2, let high = hexValue(iterator.removeFirst()), let low = hexValue(iterator.removeFirst()) else {
                    return nil
                }
                bytes.append(high << 4 | low)
            } else if byte == UInt8(ascii: "+") && plusIsSpace {
                bytes.append(UInt8(ascii: " "))
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// An HTTP response of the admin listener.
struct AdminResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: [UInt8]
    var headers: [(String, String)] = []

    static func json(_ status: HTTPResponseStatus, _ value: AdminJSON, headers: [(String, String)] = []) -> AdminResponse {
        AdminResponse(status: status, contentType: "application/json", body: value.bytes, headers: headers)
    }

    static func error(_ status: HTTPResponseStatus, _ message: String, headers: [(String, String)] = []) -> AdminResponse {
        json(status, .object([("error", .string(message))]), headers: headers)
    }
}

/// What the admin endpoints answer. Pure request-to-response logic over the broker, the readiness
/// registry and the event-loop probe, so it can be tested without sockets.
struct AdminRoutes: Sendable {
    let broker: Broker
    let readiness: ReadinessRegistry
    let probe: EventLoopProbe
    /// The Prometheus text exposition of every metric.
    let metricsText: @Sendable () -> [UInt8]
    /// When not nil, `/metrics` and `/api/...` require `Authorization: Bearer <token>`.
    let token: String?
    /// How long an event loop may take to run a no-op before `/healthz` answers 503.
    let healthTimeout: Duration
    let startedAt: ContinuousClock.Instant
    /// Stored telemetry for `/api/v1/messages`; nil when storage is disabled.
    var telemetry: (any TelemetryReader)? = nil
    /// The bridges for `/api/v1/stats`.
    var bridges: @Sendable () -> [AdminBridgeStatus] = { [] }
    /// Telemetry storage's footprint for `/api/v1/stats`; nil when storage is off.
    var storage: (@Sendable () -> AdminStorageStatus)? = nil
    /// The dashboard's feed; nil when `admin.dashboard` is off (`/` then answers 404).
    var dashboard: DashboardHub? = nil

    /// Where the dashboard's live feed is served (see ``AdminServer``).
    static let dashboardFeedPath = "/api/v1/dashboard/feed"

    /// The most clients one `/api/v1/clients` page returns.
    static let maxPageSize = 1000
    /// The page size when `limit` is not given.
    static let defaultPageSize = 100

    func respond(to request: AdminRequest) async -> AdminResponse {
        let path = request.path
        switch path {
        case "/", "/index.html":
            guard dashboard != nil else { return .error(.notFound, "the dashboard is disabled (admin.dashboard)") }
            guard request.method == .GET || request.method == .HEAD else { return methodNotAllowed("GET") }
            return DashboardPage.response
        case Self.dashboardFeedPath:
            // Served by AdminServer as a stream; here only when the dashboard is off.
            return .error(.notFound, "the dashboard is disabled (admin.dashboard)")
        case "/healthz":
            guard request.method == .GET else { return methodNotAllowed("GET") }
            return await health()
        case "/readyz":
            guard request.method == .GET else { return methodNotAllowed("GET") }
            return ready()
        case "/metrics":
            guard request.method == .GET else { return methodNotAllowed("GET") }
            if let refusal = authorize(request) { return refusal }
            return AdminResponse(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metricsText())
        case "/api/v1/stats":
            guard request.method == .GET else { return methodNotAllowed("GET") }
            if let refusal = authorize(request) { return refusal }
            return stats()
        case "/api/v1/clients":
            guard request.method == .GET else { return methodNotAllowed("GET") }
            if let refusal = authorize(request) { return refusal }
            return clients(request)
        case "/api/v1/messages":
            guard request.method == .GET else { return methodNotAllowed("GET") }
            if let refusal = authorize(request) { return refusal }
            return await messages(request)
        default:
            let prefix = "/api/v1/clients/"
            if path.hasPrefix(prefix) && path.count > prefix.count {
                guard request.method == .DELETE else { return methodNotAllowed("DELETE") }
                if let refusal = authorize(request) { return refusal }
                return disconnect(clientID: String(path.dropFirst(prefix.count)))
            }
            return .error(.notFound, "no such endpoint")
        }
    }

    // MARK: Endpoints

    private func health() async -> AdminResponse {
        let samples = await probe.probe(timeout: healthTimeout)
        let ok = EventLoopProbe.allResponding(samples)
        let loops: [AdminJSON] = samples.map { sample in
            .object([
                ("index", .int(sample.index)),
                ("responding", .bool(sample.lag != nil)),
                ("lag_seconds", sample.lag.map { .double(Self.seconds($0)) } ?? .null),
            ])
        }
        return .json(ok ? .ok : .serviceUnavailable, .object([("status", .string(ok ? "ok" : "unresponsive")), ("event_loops", .array(loops))]))
    }

    private func ready() -> AdminResponse {
        let components = readiness.snapshot
        let ready = !components.isEmpty && components.allSatisfy(\.state.isReady)
        let list: [AdminJSON] = components.map { component in
            switch component.state {
            case .ready:
                .object([("name", .string(component.name)), ("state", .string("ready"))])
            case .notReady(let reason):
                .object([("name", .string(component.name)), ("state", .string("not_ready")), ("reason", .string(reason))])
            }
        }
        return .json(ready ? .ok : .serviceUnavailable, .object([("status", .string(ready ? "ready" : "not_ready")), ("components", .array(list))]))
    }

    private func stats() -> AdminResponse {
        let byTransport = broker.connectionsByTransport
        let totals = broker.metrics.snapshot
        let transports: [(String, AdminJSON)] = GatewayMetrics.Transport.allCases.map { ($0.rawValue, .int(byTransport[$0] ?? 0)) }
        return .json(
            .ok,
            .object([
                ("uptime_seconds", .double(Self.seconds(startedAt.duration(to: .now)))),
                ("draining", .bool(broker.isDraining)),
                ("connections", .object([("total", .int(byTransport.values.reduce(0, +))), ("by_transport", .object(transports))])),
                ("clients_connected", .int(broker.connectedClientCount)),
                ("sessions", .int(broker.sessionCount)),
                ("subscriptions", .int(broker.subscriptionCount)),
                ("retained_messages", .int(broker.retainedCount)),
                ("queued", .object([("messages", .int(broker.queuedMessages)), ("bytes", .int(broker.queuedBytes))])),
                (
                    "totals",
                    .object([
                        ("messages_received", .int(totals.messagesReceived)),
                        ("messages_sent", .int(totals.messagesSent)),
                        ("bytes_received", .int(totals.bytesReceived)),
                        ("bytes_sent", .int(totals.bytesSent)),
                    ])
                ),
                ("bridges", .array(bridges().map(Self.bridgeJSON))),
                ("storage", storage.map { Self.storageJSON($0()) } ?? .null),
            ])
        )
    }

    private static func storageJSON(_ storage: AdminStorageStatus) -> AdminJSON {
        .object([
            ("backend", .string(storage.backend)),
            ("database_bytes", storage.databaseBytes.map { .int(Int($0)) } ?? .null),
            ("free_bytes", storage.freeBytes.map { .int(Int($0)) } ?? .null),
            ("min_free_bytes", .int(Int(storage.minFreeBytes))),
            ("intake_paused", .bool(storage.intakePaused)),
        ])
    }

    /// One bridge as `/api/v1/stats` and the dashboard's snapshot show it.
    static func bridgeJSON(_ bridge: AdminBridgeStatus) -> AdminJSON {
        .object([
            ("name", .string(bridge.name)),
            ("state", .string(bridge.state)),
            ("last_error", bridge.lastError.map { .string($0) } ?? .null),
            ("queued", .int(bridge.queued)),
            ("forwarded", .int(bridge.forwarded)),
            ("received", .int(bridge.received)),
            ("dropped", .int(bridge.dropped)),
        ])
    }

    private func clients(_ request: AdminRequest) -> AdminResponse {
        var limit = Self.defaultPageSize
        if let text = request.query["limit"] {
            guard let value = Int(text), (1...Self.maxPageSize).contains(value) else {
                return .error(.badRequest, "limit must be an integer from 1 to \(Self.maxPageSize)")
            }
            limit = value
        }
        let prefix = request.query["prefix"] ?? ""
        let after = request.query["after"].flatMap { $0.isEmpty ? nil : $0 }
        let (page, total) = broker.clients(prefix: prefix, after: after, limit: limit)
        let list: [AdminJSON] = page.map { client in
            let connection = client.connection
            return .object([
                ("client_id", .string(client.clientID)),
                ("connected", .bool(client.connected)),
                ("persistent", .bool(client.persistent)),
                ("subscriptions", .int(client.subscriptions)),
                ("queued_messages", .int(client.queuedMessages)),
                ("username", client.username.map { .string($0) } ?? .null),
                ("address", connection?.address.map { .string($0) } ?? .null),
                ("transport", connection?.transport.map { .string($0.rawValue) } ?? .null),
                ("protocol", connection.map { .string($0.protocolName) } ?? .null),
                // Of the current connection; nil while the session is offline.
                ("connected_since", client.connected ? connection.map { .int(Int($0.connectedAt)) } ?? .null : .null),
            ])
        }
        // A full page may have more after it: the cursor for the next one is its last id.
        let next: AdminJSON = page.count == limit ? page.last.map { .string($0.clientID) } ?? .null : .null
        return .json(.ok, .object([("total", .int(total)), ("clients", .array(list)), ("next", next)]))
    }

    /// `GET /api/v1/messages?topic=&since=&after=&limit=`: stored telemetry, oldest first, read through
    /// the storage pool. `topic` is an exact topic; `since` is milliseconds since the epoch; `after` is
    /// the `next` cursor of the previous page. UTF-8 payloads are strings, others base64.
    private func messages(_ request: AdminRequest) async -> AdminResponse {
        guard let telemetry else { return .error(.notFound, "storage is disabled") }
        var limit = Self.defaultPageSize
        if let text = request.query["limit"] {
            guard let value = Int(text), (1...Self.maxPageSize).contains(value) else {
                return .error(.badRequest, "limit must be an integer from 1 to \(Self.maxPageSize)")
            }
            limit = value
        }
        var since: Int64?
        if let text = request.query["since"] {
            guard let value = Int64(text), value >= 0 else {
                return .error(.badRequest, "since must be milliseconds since the epoch")
            }
            since = value
        }
        var after: Int64?
        if let text = request.query["after"], !text.isEmpty {
            guard let value = Int64(text) else { return .error(.badRequest, "after must be a message id") }
            after = value
        }
        let topic = request.query["topic"].flatMap { $0.isEmpty ? nil : $0 }
        let rows: [StoredTelemetry]
        do {
            rows = try await telemetry.messages(topic: topic, since: since, afterID: after, limit: limit)
        } catch {
            return .error(.serviceUnavailable, "storage unavailable")
        }
        let list: [AdminJSON] = rows.map { row in
            var members: [(String, AdminJSON)] = [
                ("id", .int(Int(row.id))),
                ("received_at", .int(Int(row.record.receivedAt))),
                ("client_id", .string(row.record.clientID)),
                ("topic", .string(row.record.topic)),
                ("qos", .int(Int(row.record.qos.rawValue))),
                ("retain", .bool(row.record.retain)),
            ]
            let bytes = row.record.payload.readableBytesView
            if let text = String(validating: bytes, as: UTF8.self) {
                members.append(("payload", .string(text)))
            } else {
                var encoded: [UInt8] = []
                Base64.encode(bytes, into: &encoded)
                members.append(("payload", .string(String(decoding: encoded, as: UTF8.self))))
                members.append(("encoding", .string("base64")))
            }
            return .object(members)
        }
        let next: AdminJSON = rows.count == limit ? rows.last.map { .int(Int($0.id)) } ?? .null : .null
        return .json(.ok, .object([("messages", .array(list)), ("next", next)]))
    }

    private func disconnect(clientID: String) -> AdminResponse {
        guard broker.disconnect(clientID: clientID) else {
            return .error(.notFound, "no connected client with this id")
        }
        return .json(.ok, .object([("client_id", .string(clientID)), ("disconnected", .bool(true))]))
    }

    // MARK: Helpers

    /// Opens a dashboard feed session for `request`, or returns the refusal: 405 for other methods,
    /// 401 without the token, 400 for a bad watch filter, 503 past the session cap.
    func joinFeed(_ request: AdminRequest, hub: DashboardHub) -> FeedJoin {
        guard request.method == .GET || request.method == .HEAD else { return .refused(methodNotAllowed("GET")) }
        if let refusal = authorize(request) { return .refused(refusal) }
        let watch = request.query["watch"].flatMap { $0.isEmpty ? nil : $0 }
        do {
            return .joined(try hub.join(watch: watch))
        } catch .full {
            return .refused(
                .error(.serviceUnavailable, "too many dashboard sessions (\(hub.configuration.maxSessions))", headers: [("Retry-After", "5")])
            )
        } catch {
            return .refused(.error(.badRequest, "watch must be a valid topic filter (not $share/...)"))
        }
    }

    /// What ``joinFeed(_:hub:)`` decided.
    enum FeedJoin {
        case joined(DashboardHub.Session)
        case refused(AdminResponse)
    }

    /// nil when the request may proceed; else the 401 answer.
    func authorize(_ request: AdminRequest) -> AdminResponse? {
        guard let token else { return nil }
        let expected = Array("Bearer \(token)".utf8)
        let presented = Array((request.authorization ?? "").utf8)
        // Compare in time independent of where the first difference is.
        var difference = UInt8(expected.count == presented.count ? 0 : 1)
        for index in 0..<expected.count {
            difference |= expected[index] ^ (index < presented.count ? presented[index] : 0)
        }
        if difference == 0 { return nil }
        return .error(.unauthorized, "a bearer token is required", headers: [("WWW-Authenticate", "Bearer realm=\"iotgw\"")])
    }

    private func methodNotAllowed(_ allowed: String) -> AdminResponse {
        .error(.methodNotAllowed, "method not allowed", headers: [("Allow", allowed)])
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

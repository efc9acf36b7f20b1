import GatewayCore

/// What the dashboard's figures are read from: the places `/api/v1/stats`, `/readyz` and `/metrics`
/// already read them.
struct DashboardSources: Sendable {
    let broker: Broker
    let readiness: ReadinessRegistry
    /// The Prometheus text exposition (drops by reason, the ingest queue, commit latency, the pool,
    /// event-loop lag).
    let metricsText: @Sendable () -> [UInt8]
    let bridges: @Sendable () -> [AdminBridgeStatus]
    /// Connections in the storage pool; nil when storage is off.
    let poolSize: Int?
    let startedAt: ContinuousClock.Instant
}

/// One dashboard snapshot: the figures of one interval, computed once and sent to every session.
///
/// Rates are deltas of the totals since the previous snapshot over the time between them; the batch
/// commit latency is the mean of the commits in that interval (the histogram's `_sum` and `_count`).
struct DashboardSnapshot: Sendable {
    /// The counters a snapshot is a delta against.
    struct Counters: Sendable {
        var at: ContinuousClock.Instant
        var totals: GatewayMetrics.Snapshot
        var dropped: Double
        var commitSum: Double
        var commitCount: Double
    }

    /// One point of the rolling charts.
    struct Point: Sendable, Hashable {
        /// Milliseconds since the Unix epoch.
        var time: Int64
        var messagesIn: Double
        var messagesOut: Double
        var bytesIn: Double
        var bytesOut: Double

        var json: AdminJSON {
            .array([.int(Int(time)), .double(messagesIn), .double(messagesOut), .double(bytesIn), .double(bytesOut)])
        }
    }

    /// The metric names a snapshot reads from the exposition.
    static let metricNames: Set<String> = [
        "iotgw_messages_dropped_total", "iotgw_ingest_rejected_total", "iotgw_ingest_queue_messages",
        "iotgw_ingest_queue_bytes", "iotgw_ingest_commit_seconds_sum", "iotgw_ingest_commit_seconds_count",
        "iotgw_db_pool_in_use", "iotgw_db_pool_waiting", "iotgw_event_loop_lag_seconds",
    ]

    /// How many topics the snapshot lists.
    static let topTopics = 20

    var json: AdminJSON
    var counters: Counters
    var point: Point

    /// Computes the snapshot at `now` against `previous` (nil: the first one, whose rates are 0).
    /// - Parameters:
    ///   - sessions: dashboard sessions open now, and `maxSessions` their cap (shown on the page).
    static func make(
        sources: DashboardSources,
        previous: Counters?,
        now: ContinuousClock.Instant,
        wallTime: Int64,
        sessions: Int,
        maxSessions: Int
    ) -> DashboardSnapshot {
        let broker = sources.broker
        let metrics = PrometheusSamples(text: sources.metricsText(), names: metricNames)
        let totals = broker.metrics.snapshot
        var drops: [(String, AdminJSON)] = []
        var dropped = 0.0
        for sample in metrics.all("iotgw_messages_dropped_total").sorted(by: { ($0.labels["reason"] ?? "") < ($1.labels["reason"] ?? "") }) {
            drops.append((sample.labels["reason"] ?? "unknown", .int(Int(sample.value))))
            dropped += sample.value
        }
        if let rejected = metrics.value("iotgw_ingest_rejected_total") {
            drops.append(("ingest_rejected", .int(Int(rejected))))
            dropped += rejected
        }
        let commitSum = metrics.value("iotgw_ingest_commit_seconds_sum") ?? 0
        let commitCount = metrics.value("iotgw_ingest_commit_seconds_count") ?? 0
        let counters = Counters(at: now, totals: totals, dropped: dropped, commitSum: commitSum, commitCount: commitCount)

        var point = Point(time: wallTime, messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0)
        var droppedPerSecond = 0.0
        var commitLatency: AdminJSON = .null
        var commitsPerSecond = 0.0
        if let previous {
            let seconds = max(0.001, AdminRoutes.seconds(previous.at.duration(to: now)))
            func rate(_ a: Int, _ b: Int) -> Double { Double(max(0, a - b)) / seconds }
            point.messagesIn = rate(totals.messagesReceived, previous.totals.messagesReceived)
            point.messagesOut = rate(totals.messagesSent, previous.totals.messagesSent)
            point.bytesIn = rate(totals.bytesReceived, previous.totals.bytesReceived)
            point.bytesOut = rate(totals.bytesSent, previous.totals.bytesSent)
            droppedPerSecond = max(0, dropped - previous.dropped) / seconds
            let commits = commitCount - previous.commitCount
            if commits > 0 {
                commitLatency = .double((commitSum - previous.commitSum) / commits)
                commitsPerSecond = commits / seconds
            }
        }

        let byTransport = broker.connectionsByTransport
        let transports: [(String, AdminJSON)] = GatewayMetrics.Transport.allCases.map { ($0.rawValue, .int(byTransport[$0] ?? 0)) }
        let byProtocol = broker.connectedClientsByProtocol
        let protocols: [(String, AdminJSON)] = (["3.1.1", "5.0", "json"] + byProtocol.keys.filter { !["3.1.1", "5.0", "json"].contains($0) }.sorted())
            .map { ($0, .int(byProtocol[$0] ?? 0)) }
        let configuration = broker.configuration

        var storage: [(String, AdminJSON)] = [("enabled", .bool(broker.ingest != nil))]
        if broker.ingest != nil {
            storage += [
                ("ingest_queue_messages", metrics.value("iotgw_ingest_queue_messages").map { .int(Int($0)) } ?? .null),
                ("ingest_queue_bytes", metrics.value("iotgw_ingest_queue_bytes").map { .int(Int($0)) } ?? .null),
                ("commit_latency_seconds", commitLatency),
                ("commits_per_second", .double(commitsPerSecond)),
                ("pool_in_use", metrics.value("iotgw_db_pool_in_use").map { .int(Int($0)) } ?? .null),
                ("pool_waiting", metrics.value("iotgw_db_pool_waiting").map { .int(Int($0)) } ?? .null),
                ("pool_size", sources.poolSize.map { .int($0) } ?? .null),
            ]
        }
        let lags: [AdminJSON] = metrics.all("iotgw_event_loop_lag_seconds")
            .sorted { Int($0.labels["loop"] ?? "") ?? 0 < Int($1.labels["loop"] ?? "") ?? 0 }
            .map { .double($0.value) }
        let components = sources.readiness.snapshot
        let ready = !components.isEmpty && components.allSatisfy(\.state.isReady)
        let readiness: [AdminJSON] = components.map { component in
            switch component.state {
            case .ready:
                .object([("name", .string(component.name)), ("state", .string("ready"))])
            case .notReady(let reason):
                .object([("name", .string(component.name)), ("state", .string("not_ready")), ("reason", .string(reason))])
            }
        }
        let report = broker.topicRates.report(limit: topTopics)
        let topics: [AdminJSON] = report.topics.map { entry in
            .object([("topic", .string(entry.topic)), ("per_second", .double(entry.perSecond)), ("count", .int(entry.count))])
        }
        let bridges: [AdminJSON] = sources.bridges().map(AdminRoutes.bridgeJSON)

        let json: AdminJSON = .object([
            ("time", .int(Int(wallTime))),
            ("uptime_seconds", .double(AdminRoutes.seconds(sources.startedAt.duration(to: now)))),
            ("draining", .bool(broker.isDraining)),
            (
                "connections",
                .object([
                    ("total", .int(byTransport.values.reduce(0, +))),
                    ("by_transport", .object(transports)),
                    ("by_protocol", .object(protocols)),
                ])
            ),
            ("sessions", .int(broker.sessionCount)),
            ("subscriptions", .int(broker.subscriptionCount)),
            ("retained_messages", .int(broker.retainedCount)),
            (
                "rates",
                .object([
                    ("messages_in", .double(point.messagesIn)),
                    ("messages_out", .double(point.messagesOut)),
                    ("bytes_in", .double(point.bytesIn)),
                    ("bytes_out", .double(point.bytesOut)),
                    ("dropped", .double(droppedPerSecond)),
                ])
            ),
            (
                "totals",
                .object([
                    ("messages_received", .int(totals.messagesReceived)),
                    ("messages_sent", .int(totals.messagesSent)),
                    ("bytes_received", .int(totals.bytesReceived)),
                    ("bytes_sent", .int(totals.bytesSent)),
                ])
            ),
            (
                "queued",
                .object([
                    ("messages", .int(broker.queuedMessages)),
                    ("bytes", .int(broker.queuedBytes)),
                    ("max_bytes", .int(configuration.globalMaxQueuedBytes)),
                    ("max_messages_per_client", .int(configuration.maxQueuedMessages)),
                ])
            ),
            ("drops", .object(drops)),
            ("storage", .object(storage)),
            ("bridges", .array(bridges)),
            ("event_loop_lag_seconds", .array(lags)),
            ("readiness", .object([("status", .string(ready ? "ready" : "not_ready")), ("components", .array(readiness))])),
            (
                "topics",
                .object([
                    ("window_seconds", .int(report.seconds)),
                    ("messages", .int(report.total)),
                    ("max_error", .int(report.maxError)),
                    ("slots", .int(broker.topicRates.slots)),
                    ("top", .array(topics)),
                ])
            ),
            ("dashboard", .object([("sessions", .int(sessions)), ("max_sessions", .int(maxSessions))])),
        ])
        return DashboardSnapshot(json: json, counters: counters, point: point)
    }
}

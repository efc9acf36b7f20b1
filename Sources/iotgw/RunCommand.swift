import ArgumentParser
import CMalloc
import Foundation
import GatewayBridge
import GatewayConfig
import GatewayCore
import GatewayStorage
import GatewayTransport
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import UnixSignals

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the gateway.",
        discussion: """
            Signals: SIGTERM/SIGINT drain and stop (exit 0); a second one, or shutdown.timeout passing, \
            forces the exit (status 3). SIGHUP reloads the live settings of the configuration file.
            """
    )

    @Option(name: .long, help: "The configuration file (.yaml, .yml or .json).")
    var config: String = "Configs/iotgw.yaml"

    @Option(name: .long, help: "Override log.level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    func run() async throws {
        let startedAt = ContinuousClock.now
        let file: GatewayConfigFile
        let serverConfiguration: GatewayServer.Configuration
        let databaseConfiguration: DatabaseConfiguration
        do {
            file = try ConfigLoader.load(path: config)
            serverConfiguration = try file.serverConfiguration(path: config)
            databaseConfiguration = try file.databaseConfiguration(path: config)
            try file.checkBridgeTLSFiles(path: config)
        } catch {
            printError("iotgw: invalid configuration: \(error)")
            throw ExitCode(2)
        }
        // Before anything uses NIO's singleton event-loop group (the executor below may): its size is
        // fixed when it is first used.
        if file.listeners.eventLoops > 0 {
            NIOSingletons.groupLoopCountSuggestion = file.listeners.eventLoops
        }
        let executor: ConcurrencyExecutor
        do {
            executor = try ConcurrencyExecutor.install(environment: ProcessInfo.processInfo.environment)
        } catch {
            printError("iotgw: \(error)")
            throw ExitCode(2)
        }
        var commandLineLevel: Logger.Level?
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel) else {
                printError("iotgw: --log-level: '\(logLevel)' is not one of \(GatewayConfigFile.logLevels.joined(separator: ", "))")
                throw ExitCode(2)
            }
            commandLineLevel = level
        }
        // Validated by ConfigLoader: both parse.
        let level = commandLineLevel ?? Logger.Level(rawValue: file.log.level) ?? .info
        let format = LogControl.Format(rawValue: file.log.format) ?? .text

        // Metrics first: the broker's GatewayMetrics creates its counters when it is made, and the log
        // writer its dropped-lines counter.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logWriter = LogWriter()
        logWriter.start()
        let logControl = LogControl(level: level, format: format)
        LoggingSystem.bootstrap { label in
            GatewayLogHandler(label: label, control: logControl, writer: logWriter)
        }
        let logger = Logger(label: "iotgw")
        // Trap the signals before anything slow happens, so that an early SIGTERM is already graceful.
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let environment = ProcessInfo.processInfo.environment
        let notifier = SystemdNotifier(environment: environment)
        notifier.notify("STATUS=starting")
        logger.info(
            "starting iotgw",
            metadata: [
                "iotgw.version": "\(GatewayVersion.current)", "iotgw.config": "\(config)", "iotgw.executor": "\(executor.rawValue)",
                "iotgw.event_loops": "\(NIOSingletons.groupLoopCountSuggestion)",
            ]
        )
        logFileLimit(ProcessResources.raiseOpenFileLimit(), maxConnections: file.limits.maxConnections, logger: logger)

        let readiness = ReadinessRegistry()
        // Storage opens before anything listens: a gateway that cannot keep its promise refuses to start.
        // The same database holds the users table when `auth.backend` is `database`.
        var ingestService: IngestService?
        var maintenanceService: StorageMaintenanceService?
        var diskStatus: StorageDiskStatus?
        var ingest: IngestQueue?
        var telemetryReader: (any TelemetryReader)?
        var journal: StateJournal?
        var journalService: StateJournalService?
        var stateStore: SQLBrokerStateStore?
        var openDatabase: (any SQLDatabase)?
        var databaseAuthenticator: DatabaseAuthenticator?
        var closingService: ClosingService?
        if file.storage.enabled || file.auth.backend == "database" {
            let database: any SQLDatabase
            do {
                database = try await databaseConfiguration.open(logger: logger)
            } catch {
                logger.critical("cannot open the database", metadata: ["error": "\(String(reflecting: error))"])
                printError("iotgw: cannot open storage at \(databaseConfiguration.location): \(error)")
                throw ExitCode(1)
            }
            let hasher = PasswordHasher(configuration: file.passwordHasherConfiguration)
            databaseAuthenticator = DatabaseAuthenticator(
                users: UserStore(database: database),
                hasher: hasher,
                configuration: file.databaseAuthenticatorConfiguration,
                logger: logger
            )
            let close: @Sendable () async -> Void = {
                await hasher.shutdown()
                await database.close()
            }
            openDatabase = database
            if file.storage.enabled {
                let store = SQLTelemetryStore(database: database)
                readiness.set("storage", .ready)
                telemetryReader = store
                let queue = IngestQueue(
                    configuration: file.ingestConfiguration,
                    store: store,
                    logger: logger,
                    onAvailabilityChange: { available in
                        readiness.set("storage", available ? .ready : .notReady("telemetry store unavailable"))
                    }
                )
                ingest = queue
                var sqlitePath: String?
                if case .sqlite(let sqlite) = databaseConfiguration { sqlitePath = sqlite.path }
                let disk = StorageDiskStatus(databasePath: sqlitePath, minFreeBytes: file.storage.minFreeBytes)
                diskStatus = disk
                let policy = TelemetryRetention.Policy(
                    maxAge: file.storage.retention.maxAge,
                    maxRows: file.storage.retention.maxRows,
                    chunkRows: file.storage.retention.chunkRows
                )
                maintenanceService = StorageMaintenanceService(
                    disk: disk,
                    retention: policy.isEnabled ? TelemetryRetention(database: database, policy: policy) : nil,
                    retentionInterval: .milliseconds(Int64(file.storage.retention.interval * 1000)),
                    ingest: queue,
                    readiness: readiness,
                    logger: logger
                )
                // The database is closed by the journal's service, which shuts down after this one.
                ingestService = IngestService(queue: queue, logger: logger, close: {})
                let sessions = SQLBrokerStateStore(database: database)
                stateStore = sessions
                let stateJournal = StateJournal(
                    configuration: file.stateJournalConfiguration,
                    store: sessions,
                    logger: logger,
                    onAvailabilityChange: { available in
                        readiness.set("sessions", available ? .ready : .notReady("session store unavailable"))
                    }
                )
                journal = stateJournal
                journalService = StateJournalService(journal: stateJournal, logger: logger, close: close)
            } else {
                closingService = ClosingService(close: close)
            }
        }
        let broker = Broker(configuration: file.brokerConfiguration, ingest: ingest, journal: journal, logger: logger)
        if let stateStore {
            // Before anything listens: persistent sessions, their queues and retained messages are back
            // in memory when the first client connects.
            let loadStarted = ContinuousClock.now
            do {
                let internalClients = Dictionary(
                    file.bridgeConfigurations.map { ($0.internalClientID, $0.queue) },
                    uniquingKeysWith: { first, _ in first }
                )
                let report = try await broker.restore(from: stateStore, internalClients: internalClients)
                logger.info(
                    "session store loaded",
                    metadata: [
                        "iotgw.restore.seconds": "\(Self.seconds(loadStarted.duration(to: .now)))",
                        "iotgw.restore.sessions": "\(report.sessions)",
                        "iotgw.restore.messages": "\(report.queuedMessages + report.inflightMessages)",
                        "iotgw.restore.inbound_qos2": "\(report.inboundQoS2)",
                    ]
                )
            } catch {
                logger.critical("cannot load the session store", metadata: ["error": "\(String(reflecting: error))"])
                printError("iotgw: cannot load sessions from \(databaseConfiguration.location): \(error)")
                await openDatabase?.close()
                throw ExitCode(1)
            }
        }
        let accessControl = AccessControl(broker: broker, databaseAuthenticator: databaseAuthenticator, logger: logger)
        // After the restore: restored subscriptions the configured ACL no longer allows are revoked.
        let revoked = accessControl.apply(file)
        logger.info(
            "authentication",
            metadata: [
                "iotgw.auth.backend": "\(file.auth.backend)",
                "iotgw.auth.anonymous": "\(file.auth.anonymous)",
                "iotgw.auth.acl.rules": "\(file.auth.acl.count)",
                "iotgw.auth.acl.revoked": "\(revoked)",
            ]
        )
        readiness.set("listeners", .notReady("starting"))
        readiness.set("shutdown", .ready)
        let coordinator = ShutdownCoordinator(readiness: readiness, notifier: notifier, broker: broker, logWriter: logWriter, logger: logger)
        let server = GatewayServer(
            broker: broker,
            configuration: serverConfiguration,
            logger: logger,
            onBound: { listeners in
                readiness.set("listeners", .ready)
                let addresses = listeners.map { "\($0.name) \($0.address)" }.joined(separator: ", ")
                notifier.notify("READY=1\nSTATUS=accepting connections: \(addresses)")
                logger.notice(
                    "ready",
                    metadata: ["iotgw.startup.seconds": "\(Self.seconds(startedAt.duration(to: .now)))"]
                )
            },
            onShutdown: { coordinator.beginShutdown(reason: "graceful shutdown") }
        )
        let reloader = ConfigReloader(
            path: config,
            initial: file,
            commandLineLevel: commandLineLevel,
            broker: broker,
            accessControl: accessControl,
            logControl: logControl,
            notifier: notifier,
            logger: logger
        )
        let probe = EventLoopProbe(group: MultiThreadedEventLoopGroup.singleton)
        let bridges = file.bridgeConfigurations.map { configuration in
            let component = "bridge:\(configuration.name)"
            if configuration.requiredForReadiness { readiness.set(component, .notReady("connecting")) }
            return BridgeService(configuration: configuration, broker: broker, logger: logger) { state, error in
                guard configuration.requiredForReadiness else { return }
                readiness.set(component, state == .connected ? .ready : .notReady(error.map { "\(state.rawValue): \($0)" } ?? state.rawValue))
            }
        }

        // ServiceGroup shuts services down in reverse order: the gateway first (stop accepting, drain,
        // close), then the bridges, the ingest queue, the admin listener (which answers /readyz 503
        // during the drain), housekeeping, the watchdog, and the signal handler last (it still forces
        // the exit on a second signal).
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(
                service: SignalService(
                    signals: signals,
                    coordinator: coordinator,
                    reloader: reloader,
                    shutdownDeadline: .milliseconds(Int64(file.shutdown.timeout * 1000)),
                    logger: logger
                )
            )
        ]
        if let interval = SystemdNotifier.watchdogInterval(environment: environment), notifier.isEnabled {
            logger.info("systemd watchdog enabled", metadata: ["iotgw.watchdog.seconds": "\(Self.seconds(interval))"])
            services.append(.init(service: WatchdogService(notifier: notifier, interval: interval, probe: probe, logger: logger)))
        }
        services.append(
            .init(service: HousekeepingService(broker: broker, probe: probe, notifier: notifier, startedAt: startedAt))
        )
        if file.admin.enabled {
            let admin = AdminServer(
                configuration: AdminServer.Configuration(
                    listener: ListenerConfiguration(host: file.admin.host, port: file.admin.port),
                    token: file.admin.token.isEmpty ? nil : file.admin.token,
                    dashboard: file.admin.dashboard,
                    dashboardMaxSessions: file.admin.dashboardSessions
                ),
                broker: broker,
                readiness: readiness,
                metricsText: { registry.emitToBuffer() },
                telemetry: telemetryReader,
                bridges: {
                    bridges.map { bridge in
                        let status = bridge.status.snapshot
                        return AdminBridgeStatus(
                            name: status.name,
                            state: status.state.rawValue,
                            lastError: status.lastError,
                            queued: status.queued,
                            forwarded: status.forwarded,
                            received: status.received,
                            dropped: status.dropped.values.reduce(0, +)
                        )
                    }
                },
                poolSize: file.storage.enabled ? file.storage.pool.size : nil,
                storage: diskStatus.map { [ingest] disk in
                    { @Sendable in
                        AdminStorageStatus(
                            backend: disk.databasePath == nil ? "postgres" : "sqlite",
                            databaseBytes: disk.databasePath == nil ? nil : disk.databaseBytes,
                            freeBytes: disk.availableBytes >= 0 ? disk.availableBytes : nil,
                            minFreeBytes: disk.minFreeBytes,
                            intakePaused: ingest?.isIntakePaused ?? false
                        )
                    }
                },
                startedAt: startedAt,
                logger: logger
            )
            services.append(.init(service: admin))
        }
        if let journalService {
            // Before the ingest service: shut down after it, so it flushes last and closes the database.
            services.append(.init(service: journalService))
        }
        if let ingestService {
            // Before the server: shut down after it, so the queue is flushed once connections drained.
            services.append(.init(service: ingestService))
        }
        if let closingService {
            // The database of the users table alone: closed after the connections drained.
            services.append(.init(service: closingService))
        }
        if let openDatabase {
            // Shuts down before the services that close the database.
            readiness.set("database", .ready)
            services.append(.init(service: DatabaseProbeService(database: openDatabase, readiness: readiness, logger: logger)))
        }
        if let maintenanceService {
            // Shuts down before the services that close the database.
            services.append(.init(service: maintenanceService))
        }
        // Bridges after storage and before the server: they stop once the listeners drained (the
        // drain gives queued messages time to reach the upstream) and before storage closes.
        for bridge in bridges { services.append(.init(service: bridge)) }
        services.append(.init(service: server))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                // SignalService owns SIGTERM, SIGINT and SIGHUP: it orders readiness and STOPPING=1
                // before the group's shutdown, and forces the exit on a second signal.
                gracefulShutdownSignals: [],
                cancellationSignals: [],
                logger: logger
            )
        )
        coordinator.attach(group)
        do {
            try await group.run()
        } catch {
            logger.error("gateway stopped with an error", metadata: ["error": "\(String(reflecting: error))"])
            notifier.notify("STATUS=stopped with an error: \(error)")
            logWriter.flush(timeout: .seconds(2))
            throw ExitCode(1)
        }
        logger.info("iotgw stopped", metadata: ["iotgw.uptime.seconds": "\(Self.seconds(startedAt.duration(to: .now)))"])
        logWriter.flush(timeout: .seconds(2))
    }

    /// Logs the open-file limit and the connections it allows; warns when `limits.max_connections`
    /// is above that.
    private func logFileLimit(_ limit: ProcessResources.FileLimit, maxConnections: Int, logger: Logger) {
        if let error = limit.error {
            logger.warning("could not read or raise the open-file limit", metadata: ["error": "\(String(cString: strerror(error)))"])
        }
        let capacity = limit.soft > ProcessResources.reservedDescriptors ? limit.soft - ProcessResources.reservedDescriptors : 0
        logger.info(
            "open-file limit",
            metadata: [
                "iotgw.nofile.soft": "\(limit.soft)",
                "iotgw.nofile.hard": "\(limit.hard)",
                "iotgw.nofile.raised": "\(limit.raised)",
                "iotgw.connections.capacity": "\(capacity)",
            ]
        )
        if UInt64(maxConnections) > capacity {
            logger.notice(
                "limits.max_connections is above what the open-file limit allows; raise LimitNOFILE (systemd) or ulimit -n",
                metadata: ["iotgw.connections.max": "\(maxConnections)", "iotgw.connections.capacity": "\(capacity)"]
            )
        }
    }

    static func seconds(_ duration: Duration) -> String {
        let value = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return String(format: "%.3f", value)
    }
}

/// Periodic upkeep: expires offline sessions, publishes due Wills, queue levels and `$SYS` topics
/// (at the live `mqtt.sys_interval`), samples event-loop lag, resident memory and open descriptors
/// into metrics, updates the systemd status line, and gives memory back to the system after
/// connections went away. Stops on graceful shutdown.
struct HousekeepingService: Service, CustomStringConvertible {
    let broker: Broker
    let probe: EventLoopProbe
    let notifier: SystemdNotifier
    let startedAt: ContinuousClock.Instant

    /// Process gauges under the Prometheus client-library names, so standard dashboards find them.
    private let residentMemory = Gauge(label: "process_resident_memory_bytes")
    private let openDescriptors = Gauge(label: "process_open_fds")
    private let maxDescriptors = Gauge(label: "process_max_fds")

    var description: String { "HousekeepingService" }

    init(broker: Broker, probe: EventLoopProbe, notifier: SystemdNotifier, startedAt: ContinuousClock.Instant) {
        self.broker = broker
        self.probe = probe
        self.notifier = notifier
        self.startedAt = startedAt
    }

    func run() async throws {
        var connectionsAtLastTrim = broker.connectionCount
        var lastSys: ContinuousClock.Instant?
        let lagGauges = (0..<probe.loopCount).map { Gauge(label: "iotgw_event_loop_lag_seconds", dimensions: [("loop", String($0))]) }
        var tick = 0
        // Sleeps until the next tick; graceful shutdown cancels the sleep and ends the loop.
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let now = ContinuousClock.now
            let sysInterval = broker.configuration.sysInterval
            if sysInterval > 0 && (lastSys.map { now >= $0.advanced(by: .seconds(sysInterval)) } ?? true) {
                broker.publishSysTopics(uptime: Int(startedAt.duration(to: now).components.seconds), version: GatewayVersion.current)
                lastSys = now
            }
            // A loop that does not answer within a second shows a lag of (at least) a second.
            for sample in await probe.probe(timeout: .seconds(1)) {
                lagGauges[sample.index].record(AdminMetrics.seconds(sample.lag ?? .seconds(1)))
            }
            if tick % 5 == 0 {
                if let rss = ProcessResources.residentBytes() { residentMemory.record(rss) }
                if let fds = ProcessResources.openDescriptors() { openDescriptors.record(fds) }
                let limit = ProcessResources.currentOpenFileLimit()
                if limit > 0 { maxDescriptors.record(Int(clamping: limit)) }
                notifier.notify("STATUS=\(broker.connectionCount) connections, \(broker.sessionCount) sessions, \(broker.queuedMessages) queued messages")
            }
            tick += 1
            do {
                try await cancelWhenGracefulShutdown {
                    try await Task.sleep(for: .seconds(1))
                }
            } catch {
                return
            }
            broker.expireSessions()
            broker.publishDueWills()
            broker.enforceSlowConsumerTimeout()
            broker.flushLogSummaries()
            broker.pruneAddressLimits()
            broker.recordQueueLevels()
            // glibc keeps freed memory in its arenas; after a wave of disconnects that is hundreds of
            // megabytes the process no longer needs. malloc_trim returns the free pages to the kernel.
            let connections = broker.connectionCount
            if connections + 1_000 <= connectionsAtLastTrim || (connections == 0 && connectionsAtLastTrim > 0) {
                malloc_trim(0)
                connectionsAtLastTrim = connections
            } else if connections > connectionsAtLastTrim {
                connectionsAtLastTrim = connections
            }
        }
    }
}

/// Unit conversions for metrics.
enum AdminMetrics {
    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

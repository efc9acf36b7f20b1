import ArgumentParser
import CMalloc
import GatewayConfig
import GatewayCore
import GatewayTransport
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the gateway.")

    @Option(name: .long, help: "The configuration file (.yaml, .yml or .json).")
    var config: String = "Configs/iotgw.yaml"

    @Option(name: .long, help: "Override log.level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    func run() async throws {
        let file: GatewayConfigFile
        let serverConfiguration: GatewayServer.Configuration
        do {
            file = try ConfigLoader.load(path: config)
            serverConfiguration = try file.serverConfiguration(path: config)
        } catch {
            printError("iotgw: invalid configuration: \(error)")
            throw ExitCode(2)
        }
        let levelName = logLevel ?? file.log.level
        guard let level = Logger.Level(rawValue: levelName) else {
            printError("iotgw: --log-level: '\(levelName)' is not one of \(GatewayConfigFile.logLevels.joined(separator: ", "))")
            throw ExitCode(2)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "iotgw")
        logger.logLevel = level
        logger.info("starting iotgw", metadata: ["iotgw.version": "\(GatewayVersion.current)", "iotgw.config": "\(config)"])

        let broker = Broker(configuration: file.brokerConfiguration, logger: logger)
        let server = GatewayServer(
            broker: broker,
            configuration: serverConfiguration,
            logger: logger
        )
        let housekeeping = HousekeepingService(broker: broker, sysInterval: file.mqtt.sysInterval)
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: housekeeping),
                    .init(service: server),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                cancellationSignals: [],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            logger.error("gateway stopped with an error", metadata: ["error": "\(String(reflecting: error))"])
            throw ExitCode(1)
        }
        logger.info("iotgw stopped")
    }
}

/// Periodic upkeep: expires offline sessions, publishes queue levels and gives memory back to the
/// system after connections went away. Stops on graceful shutdown.
struct HousekeepingService: Service {
    let broker: Broker
    /// Seconds between `$SYS` publications; 0 disables them.
    let sysInterval: Double

    func run() async throws {
        var connectionsAtLastTrim = broker.connectionCount
        let started = ContinuousClock.now
        var nextSys = started
        if sysInterval > 0 {
            broker.publishSysTopics(uptime: 0, version: GatewayVersion.current)
            nextSys = started.advanced(by: .seconds(sysInterval))
        }
        // Sleeps until the next tick; graceful shutdown cancels the sleep and ends the loop.
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown {
                    try await Task.sleep(for: .seconds(1))
                }
            } catch {
                return
            }
            broker.expireSessions()
            broker.publishDueWills()
            broker.recordQueueLevels()
            let now = ContinuousClock.now
            if sysInterval > 0 && now >= nextSys {
                broker.publishSysTopics(uptime: Int(started.duration(to: now).components.seconds), version: GatewayVersion.current)
                nextSys = now.advanced(by: .seconds(sysInterval))
            }
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

import GatewayStorage
import GatewayTransport
import Logging
import ServiceLifecycle

/// Asks the database every few seconds whether it answers (`SELECT 1` through the pool), so `/readyz`
/// reports an outage even while no commit is failing (an idle gateway has nothing to commit).
///
/// Readiness component `database`: not ready from the first failed probe, ready again from the next
/// answered one. A probe that finds every pooled connection busy says nothing: the database is
/// working. Stops on graceful shutdown (the database closes after it).
struct DatabaseProbeService: Service {
    let database: any SQLDatabase
    let readiness: ReadinessRegistry
    let logger: Logger
    var interval: Duration = .seconds(2)

    func run() async throws {
        var down = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                _ = try await database.query("SELECT 1")
                if down {
                    logger.notice("database answers again")
                    down = false
                }
                readiness.set("database", .ready)
            } catch is any PoolExhausted {
                // Busy, not down.
            } catch {
                if !down {
                    logger.error("database does not answer", metadata: ["error": "\(String(reflecting: error))"])
                    down = true
                }
                readiness.set("database", .notReady("database does not answer"))
            }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch {
                return
            }
        }
    }
}

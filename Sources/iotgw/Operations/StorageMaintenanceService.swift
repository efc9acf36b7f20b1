import Foundation
import GatewayCore
import GatewayStorage
import GatewayTransport
import Logging
import ServiceLifecycle

/// Keeps telemetry storage within its bounds while the gateway runs:
/// - every second it samples the SQLite file's size and the free space beside it
///   (``StorageDiskStatus``); under `storage.min_free_bytes` it pauses the ingest queue's intake (publishers
///   of stored topics then meet `storage.overflow`: back-pressure or refusal, never a failed write of
///   something already acknowledged), sets readiness component `disk` not ready and warns once; when
///   space is back it resumes and says so;
/// - every `storage.retention.interval` it runs one retention pass (``TelemetryRetention``).
///
/// Runs on the cooperative pool, never on an event loop (`stat`, `statvfs` and the deletes' awaits).
/// Stops on graceful shutdown, before the database closes.
struct StorageMaintenanceService: Service {
    let disk: StorageDiskStatus
    let retention: TelemetryRetention?
    let retentionInterval: Duration
    let ingest: IngestQueue
    let readiness: ReadinessRegistry
    let logger: Logger
    var sampleInterval: Duration = .seconds(1)

    func run() async throws {
        let clock = ContinuousClock()
        // The first pass soon after start-up, then one per interval.
        var nextRetention = clock.now + min(retentionInterval, .seconds(5))
        var paused = false
        if disk.databasePath != nil { readiness.set("disk", .ready) }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let low = disk.sample()
            if low != paused {
                paused = low
                ingest.setIntakePaused(low)
                if low {
                    let reason = "free disk space \(disk.availableBytes) bytes is under storage.min_free_bytes \(disk.minFreeBytes)"
                    logger.warning(
                        "storing paused: \(reason)",
                        metadata: ["iotgw.storage.free_bytes": "\(disk.availableBytes)", "iotgw.storage.path": "\(disk.databasePath ?? "")"]
                    )
                    readiness.set("disk", .notReady(reason))
                } else {
                    logger.notice("storing resumed: free disk space is back over storage.min_free_bytes", metadata: ["iotgw.storage.free_bytes": "\(disk.availableBytes)"])
                    readiness.set("disk", .ready)
                }
            }
            if let retention, clock.now >= nextRetention {
                nextRetention = clock.now + retentionInterval
                await runRetention(retention)
            }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: sampleInterval) }
            } catch {
                break
            }
        }
        if paused { ingest.setIntakePaused(false) }
    }

    private func runRetention(_ retention: TelemetryRetention) async {
        let started = ContinuousClock.now
        do {
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            // A short pause between chunks hands SQLite's single write lock back to the telemetry writer.
            let deleted = try await retention.apply(nowMilliseconds: now, pause: { try? await Task.sleep(for: .milliseconds(5)) })
            if deleted > 0 {
                logger.info(
                    "retention deleted old telemetry",
                    metadata: ["iotgw.retention.rows": "\(deleted)", "iotgw.retention.seconds": "\(started.duration(to: .now))"]
                )
            }
        } catch {
            logger.warning("retention pass failed; retrying next interval", metadata: ["error": "\(String(reflecting: error))"])
        }
    }
}

import GatewayTransport
import Logging
import ServiceLifecycle
import UnixSignals

/// Handles the process's signals as one `Service`: SIGHUP reloads the configuration, SIGTERM and
/// SIGINT start the graceful shutdown (through ``ShutdownCoordinator``), a second one forces the
/// exit, and so does the shutdown deadline.
///
/// SIGHUP is not a graceful-shutdown signal of the ServiceGroup (the group is configured with none):
/// this service owns all three signals, so that readiness and `STOPPING=1` come before the group
/// starts shutting services down. It is first in the group, so it is shut down last and still
/// listens for a second signal while everything else drains.
struct SignalService: Service, CustomStringConvertible {
    /// Trapped before the group starts (so an early SIGTERM is already graceful).
    let signals: UnixSignalsSequence
    let coordinator: ShutdownCoordinator
    let reloader: ConfigReloader
    /// From the first shutdown signal to the forced exit.
    let shutdownDeadline: Duration
    let logger: Logger

    var description: String { "SignalService" }

    func run() async {
        let signals = self.signals
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await signal in signals {
                        switch signal {
                        case .sighup:
                            await reloader.reload()
                        default:
                            await coordinator.requestShutdown(signal: signal)
                        }
                    }
                }
                group.addTask {
                    await coordinator.waitUntilShutdownStarts()
                    guard !Task.isCancelled else { return }
                    do {
                        try await Task.sleep(for: shutdownDeadline)
                    } catch {
                        return  // the gateway stopped in time
                    }
                    coordinator.forceExit(reason: "shutdown.timeout reached")
                }
            }
        }
    }
}

/// Pings the systemd watchdog (`WATCHDOG=1`) at half of `$WATCHDOG_USEC`, but only while every event
/// loop answers: a wedged loop stops the pings and systemd restarts the gateway.
struct WatchdogService: Service, CustomStringConvertible {
    let notifier: SystemdNotifier
    /// `$WATCHDOG_USEC`: systemd's deadline between pings.
    let interval: Duration
    let probe: EventLoopProbe
    let logger: Logger

    var description: String { "WatchdogService" }

    func run() async throws {
        let period = interval / 2
        do {
            try await ping(every: period)
        } catch is CancellationError {
            return  // graceful shutdown ended the loop
        }
    }

    private func ping(every period: Duration) async throws {
        try await cancelWhenGracefulShutdown {
            var next = ContinuousClock.now
            while !Task.isCancelled {
                let samples = await probe.probe(timeout: period / 2)
                if EventLoopProbe.allResponding(samples) {
                    notifier.notify("WATCHDOG=1")
                } else {
                    logger.error(
                        "an event loop did not respond; withholding the systemd watchdog ping",
                        metadata: ["iotgw.event_loops.unresponsive": "\(samples.filter { $0.lag == nil }.map(\.index))"]
                    )
                }
                next = next.advanced(by: period)
                try await Task.sleep(until: next, clock: .continuous)
            }
        }
    }
}

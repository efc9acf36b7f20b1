import GatewayCore
import GatewayTransport
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// The order of a graceful shutdown, and the way out when it takes too long.
///
/// The first SIGTERM/SIGINT (or any other start of graceful shutdown) turns readiness off and sends
/// `STOPPING=1` before anything else, then asks the ServiceGroup to shut down (the gateway stops
/// accepting, drains and closes). A second signal, or the deadline (`shutdown.timeout` after the
/// first), ends the process at once with ``forcedExitStatus``, after logging what was abandoned.
final class ShutdownCoordinator: Sendable {
    /// The exit status of a forced exit (second signal or deadline). 0 is a graceful stop, 1 an error,
    /// 2 an invalid configuration.
    static let forcedExitStatus: Int32 = 3

    private struct State {
        var group: ServiceGroup?
        var shuttingDown = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())
    private let readiness: ReadinessRegistry
    private let notifier: SystemdNotifier
    private let broker: Broker
    private let logWriter: LogWriter
    private let logger: Logger

    init(readiness: ReadinessRegistry, notifier: SystemdNotifier, broker: Broker, logWriter: LogWriter, logger: Logger) {
        self.readiness = readiness
        self.notifier = notifier
        self.broker = broker
        self.logWriter = logWriter
        self.logger = logger
    }

    /// The group ``requestShutdown(signal:)`` shuts down. Set once, before it runs.
    func attach(_ group: ServiceGroup) {
        state.withLock { $0.group = group }
    }

    /// Marks the gateway as stopping: readiness 503 and `STOPPING=1`. Idempotent.
    /// - Returns: true the first time.
    @discardableResult
    func beginShutdown(reason: String) -> Bool {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>]? in
            guard !state.shuttingDown else { return nil }
            state.shuttingDown = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        guard let waiters else { return false }
        readiness.set("shutdown", .notReady("draining"))
        notifier.notify("STOPPING=1\nSTATUS=draining (\(reason))")
        logger.notice("shutting down", metadata: ["iotgw.shutdown.reason": "\(reason)"])
        for waiter in waiters { waiter.resume() }
        return true
    }

    /// A shutdown signal arrived: the first starts the graceful shutdown, a second forces the exit.
    func requestShutdown(signal: UnixSignal) async {
        if beginShutdown(reason: "\(signal)") {
            let group = state.withLock { $0.group }
            await group?.triggerGracefulShutdown()
        } else {
            forceExit(reason: "second \(signal)")
        }
    }

    /// Returns once graceful shutdown has started, or when the calling task is cancelled (the group
    /// is going down because a service failed).
    func waitUntilShutdownStarts() async {
        let id = state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.shuttingDown || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Logs what is abandoned, flushes the log and ends the process with ``forcedExitStatus``.
    func forceExit(reason: String) -> Never {
        logger.critical(
            "forced exit: graceful shutdown did not finish",
            metadata: [
                "iotgw.shutdown.reason": "\(reason)",
                "iotgw.undelivered.messages": "\(broker.undeliveredToConnected)",
                "iotgw.queued.messages": "\(broker.queuedMessages)",
                "iotgw.connections": "\(broker.connectionCount)",
            ]
        )
        notifier.notify("STATUS=forced exit (\(reason))")
        logWriter.flush(timeout: .seconds(1))
        // _exit, not exit: atexit handlers and static destructors must not run while event loops and
        // connection tasks are still busy on other threads.
        _exit(Self.forcedExitStatus)
    }
}

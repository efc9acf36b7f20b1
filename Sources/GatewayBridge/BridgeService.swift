public import GatewayCore
public import Logging
public import ServiceLifecycle
import Foundation
import Synchronization

/// One bridge as a `Service`: starts its worker thread, and on graceful shutdown (which the
/// ServiceGroup orders after the listeners drained, so queued messages had their chance to leave)
/// disconnects from the upstream and ends the thread.
///
/// The bridge's local side is an internal persistent session of the broker, `$bridge/NAME`, subscribed
/// to the local filters of the `out`/`both` rules with No Local: messages the bridge itself publishes
/// (from `in` rules) are never forwarded back to the upstream.
public final class BridgeService: Service, CustomStringConvertible {
    public let configuration: BridgeConfiguration
    public let status: BridgeStatus
    private let worker: BridgeWorker

    public var description: String { "BridgeService(\(configuration.name))" }

    /// Creates the bridge's internal session at once (so messages published before the upstream is
    /// reached are queued) but connects only in ``run()``.
    /// - Parameters:
    ///   - configuration: the bridge.
    ///   - broker: the gateway's broker.
    ///   - logger: the gateway's logger (`iotgw.bridge` metadata is added).
    ///   - onStateChange: called on the bridge's thread at every state change with the last error;
    ///     must not block (the daemon updates readiness from it).
    public init(
        configuration: BridgeConfiguration,
        broker: Broker,
        logger: Logger,
        onStateChange: @escaping @Sendable (BridgeState, String?) -> Void = { _, _ in }
    ) {
        self.configuration = configuration
        let mapper = TopicMapper(rules: configuration.rules)
        let client = broker.attachInternalClient(
            clientID: configuration.internalClientID,
            subscriptions: mapper.localSubscriptions.map { InternalClient.Subscription(filter: $0.filter, qos: $0.qos, noLocal: true) },
            limits: configuration.queue
        )
        let status = BridgeStatus(name: configuration.name)
        self.status = status
        self.worker = BridgeWorker(configuration: configuration, client: client, status: status, logger: logger, onStateChange: onStateChange)
    }

    /// How long shutdown waits for the bridge thread after asking it to stop. The thread answers within
    /// one `poll` round unless it is inside a blocking connect to an address that does not answer
    /// (the kernel's connect timeout); shutdown then goes on without it, as the process is ending.
    static let stopTimeout: Duration = .seconds(3)

    public func run() async throws {
        let worker = self.worker
        let exit = ThreadExit()
        let thread = Thread {
            worker.run()
            exit.finish()
        }
        thread.name = "iotgw-bridge-\(configuration.name)"
        thread.start()
        // Returns on graceful shutdown, or throws when the service is cancelled: stop either way.
        try? await gracefulShutdown()
        worker.requestStop()
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await exit.wait()
                return true
            }
            group.addTask {
                try? await Task.sleep(for: Self.stopTimeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !finished {
            worker.logger.notice("bridge thread did not stop in time (blocked in a connect); shutting down without it")
        }
    }
}

/// The end of a bridge thread, awaited by ``BridgeService/run()``: a one-shot signal whose waiter
/// can also give up (task cancellation), resumed exactly once either way.
private final class ThreadExit: Sendable {
    private let state = Mutex<(done: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    /// Called by the thread when it ends.
    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.done = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns when the thread ended, or when the calling task is cancelled.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.done || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume()
        }
    }
}

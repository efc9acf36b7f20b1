public import GatewayCore
public import Logging
public import ServiceLifecycle
import Foundation

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

    public func run() async throws {
        let worker = self.worker
        let name = "iotgw-bridge-\(configuration.name)"
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                    let thread = Thread {
                        worker.run()
                        finished.resume()
                    }
                    thread.name = name
                    thread.start()
                }
            }
            group.addTask {
                // Returns on graceful shutdown, or throws when the service is cancelled: stop either way.
                try? await gracefulShutdown()
                worker.requestStop()
            }
            await group.waitForAll()
        }
    }
}

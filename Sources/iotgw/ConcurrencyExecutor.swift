import NIOCore
import NIOPosix

/// Where the gateway's Swift tasks run, besides the connection tasks.
///
/// Every MQTT connection task runs on its own channel's event loop whatever is chosen here (it prefers an
/// `EventLoopTaskExecutor`). This only decides where the other tasks run — housekeeping, the admin API,
/// storage and bridge services, accept loops:
/// - `cooperative` (default): Swift's cooperative pool. Slow work there (an admin listing of 100,000
///   clients, reading `/proc`) never delays an event loop.
/// - `eventloop`: NIO's event loops replace the pool as Swift's global executor
///   (`NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()`).
///
/// Measured side by side (README, "Benchmarks"): with connection tasks pinned to their loops the two give
/// the same CPU and latency, so the safer one is the default. `IOTGW_EXECUTOR=eventloop` selects the other.
enum ConcurrencyExecutor: String, CaseIterable {
    case cooperative
    case eventLoops = "eventloop"

    /// A value of `IOTGW_EXECUTOR` that is not one of the cases.
    struct Invalid: Error, CustomStringConvertible {
        var value: String
        var description: String {
            "IOTGW_EXECUTOR: '\(value)' is not one of \(ConcurrencyExecutor.allCases.map(\.rawValue).joined(separator: ", "))"
        }
    }

    /// Installs the executor that `environment["IOTGW_EXECUTOR"]` asks for (default: cooperative) and
    /// returns the one in effect. Called once, first thing in `iotgw run`, before the gateway creates any task.
    static func install(environment: [String: String]) throws(Invalid) -> ConcurrencyExecutor {
        guard let value = environment["IOTGW_EXECUTOR"] else { return .cooperative }
        guard let wanted = ConcurrencyExecutor(rawValue: value) else { throw Invalid(value: value) }
        guard wanted == .eventLoops else { return .cooperative }
        return NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor() ? .eventLoops : .cooperative
    }
}

import NIOCore
import NIOPosix

/// Where the gateway's Swift tasks run.
///
/// By default NIO's event loops (`MultiThreadedEventLoopGroup.singleton`, one thread per core) replace Swift's
/// cooperative pool as the global executor. A connection task is resumed by its channel's event loop (its
/// inbound stream yields there) and NIO's hook enqueues a job on the loop it is called from, so the task, its
/// reads and its writes stay on one thread: no semaphore post to wake a pool thread and no eventfd write to
/// wake the loop back for every message. On two cores the old split (two loop threads plus two pool threads
/// taking turns) spent more CPU in context switches than in MQTT (`../shared/profiles/cpu-5k-msgs.md`).
///
/// Blocking work never runs in a task: SQLite and scrypt have thread pools of their own, file work goes to
/// `NIOThreadPool`, logs to the log writer's thread. `IOTGW_EXECUTOR=cooperative` keeps Swift's default pool,
/// for comparing the two (README, "Benchmarks").
enum ConcurrencyExecutor: String {
    case eventLoops = "eventloop"
    case cooperative

    /// Installs the executor that `environment["IOTGW_EXECUTOR"]` asks for (default: event loops) and returns
    /// the one in effect. Called once, first thing in `iotgw run`, before the gateway creates any task.
    static func install(environment: [String: String]) -> ConcurrencyExecutor {
        let wanted = environment["IOTGW_EXECUTOR"].flatMap(ConcurrencyExecutor.init(rawValue:)) ?? .eventLoops
        guard wanted == .eventLoops else { return .cooperative }
        return NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor() ? .eventLoops : .cooperative
    }
}

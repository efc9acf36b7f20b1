import NIOCore
import Synchronization

/// A `TaskExecutor` that runs jobs on one NIO event loop, so that a connection's task runs on the thread
/// that reads and writes its socket.
///
/// `withTaskExecutorPreference(EventLoopTaskExecutor.of(channel.eventLoop))` keeps every nonisolated part
/// of the task on that loop: after an `await` (an inbound packet, a storage commit answered from a
/// SQLite thread, an actor call) the task comes back to the loop, not to Swift's cooperative pool. The
/// task, the loop's I/O and the deliveries written for the connection on the loop
/// (``ConnectionWriter``) then never run at the same time, and a message crosses no thread between its
/// read, its routing and the writes of subscribers on the same loop.
///
/// Jobs go through `EventLoop.execute`, behind whatever I/O the loop has to do, so a busy task cannot
/// starve the loop's sockets; blocking work never runs in these tasks (SQLite, scrypt and file work have
/// thread pools of their own).
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }

    private static let executors = Mutex<[ObjectIdentifier: EventLoopTaskExecutor]>([:])

    /// The executor of `eventLoop`, made once per loop. The table keeps the loop alive, so its identifier
    /// is never reused by another loop.
    static func of(_ eventLoop: any EventLoop) -> EventLoopTaskExecutor {
        executors.withLock { executors in
            let key = ObjectIdentifier(eventLoop)
            if let executor = executors[key] { return executor }
            let executor = EventLoopTaskExecutor(eventLoop: eventLoop)
            executors[key] = executor
            return executor
        }
    }
}

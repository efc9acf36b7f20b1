/// What ``ConnectionTasks/forEach(in:shards:executor:_:)`` runs for each element: a value whose method the
/// task calls directly. A closure would add its own contexts (the closure's and its partial application's)
/// between the task's start and its work, and an idle connection's task keeps every frame it waits under.
protocol ConnectionBody: Sendable {
    associatedtype Element: Sendable
    func run(_ element: Element) async
}

/// Runs one child task per accepted connection, spread over many task groups.
///
/// The Swift runtime unlinks a finished child from its group by walking the group's list of children,
/// so with every connection in one group, n connections ending together (a shutdown) cost O(n²):
/// 35 % of the CPU of closing 10,000 connections went there. Round-robin over `shards` groups divides
/// that by `shards`.
enum ConnectionTasks {
    static let shards = 64

    /// Takes elements from `sequence` in the calling task and runs `body` for each in a child task. Returns
    /// when `sequence` has ended and every `body` has returned; rethrows the sequence's error after that.
    ///
    /// The shards are not cancelled when the sequence throws: an element handed to a shard is always
    /// given to `body` (a NIO child channel that is never run traps when deinitialized).
    /// - Parameter executor: the task executor each element's task prefers (its channel's event loop), set
    ///   when the task is created so that it needs no `withTaskExecutorPreference` frame of its own.
    static func forEach<Sequence: AsyncSequence, Body: ConnectionBody>(
        in sequence: Sequence,
        shards: Int = shards,
        executor: @escaping @Sendable (Sequence.Element) -> (any TaskExecutor)? = { _ in nil },
        _ body: Body
    ) async throws where Body.Element == Sequence.Element {
        let streams = (0..<max(1, shards)).map { _ in AsyncStream<Sequence.Element>.makeStream() }
        let failure: (any Error)? = await withDiscardingTaskGroup { group in
            for (stream, _) in streams {
                group.addTask {
                    await withDiscardingTaskGroup { children in
                        for await element in stream {
                            children.addTask(executorPreference: executor(element)) { await body.run(element) }
                        }
                    }
                }
            }
            defer { for (_, continuation) in streams { continuation.finish() } }
            do {
                var next = 0
                for try await element in sequence {
                    streams[next].continuation.yield(element)
                    next = next + 1 == streams.count ? 0 : next + 1
                }
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }
}

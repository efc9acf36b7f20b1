import Dispatch
public import NIOCore
import Synchronization

/// Checks that event loops respond: submits a no-op to each loop and measures how long it waited to
/// run (the loop's lag), with a bound after which the loop counts as unresponsive.
///
/// The bound is kept by a Dispatch timer, not by the loops themselves: a stuck loop cannot run its own
/// timeout. Waiting never blocks a thread.
public struct EventLoopProbe: Sendable {
    /// The answer of one loop.
    public struct Sample: Sendable, Hashable {
        /// The loop's position in its group.
        public var index: Int
        /// How long the no-op waited before it ran; nil when it did not run within the bound.
        public var lag: Duration?
    }

    private let loops: [any EventLoop]

    /// - Parameter group: the loops to check (usually `MultiThreadedEventLoopGroup.singleton`).
    public init(group: any EventLoopGroup) {
        self.loops = Array(group.makeIterator())
    }

    /// The number of loops probed.
    public var loopCount: Int { loops.count }

    /// Pings every loop at once and waits at most `timeout` for all of them.
    /// - Returns: one sample per loop, in group order.
    public func probe(timeout: Duration) async -> [Sample] {
        await withTaskGroup(of: Sample.self) { group in
            for (index, loop) in loops.enumerated() {
                group.addTask { Sample(index: index, lag: await Self.ping(loop, timeout: timeout)) }
            }
            var samples: [Sample] = []
            for await sample in group { samples.append(sample) }
            return samples.sorted { $0.index < $1.index }
        }
    }

    /// True when every sample answered.
    public static func allResponding(_ samples: [Sample]) -> Bool {
        samples.allSatisfy { $0.lag != nil }
    }

    private static func ping(_ loop: any EventLoop, timeout: Duration) async -> Duration? {
        let started = ContinuousClock.now
        return await withCheckedContinuation { (continuation: CheckedContinuation<Duration?, Never>) in
            let once = ResumeOnce(continuation)
            loop.execute { once.resume(with: ContinuousClock.now - started) }
            let nanoseconds = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds))) {
                once.resume(with: nil)
            }
        }
    }
}

/// Resumes a continuation with whichever answer comes first (the loop or the timer); later answers
/// are ignored.
private final class ResumeOnce: Sendable {
    private let continuation: Mutex<CheckedContinuation<Duration?, Never>?>

    init(_ continuation: CheckedContinuation<Duration?, Never>) {
        self.continuation = Mutex(continuation)
    }

    func resume(with value: Duration?) {
        let taken = continuation.withLock { stored in
            let taken = stored
            stored = nil
            return taken
        }
        taken?.resume(returning: value)
    }
}

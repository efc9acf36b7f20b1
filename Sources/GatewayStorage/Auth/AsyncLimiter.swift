import DequeModule
import Synchronization

/// At most `permits` callers inside at once, at most `maxWaiting` waiting in line; further callers are
/// turned away at once (``Full``) rather than queued without bound.
///
/// Used in front of the password-hashing threads and of user look-ups, so a burst of CONNECTs costs
/// a bounded amount of memory and never more than `permits` threads or pool connections.
final class AsyncLimiter: Sendable {
    /// Thrown by ``run(_:)`` when `maxWaiting` callers are already waiting.
    struct Full: Error, CustomStringConvertible {
        var description: String { "too many requests waiting" }
    }

    private struct State: Sendable {
        var available: Int
        var waiters: Deque<(id: UInt64, continuation: CheckedContinuation<Void, any Error>)> = []
        var nextID: UInt64 = 0
        var inside = 0
        var peakInside = 0
    }

    private let state: Mutex<State>
    let permits: Int
    let maxWaiting: Int

    /// - Parameters:
    ///   - permits: callers allowed inside at once (at least 1).
    ///   - maxWaiting: callers allowed to wait for a permit; more fail with ``Full``.
    init(permits: Int, maxWaiting: Int) {
        self.permits = max(1, permits)
        self.maxWaiting = max(0, maxWaiting)
        self.state = Mutex(State(available: max(1, permits)))
    }

    /// The most callers that were inside at once.
    var peakInside: Int { state.withLock { $0.peakInside } }

    /// Runs `body` once a permit is free.
    /// - Throws: ``Full`` when the line is full, `CancellationError` when the task is cancelled while
    ///   waiting, or what `body` throws.
    func run<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try await acquire()
        defer { release() }
        return try await body()
    }

    private enum Step {
        case entered
        case full
        case wait(UInt64)
    }

    private func acquire() async throws {
        let step = state.withLock { state -> Step in
            if state.available > 0 {
                state.available -= 1
                state.inside += 1
                state.peakInside = max(state.peakInside, state.inside)
                return .entered
            }
            if state.waiters.count >= maxWaiting { return .full }
            state.nextID += 1
            return .wait(state.nextID)
        }
        switch step {
        case .entered:
            return
        case .full:
            throw Full()
        case .wait(let id):
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    let outcome = state.withLock { state -> Result<Void, any Error>? in
                        if Task.isCancelled { return .failure(CancellationError()) }
                        // A permit may have come back between the first look and now.
                        if state.available > 0 {
                            state.available -= 1
                            state.inside += 1
                            state.peakInside = max(state.peakInside, state.inside)
                            return .success(())
                        }
                        state.waiters.append((id, continuation))
                        return nil
                    }
                    if let outcome { continuation.resume(with: outcome) }
                }
            } onCancel: {
                let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                    guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.waiters.remove(at: index).continuation
                }
                continuation?.resume(throwing: CancellationError())
            }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            if let waiter = state.waiters.popFirst() {
                // The permit passes straight to the next in line: `inside` stays the same.
                return waiter.continuation
            }
            state.inside -= 1
            state.available += 1
            return nil
        }
        next?.resume()
    }
}

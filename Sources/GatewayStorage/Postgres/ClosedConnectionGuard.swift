import PostgresNIO
import Synchronization

/// Runs queries on a `PostgresConnection` so that a connection closing under them ends them with an
/// error instead of never.
///
/// postgres-nio 1.33.2 (the version we can use) writes a query to the connection's channel with no
/// write promise. When the channel has just closed (the server stopped, `pg_ctl stop -m fast`) and its
/// handlers are gone, the write fails, the failure is dropped, and the query's own promise is never
/// completed: the caller waits forever (vapor/postgres-nio#487 fixed this and was reverted by #501).
/// Measured here: the ingest queue's commit hung on the INSERT issued 12 ms after its connection
/// closed, so `/readyz` never reported the outage and the gateway could not shut down.
///
/// A query that the connection did accept is failed by postgres-nio when the connection closes, so only
/// this case needs help: a query is refused at once when the connection is already closed, and a query
/// still running when a watchdog (once per ``pollInterval``) finds the connection closed is answered
/// with ``ConnectionClosed``. The query itself runs in an unstructured task, since an await that never
/// returns cannot be cancelled; a query that really was lost leaves that one task suspended (once per
/// lost query, only when a connection dies under it).
enum ClosedConnectionGuard {
    /// The connection closed before the query finished.
    struct ConnectionClosed: Error, CustomStringConvertible {
        var connectionID: Int
        var description: String { "the PostgreSQL connection \(connectionID) closed before the query finished" }
    }

    /// How often a running query's connection is checked.
    static let pollInterval = Duration.milliseconds(500)

    /// `body` (a query on `connection`), ended with ``ConnectionClosed`` when the connection closes first.
    static func run<T: Sendable>(
        on connection: PostgresConnection,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        if connection.isClosed { throw ConnectionClosed(connectionID: connection.id) }
        let outcome = Outcome<T>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                outcome.install(continuation)
                let watchdog = Task {
                    while !Task.isCancelled {
                        do {
                            try await Task.sleep(for: pollInterval)
                        } catch {
                            return
                        }
                        if connection.isClosed {
                            outcome.finish(.failure(ConnectionClosed(connectionID: connection.id)))
                            return
                        }
                    }
                }
                let query = Task {
                    let result: Result<T, any Error>
                    do {
                        result = .success(try await body())
                    } catch {
                        result = .failure(error)
                    }
                    watchdog.cancel()
                    outcome.finish(result)
                }
                outcome.setQueryTask(query)
            }
        } onCancel: {
            outcome.cancelQuery()
        }
    }

    /// The one continuation, resumed exactly once by whichever of the query and the watchdog ends first.
    private final class Outcome<T: Sendable>: Sendable {
        private struct State {
            var continuation: CheckedContinuation<T, any Error>?
            var finished = false
            var query: Task<Void, Never>?
            var cancelled = false
        }
        private let state = Mutex(State())

        func install(_ continuation: CheckedContinuation<T, any Error>) {
            state.withLock { $0.continuation = continuation }
        }

        func finish(_ result: Result<T, any Error>) {
            let continuation = state.withLock { state -> CheckedContinuation<T, any Error>? in
                guard !state.finished else { return nil }
                state.finished = true
                defer { state.continuation = nil }
                return state.continuation
            }
            continuation?.resume(with: result)
        }

        func setQueryTask(_ task: Task<Void, Never>) {
            let cancel = state.withLock { state -> Bool in
                state.query = task
                return state.cancelled
            }
            if cancel { task.cancel() }
        }

        /// Passes the caller's cancellation on to the query (postgres-nio decides what it does with it).
        func cancelQuery() {
            let task = state.withLock { state -> Task<Void, Never>? in
                state.cancelled = true
                return state.query
            }
            task?.cancel()
        }
    }
}

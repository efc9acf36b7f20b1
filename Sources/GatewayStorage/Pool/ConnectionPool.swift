import DequeModule
import Metrics
import Synchronization

/// Thrown when no pooled connection became free within the acquire timeout: the database is busy,
/// which is not the same as unreachable.
public protocol PoolExhausted: Error {}

/// A fixed set of database connections lent out one at a time.
///
/// `size` connections are opened up front and never more: thousands of clients share them. A caller
/// that finds none free waits in line, at most `acquireTimeout`; waits are measured
/// (`iotgw_db_pool_wait_seconds`) and the in-use, waiting and peak in-use (`iotgw_db_pool_peak_in_use`)
/// counts are gauges.
public final class ConnectionPool<Connection: Sendable>: Sendable {
    /// Thrown when no connection became free within the acquire timeout.
    public struct AcquireTimeout: PoolExhausted, CustomStringConvertible {
        public var description: String { "no database connection became free in time" }
    }

    private struct State: Sendable {
        var idle: Deque<Connection>
        var waiters: Deque<(id: UInt64, continuation: CheckedContinuation<Connection?, Never>)> = []
        var nextWaiterID: UInt64 = 0
        var inUse = 0
        var closed = false
    }

    private let state: Mutex<State>
    /// The number of connections in the pool.
    public let size: Int
    let acquireTimeout: Duration
    private let inUseGauge = Gauge(label: "iotgw_db_pool_in_use")
    private let waitingGauge = Gauge(label: "iotgw_db_pool_waiting")
    private let waitTimer = Timer(label: "iotgw_db_pool_wait_seconds", preferredDisplayUnit: .seconds)
    /// The most connections lent out at once since start: proof that a burst never went past the pool.
    private let peakGauge = Gauge(label: "iotgw_db_pool_peak_in_use")
    private let peak = Atomic<Int>(0)

    /// - Parameters:
    ///   - connections: the opened connections (their number is the pool size).
    ///   - acquireTimeout: the longest a caller waits for a free connection.
    public init(connections: [Connection], acquireTimeout: Duration) {
        self.size = connections.count
        self.acquireTimeout = acquireTimeout
        self.state = Mutex(State(idle: Deque(connections)))
        peakGauge.record(0)
    }

    /// The most connections that were lent out at once.
    public var peakInUse: Int { peak.load(ordering: .relaxed) }

    /// Lends a connection to `body` and takes it back afterwards.
    public func withConnection<T: Sendable>(_ body: (Connection) async throws -> T) async throws -> T {
        let connection = try await acquire()
        defer { release(connection) }
        return try await body(connection)
    }

    private enum Step {
        case got(Connection)
        case wait(UInt64)
        case closed
    }

    private func acquire() async throws -> Connection {
        let step = state.withLock { state -> Step in
            if state.closed { return .closed }
            if let connection = state.idle.popFirst() {
                state.inUse += 1
                return .got(connection)
            }
            state.nextWaiterID += 1
            return .wait(state.nextWaiterID)
        }
        switch step {
        case .got(let connection):
            recordUse()
            return connection
        case .closed:
            throw AcquireTimeout()
        case .wait(let id):
            let started = ContinuousClock.now
            let connection: Connection? = await withTaskGroup(of: Void.self) { group in
                // A timer that removes this waiter (resuming it with nil) when the timeout passes.
                group.addTask { [acquireTimeout] in
                    try? await Task.sleep(for: acquireTimeout)
                    self.expire(id)
                }
                let connection = await withCheckedContinuation { (continuation: CheckedContinuation<Connection?, Never>) in
                    let immediate = state.withLock { state -> Connection?? in
                        if state.closed { return .some(nil) }
                        if let connection = state.idle.popFirst() {
                            state.inUse += 1
                            return .some(connection)
                        }
                        state.waiters.append((id, continuation))
                        return nil
                    }
                    waitingGauge.record(state.withLock { $0.waiters.count })
                    if let immediate { continuation.resume(returning: immediate) }
                }
                group.cancelAll()
                return connection
            }
            let waited = started.duration(to: .now).components
            waitTimer.recordNanoseconds(waited.seconds * 1_000_000_000 + waited.attoseconds / 1_000_000_000)
            guard let connection else { throw AcquireTimeout() }
            recordUse()
            return connection
        }
    }

    private func expire(_ id: UInt64) {
        let continuation = state.withLock { state -> CheckedContinuation<Connection?, Never>? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index).continuation
        }
        continuation?.resume(returning: nil)
    }

    private func release(_ connection: Connection) {
        let waiter = state.withLock { state -> CheckedContinuation<Connection?, Never>? in
            if let waiter = state.waiters.popFirst() { return waiter.continuation }
            state.inUse -= 1
            state.idle.append(connection)
            return nil
        }
        if let waiter {
            // Handed straight to the next caller: still in use.
            waiter.resume(returning: connection)
        } else {
            inUseGauge.record(state.withLock { $0.inUse })
        }
    }

    private func recordUse() {
        let inUse = state.withLock { $0.inUse }
        inUseGauge.record(inUse)
        var current = peak.load(ordering: .relaxed)
        while inUse > current {
            let (exchanged, original) = peak.compareExchange(expected: current, desired: inUse, ordering: .relaxed)
            if exchanged {
                // Recorded under the pool's lock, after reading the peak again: two racing callers
                // cannot leave the smaller value in the gauge.
                state.withLock { _ in peakGauge.record(peak.load(ordering: .relaxed)) }
                break
            }
            current = original
        }
    }

    /// Closes the pool: waiting callers fail, nothing is lent again, and every connection is handed to
    /// `closeConnection` — the idle ones at once, the ones lent out when they come back (a service still
    /// running a query while another closes the database, as when a failed start cancels them all).
    /// Returns how many were still lent out after `timeout` (0 normally); those are not closed.
    public func close(waitingAtMost timeout: Duration, _ closeConnection: (Connection) async -> Void) async -> Int {
        for connection in drain() { await closeConnection(connection) }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            let (returned, lent) = state.withLock { state in (state.idle.popFirst(), state.inUse) }
            if let returned {
                await closeConnection(returned)
                continue
            }
            if lent == 0 || ContinuousClock.now >= deadline { return lent }
            // Rare (only a close racing a query) and short: look again shortly.
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Takes every connection out of the pool for closing; waiting callers fail. A connection lent out
    /// comes back into the closed pool, for ``close(waitingAtMost:_:)``.
    public func drain() -> [Connection] {
        let (connections, waiters) = state.withLock { state -> ([Connection], [CheckedContinuation<Connection?, Never>]) in
            state.closed = true
            let connections = Array(state.idle)
            state.idle.removeAll()
            let waiters = state.waiters.map(\.continuation)
            state.waiters.removeAll()
            return (connections, waiters)
        }
        for waiter in waiters { waiter.resume(returning: nil) }
        return connections
    }
}

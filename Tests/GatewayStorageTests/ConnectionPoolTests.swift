import Synchronization
import Testing

@testable import GatewayStorage

/// `ConnectionPool.close(waitingAtMost:_:)`: every connection is closed, including one lent out when
/// the close began (a service still running a query while another closes the database).
@Suite("ConnectionPool close")
struct ConnectionPoolTests {
    /// The connections handed to the close callback.
    final class Closed: Sendable {
        let ids = Mutex<[Int]>([])
        func add(_ id: Int) { ids.withLock { $0.append(id) } }
        var sorted: [Int] { ids.withLock { $0.sorted() } }
    }

    /// A caller holding one connection of the pool until ``giveBack()``.
    struct Borrower {
        let connection: Int
        let release: AsyncStream<Void>.Continuation
        let task: Task<Void, any Error>

        func giveBack() async throws {
            release.yield()
            try await task.value
        }
    }

    /// Borrows a connection from `pool` in a task of its own, once it has it.
    static func borrow(from pool: ConnectionPool<Int>) async throws -> Borrower {
        let (borrowed, lender) = AsyncStream.makeStream(of: Int.self)
        let (released, release) = AsyncStream.makeStream(of: Void.self)
        let task = Task {
            try await pool.withConnection { connection in
                lender.yield(connection)
                for await _ in released { break }
            }
        }
        var iterator = borrowed.makeAsyncIterator()
        let connection = try #require(await iterator.next())
        return Borrower(connection: connection, release: release, task: task)
    }

    @Test("idle connections are closed at once")
    func idleClosed() async {
        let pool = ConnectionPool(connections: [1, 2, 3], acquireTimeout: .seconds(1))
        let closed = Closed()
        let abandoned = await pool.close(waitingAtMost: .seconds(5)) { closed.add($0) }
        #expect(abandoned == 0)
        #expect(closed.sorted == [1, 2, 3])
    }

    @Test("a connection lent out when the close began is closed when it comes back")
    func lentConnectionClosedOnReturn() async throws {
        let pool = ConnectionPool(connections: [1, 2], acquireTimeout: .seconds(1))
        let closed = Closed()
        let user = try await Self.borrow(from: pool)
        let lent = user.connection
        async let abandoned = pool.close(waitingAtMost: .seconds(30)) { closed.add($0) }
        // The idle one is closed first; the lent one only once it is back.
        while closed.sorted.count < 1 { await Task.yield() }
        #expect(!closed.sorted.contains(lent))
        try await user.giveBack()
        #expect(await abandoned == 0)
        #expect(closed.sorted == [1, 2])
    }

    @Test("a connection never returned is reported, not waited for forever")
    func neverReturned() async throws {
        let pool = ConnectionPool(connections: [7], acquireTimeout: .seconds(1))
        let user = try await Self.borrow(from: pool)
        let closed = Closed()
        let abandoned = await pool.close(waitingAtMost: .milliseconds(50)) { closed.add($0) }
        #expect(abandoned == 1)
        #expect(closed.sorted.isEmpty)
        try await user.giveBack()
    }

    @Test("a closed pool lends nothing")
    func closedPoolLendsNothing() async {
        let pool = ConnectionPool(connections: [1], acquireTimeout: .seconds(1))
        _ = await pool.close(waitingAtMost: .seconds(1)) { _ in }
        await #expect(throws: (any Error).self) {
            try await pool.withConnection { _ in }
        }
    }
}

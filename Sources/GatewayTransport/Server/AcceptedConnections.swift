import NIOCore
import Synchronization

/// A connection as a listener's child-channel initializer hands it to the accept loop.
protocol AcceptedConnection: Sendable {
    /// Tells this connection apart from the others waiting (its channel's identity).
    var acceptedID: ObjectIdentifier { get }
    /// Closes a connection no task will run, finishing NIO's async wrappers around it.
    func discard() async
}

extension NIOAsyncChannel: AcceptedConnection {
    var acceptedID: ObjectIdentifier { ObjectIdentifier(channel) }

    func discard() async {
        try? await executeThenClose { _, _ in }
    }
}

/// Holds each accepted connection from the listener's child-channel initializer until its connection
/// task takes it, and discards the ones no task ever took.
///
/// A connection accepted just as its listener closes can be dropped by the listener's inbound stream
/// before the accept loop sees it; its `NIOAsyncChannel` writer is then deinitialized without `finish()`
/// and NIO traps ("Deinited NIOAsyncWriter without calling finish()", apple/swift-nio#2637) — seen here
/// when a readiness probe connected right before SIGTERM. Keeping a reference until a task takes the
/// connection, and discarding the leftovers once the accept loop ended, closes that window. Every
/// listener (MQTT, WebSocket, admin) accepts through one of these.
final class AcceptedConnections<Connection: AcceptedConnection>: Sendable {
    private struct State {
        var open = true
        var pending: [ObjectIdentifier: Connection] = [:]
    }

    private let state = Mutex(State())

    init() {}

    /// Called by the child-channel initializer with the connection it made.
    func accepted(_ connection: Connection) {
        let orphan = state.withLock { state -> Connection? in
            guard state.open else { return connection }
            state.pending[connection.acceptedID] = connection
            return nil
        }
        if let orphan {
            // The accept loop has already ended: nobody will run this connection.
            Task { await orphan.discard() }
        }
    }

    /// Called by the connection task before it runs `connection`.
    func take(_ connection: Connection) {
        _ = state.withLock { $0.pending.removeValue(forKey: connection.acceptedID) }
    }

    /// Called once the accept loop ended: discards every accepted connection no task took (and any
    /// accepted later).
    func closeOrphans() async {
        let orphans = state.withLock { state -> [Connection] in
            state.open = false
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        for orphan in orphans {
            await orphan.discard()
        }
    }

    /// Runs `loop` (an accept loop), then discards what it left, also when it throws.
    func acceptingThenClosingOrphans(_ loop: () async throws -> Void) async throws {
        do {
            try await loop()
        } catch {
            await closeOrphans()
            throw error
        }
        await closeOrphans()
    }
}

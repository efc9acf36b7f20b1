import NIOCore
import Synchronization

/// Holds each accepted connection's `NIOAsyncChannel` from the listener's child-channel initializer until
/// its connection task takes it, and finishes the ones no task ever took.
///
/// A connection accepted just as its listener closes can be dropped by the listener's inbound stream
/// before the accept loop sees it; its writer is then deinitialized without `finish()` and NIO traps
/// ("Deinited NIOAsyncWriter without calling finish()", apple/swift-nio#2637) — seen here when a
/// readiness probe connected right before SIGTERM. Keeping a reference until a task takes the channel,
/// and closing the leftovers through `executeThenClose` once the accept loop ended, closes that window.
final class AcceptedChannels<Inbound: Sendable, Outbound: Sendable>: Sendable {
    typealias Accepted = NIOAsyncChannel<Inbound, Outbound>

    private struct State {
        var open = true
        var pending: [ObjectIdentifier: Accepted] = [:]
    }

    private let state = Mutex(State())

    /// Called by the child-channel initializer with the channel it made.
    func accepted(_ channel: Accepted) {
        let orphan = state.withLock { state -> Accepted? in
            guard state.open else { return channel }
            state.pending[ObjectIdentifier(channel.channel)] = channel
            return nil
        }
        if let orphan {
            // The accept loop has already ended: nobody will run this connection.
            Task { try? await orphan.executeThenClose { _, _ in } }
        }
    }

    /// Called by the connection task before it runs `channel`.
    func take(_ channel: Accepted) {
        _ = state.withLock { $0.pending.removeValue(forKey: ObjectIdentifier(channel.channel)) }
    }

    /// Called once the accept loop ended: closes every accepted channel no task took (and any accepted later).
    func closeOrphans() async {
        let orphans = state.withLock { state -> [Accepted] in
            state.open = false
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        for orphan in orphans {
            try? await orphan.executeThenClose { _, _ in }
        }
    }
}

import GatewayCore
import Synchronization

/// Every live connection's handle, so shutdown can close connections that never sent CONNECT too.
final class ConnectionRegistry: Sendable {
    private let state = Mutex<State>(State())

    private struct State {
        var next: UInt64 = 0
        var handles: [UInt64: any ConnectionHandle] = [:]
    }

    func add(_ handle: any ConnectionHandle) -> UInt64 {
        state.withLock { state in
            state.next += 1
            state.handles[state.next] = handle
            return state.next
        }
    }

    func remove(_ token: UInt64) {
        state.withLock { _ = $0.handles.removeValue(forKey: token) }
    }

    var count: Int { state.withLock { $0.handles.count } }

    /// Closes every registered connection with `reason`.
    func closeAll(reason: ServerDisconnectReason) {
        let handles = state.withLock { Array($0.handles.values) }
        for handle in handles { handle.close(reason: reason) }
    }
}

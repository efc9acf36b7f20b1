import Metrics
import Synchronization

/// The bound on permessage-deflate memory, shared by the `ws` and `wss` listeners: how many connections
/// may keep zlib contexts from one message to the next (context takeover), and a count of the zlib
/// contexts alive.
///
/// A context kept between messages costs about 70 KiB for the compressor (window 8 KiB, memLevel 6:
/// see ``PerMessageDeflate/Settings``) and 15-40 KiB for the decompressor, for as long as the connection
/// lives. Past ``limit`` such connections, new ones are offered only `server_no_context_takeover` and
/// `client_no_context_takeover` (RFC 7692 7.1.1): they still compress, but each context lives for one
/// message and is freed after it, so an idle connection holds none. Declining compression instead would
/// send large JSON messages several times bigger, exactly when the gateway is busiest.
///
/// Identity is the budget: two configurations are equal only when they share one budget.
public final class DeflateContextBudget: Sendable, Hashable {
    /// Connections that may use context takeover at once; 0: none may.
    public let limit: Int
    private let takeoverConnections = Atomic<Int>(0)
    private let contexts = Atomic<Int>(0)

    /// Made on first use, not with the budget: the configuration (and its budget) is built before the
    /// metrics backend is bootstrapped.
    private struct Metrics: Sendable {
        let contexts = Gauge(label: "iotgw_websocket_deflate_contexts")
        let takeoverConnections = Gauge(label: "iotgw_websocket_deflate_takeover_connections")
        let takeoverRefused = Counter(label: "iotgw_websocket_deflate_takeover_refused_total")
    }
    private static let metrics = Metrics()

    /// - Parameter limit: connections that may keep zlib contexts between messages (context takeover).
    public init(limit: Int) {
        self.limit = limit
    }

    /// Takes a context-takeover slot for a new connection; false (counted) when ``limit`` connections
    /// hold one already.
    func reserveTakeover() -> Bool {
        var current = takeoverConnections.load(ordering: .relaxed)
        while true {
            guard current < limit else {
                Self.metrics.takeoverRefused.increment()
                return false
            }
            let (exchanged, original) = takeoverConnections.compareExchange(
                expected: current,
                desired: current + 1,
                ordering: .relaxed
            )
            if exchanged {
                Self.metrics.takeoverConnections.record(current + 1)
                return true
            }
            current = original
        }
    }

    /// Gives back the slot of a connection that ended.
    func releaseTakeover() {
        Self.metrics.takeoverConnections.record(takeoverConnections.subtract(1, ordering: .relaxed).newValue)
    }

    /// A zlib stream was allocated.
    func contextAllocated() {
        Self.metrics.contexts.record(contexts.add(1, ordering: .relaxed).newValue)
    }

    /// A zlib stream was freed.
    func contextFreed() {
        Self.metrics.contexts.record(contexts.subtract(1, ordering: .relaxed).newValue)
    }

    /// Connections holding a context-takeover slot now.
    var currentTakeoverConnections: Int { takeoverConnections.load(ordering: .relaxed) }

    /// zlib streams alive now (both directions, all connections).
    var currentContexts: Int { contexts.load(ordering: .relaxed) }

    public static func == (lhs: DeflateContextBudget, rhs: DeflateContextBudget) -> Bool { lhs === rhs }

    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

import Synchronization

/// The global cap on bytes queued for delivery across all sessions.
///
/// Per-client caps alone let ten thousand slow clients each fill their own queue; this single atomic
/// counter bounds the sum. Sessions reserve before they queue and release when a message leaves
/// (delivered, acknowledged, dropped, or its session discarded).
final class QueueBudget: Sendable {
    let limit: Int
    private let used = Atomic<Int>(0)
    private let messages = Atomic<Int>(0)

    init(limit: Int) {
        self.limit = limit
    }

    /// Reserves `bytes` if they fit under the limit.
    func tryReserve(_ bytes: Int) -> Bool {
        var current = used.load(ordering: .relaxed)
        while true {
            guard current + bytes <= limit else { return false }
            let (exchanged, original) = used.compareExchange(
                expected: current,
                desired: current + bytes,
                ordering: .relaxed
            )
            if exchanged {
                messages.add(1, ordering: .relaxed)
                return true
            }
            current = original
        }
    }

    /// Reserves `bytes` even over the limit: a message taken by back-pressure, which holds its publisher
    /// instead of dropping (the overshoot is bounded by what paused publishers had already read).
    func forceReserve(_ bytes: Int) {
        used.add(bytes, ordering: .relaxed)
        messages.add(1, ordering: .relaxed)
    }

    /// Releases what ``tryReserve(_:)`` reserved for `count` messages.
    func release(_ bytes: Int, count: Int = 1) {
        guard bytes > 0 || count > 0 else { return }
        used.subtract(bytes, ordering: .relaxed)
        messages.subtract(count, ordering: .relaxed)
    }

    /// Bytes currently queued across all sessions.
    var usedBytes: Int { used.load(ordering: .relaxed) }
    /// Messages currently queued across all sessions.
    var queuedMessages: Int { messages.load(ordering: .relaxed) }
}

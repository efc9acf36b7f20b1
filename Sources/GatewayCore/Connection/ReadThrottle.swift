import Synchronization

/// Back-pressure on one publisher: its socket is not read while any subscriber it fed is over its
/// queue cap (`limits.slow_consumer: backpressure`).
///
/// A full subscriber queue takes the QoS 1/2 message anyway (the publisher may already have been
/// acknowledged, and nothing is dropped) and registers the publisher's throttle; the throttle stops
/// reading from the publisher, so TCP slows the device. When the subscriber's queue has drained to half
/// its cap, or the subscriber went away, the session unblocks every throttle it holds. A publisher that
/// feeds several slow subscribers reads again only once none of them is full. What a paused publisher
/// had already read (at most one socket read) is still routed: that is the bound on how far a queue can
/// go over its cap per publisher.
///
/// Lock order: a session's lock, then a throttle's (``block(on:)`` and ``unblock(_:)`` are called
/// with the session's lock held, so a block and the unblock that answers it can never pass each other).
/// The throttle calls out only to ``ConnectionHandle/setReadPaused(_:)``, which must not block.
final class ReadThrottle: Sendable {
    /// The publisher's connection.
    let handle: any ConnectionHandle
    private let metrics: GatewayMetrics
    /// The sessions (by identity) that hold this throttle.
    private let blockers = Mutex<Set<ObjectIdentifier>>([])

    init(handle: any ConnectionHandle, metrics: GatewayMetrics) {
        self.handle = handle
        self.metrics = metrics
    }

    /// Adds `session` to the subscribers this publisher waits for; the first one pauses reading.
    func block(on session: Session) {
        blockers.withLock { blockers in
            guard blockers.insert(ObjectIdentifier(session)).inserted, blockers.count == 1 else { return }
            metrics.publisherPaused()
            handle.setReadPaused(true)
        }
    }

    /// Removes `session`; when no subscriber is left to wait for, reading resumes.
    func unblock(_ session: Session) {
        blockers.withLock { blockers in
            guard blockers.remove(ObjectIdentifier(session)) != nil, blockers.isEmpty else { return }
            handle.setReadPaused(false)
        }
    }
}

/// The sessions whose queues are over their caps with publishers waiting (back-pressure), so that
/// housekeeping can apply `limits.slow_consumer_timeout` without visiting every session.
final class CongestedSessions: Sendable {
    private let sessions = Mutex<[ObjectIdentifier: Session]>([:])

    init() {}

    func insert(_ session: Session) {
        sessions.withLock { $0[ObjectIdentifier(session)] = session }
    }

    func remove(_ session: Session) {
        sessions.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(session)) }
    }

    var all: [Session] { sessions.withLock { Array($0.values) } }
    var count: Int { sessions.withLock { $0.count } }
}

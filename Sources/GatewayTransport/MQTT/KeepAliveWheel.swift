import NIOCore
import Synchronization

/// A handler with a deadline filed in its loop's ``KeepAliveWheel``.
protocol WheelDeadline: AnyObject {
    /// Called by the wheel when the filed deadline's bucket is due (the wheel has dropped the entry).
    func deadlineReached(context: ChannelHandlerContext)
}

/// One coarse timer per event loop for the keep-alive and connect deadlines and the WebSocket ping
/// intervals of all its connections.
///
/// A `Scheduled` task per connection costs O(n) to cancel (NIO removes it from its heap by search), so
/// closing n connections at once — a shutdown, a load balancer failing over — took O(n²): 13 s for
/// 8,000 connections. Here a deadline is filed in a per-second bucket: filing and removing are O(1),
/// and one repeating one-second task per loop fires the buckets that are due. Deadlines fire up to a
/// second late, which keep-alive (1.5 × keep alive), connect timeouts and pings tolerate. A connection's
/// entry also costs less than a `Scheduled` task (about 160 bytes with its promise and heap node).
///
/// Used only on its event loop, on that loop's clock (`EventLoop.now`: an `EmbeddedEventLoop`'s own time
/// in tests).
final class KeepAliveWheel {
    private struct Entry {
        let handler: any WheelDeadline
        let context: ChannelHandlerContext
    }

    private let eventLoop: any EventLoop
    private var buckets: [Int64: [ObjectIdentifier: Entry]] = [:]
    /// Every bucket up to this second has fired.
    private var firedThrough: Int64
    private var ticker: RepeatedTask?

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.firedThrough = Self.second(of: eventLoop.now) - 1
    }

    private static let wheels = Mutex<[ObjectIdentifier: (loop: any EventLoop, wheel: NIOLoopBound<KeepAliveWheel>)]>([:])

    /// The wheel of `eventLoop` (created on first use). Call on that loop.
    static func of(_ eventLoop: any EventLoop) -> KeepAliveWheel {
        eventLoop.preconditionInEventLoop()
        let key = ObjectIdentifier(eventLoop)
        if let found = wheels.withLock({ $0[key] }), found.loop === eventLoop { return found.wheel.value }
        let wheel = KeepAliveWheel(eventLoop: eventLoop)
        // The entry keeps the loop alive, so its identifier is never reused by another loop.
        wheels.withLock { $0[key] = (eventLoop, NIOLoopBound(wheel, eventLoop: eventLoop)) }
        return wheel
    }

    /// The bucket (a whole second, rounded up) where a deadline is filed.
    private static func second(of deadline: NIODeadline) -> Int64 {
        let nanoseconds = Int64(clamping: deadline.uptimeNanoseconds)
        return (nanoseconds + 999_999_999) / 1_000_000_000
    }

    /// Files `handler` to fire at (or up to a second after) `deadline`; returns the bucket to remove it from.
    func insert(_ handler: any WheelDeadline, context: ChannelHandlerContext, deadline: NIODeadline) -> Int64 {
        let bucket = max(Self.second(of: deadline), firedThrough + 1)
        buckets[bucket, default: [:]][ObjectIdentifier(handler)] = Entry(handler: handler, context: context)
        if ticker == nil {
            let bound = NIOLoopBound(self, eventLoop: eventLoop)
            ticker = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                bound.value.fireDue()
            }
        }
        return bucket
    }

    func remove(_ handler: any WheelDeadline, bucket: Int64) {
        let key = ObjectIdentifier(handler)
        guard buckets[bucket]?.removeValue(forKey: key) != nil else { return }
        if buckets[bucket]?.isEmpty == true { buckets[bucket] = nil }
        if buckets.isEmpty { detach() }
    }

    /// With nothing filed, stops the ticker and leaves the registry (which would otherwise keep every
    /// loop that ever had a deadline, such as each `EmbeddedEventLoop` of the tests and fuzz targets);
    /// the next deadline on the loop makes a new wheel.
    private func detach() {
        ticker?.cancel()
        ticker = nil
        let key = ObjectIdentifier(eventLoop)
        Self.wheels.withLock { wheels in
            if let found = wheels[key], found.loop === eventLoop, found.wheel.value === self {
                wheels[key] = nil
            }
        }
    }

    private func fireDue() {
        let now = Self.second(of: eventLoop.now)
        while firedThrough < now {
            firedThrough += 1
            guard let due = buckets.removeValue(forKey: firedThrough) else { continue }
            for entry in due.values {
                entry.handler.deadlineReached(context: entry.context)
            }
        }
        if buckets.isEmpty { detach() }
    }
}

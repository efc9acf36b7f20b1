import DequeModule

/// Recognises messages an MQTT 3.1.1 upstream sends back to the bridge that published them.
///
/// MQTT 3.1.1 has no No Local: when an `in` rule's upstream filter overlaps a topic an `out` rule
/// publishes to, the upstream delivers the bridge's own message back. The filter remembers what was
/// published recently (topic, payload length and a 64-bit FNV-1a hash of the payload) and drops one
/// matching inbound message per remembered publish. Bounded in entries and in age; the price is
/// that an identical message (same topic and payload) published upstream by someone else within
/// `window` seconds of ours is taken for an echo. MQTT 5 bridges use No Local instead and do not
/// need this.
struct EchoFilter {
    private struct Key: Hashable {
        var topic: String
        var length: Int
        var hash: UInt64
    }

    private var counts: [Key: Int] = [:]
    private var order: Deque<(key: Key, at: ContinuousClock.Instant)> = []
    let capacity: Int
    let window: Duration

    init(capacity: Int = 10_000, window: Duration = .seconds(60)) {
        self.capacity = capacity
        self.window = window
    }

    var count: Int { order.count }

    /// Remembers a message published upstream.
    mutating func record(topic: String, payload: UnsafeRawBufferPointer, now: ContinuousClock.Instant) {
        expire(now: now)
        if order.count >= capacity, let oldest = order.popFirst() { forget(oldest.key) }
        let key = Key(topic: topic, length: payload.count, hash: Self.hash(payload))
        counts[key, default: 0] += 1
        order.append((key, now))
    }

    /// Whether an inbound message is the echo of one recorded; if so it is consumed.
    mutating func isEcho(topic: String, payload: UnsafeRawBufferPointer, now: ContinuousClock.Instant) -> Bool {
        expire(now: now)
        let key = Key(topic: topic, length: payload.count, hash: Self.hash(payload))
        guard counts[key] != nil else { return false }
        forget(key)
        if let index = order.firstIndex(where: { $0.key == key }) { order.remove(at: index) }
        return true
    }

    private mutating func expire(now: ContinuousClock.Instant) {
        while let first = order.first, first.at.advanced(by: window) < now {
            order.removeFirst()
            forget(first.key)
        }
    }

    private mutating func forget(_ key: Key) {
        guard let count = counts[key] else { return }
        counts[key] = count > 1 ? count - 1 : nil
    }

    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }
}

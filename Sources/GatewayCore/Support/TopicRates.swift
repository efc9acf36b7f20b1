#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The busiest topics by message rate over the last minute, in bounded memory: a Space-Saving
/// heavy-hitters sketch (Metwally, Agrawal, El Abbadi, 2005) per publishing thread, merged once a second
/// into a ring of one-second summaries.
///
/// **Cost on the publish path.** ``record(_:)`` is off (one relaxed atomic load) until a dashboard turns
/// it on with ``setEnabled(_:)``. When on, it picks a stripe by the calling thread (each event loop has a
/// thread of its own, so loops rarely share a stripe and its lock is uncontended), looks the topic up in
/// that stripe's table and moves it in a small min-heap: no allocation when the topic is tracked, and a
/// new topic reuses the slot of the least counted one (the table keeps its capacity).
///
/// **Memory.** While counting: `stripes × slots` entries for the current second (a stripe's table is
/// made on its first message) plus `window × slots` for the window (defaults: at most 16 × 128 +
/// 60 × 128 entries; an entry is a topic string, which shares the message's storage, and a few
/// integers: about 8 KiB per stripe in use and 2 KiB per second of window, plus the topics' text).
/// Nothing while off: turning counting off drops the tables.
///
/// **Error bound.** A Space-Saving sketch of `k` slots over `n` messages overestimates a tracked topic by
/// at most `n / k` and leaves out only topics seen at most `n / k` times. Summing the stripes of a second
/// and keeping that second's `k` largest sums adds at most another `n / k`. So over the window each
/// reported count is within `2N / k` of the true count, `N` being the messages counted in the window, and
/// with fewer distinct topics than `k` in every stripe and second the counts are exact. As a rate:
/// within `2R / k` messages per second, `R` the total rate (with 128 slots, 1/64 of the total).
public final class TopicRates: Sendable {
    /// One topic's estimated rate.
    public struct Entry: Sendable, Hashable {
        public var topic: String
        /// Messages counted in the window (an estimate; see the type's error bound).
        public var count: Int
        /// `count` divided by the seconds the window covers.
        public var perSecond: Double
    }

    /// The busiest topics and the bound on their error.
    public struct Report: Sendable, Hashable {
        /// The busiest topics, busiest first.
        public var topics: [Entry]
        /// Messages counted in the window, all topics together.
        public var total: Int
        /// Seconds the window covers (less than the full window just after counting started).
        public var seconds: Int
        /// The most any `count` can be off by: `2 × total / slots`.
        public var maxError: Int
    }

    /// Slots per sketch (`k`).
    public let slots: Int
    /// Seconds in the window.
    public let windowSeconds: Int
    private let enabled = Atomic<Bool>(false)
    private let stripes: [Stripe]
    private let stripeShift: Int
    private let window: Mutex<Window>

    private struct Window: Sendable {
        /// The last `windowSeconds` one-second summaries, oldest first.
        var seconds: [[(topic: String, count: Int)]] = []
        var totals: [Int] = []
    }

    /// - Parameters:
    ///   - slots: topics tracked per sketch (`k` in the error bound). Default 128.
    ///   - windowSeconds: the window the rates cover. Default 60.
    ///   - stripes: sketches for publishing threads, rounded up to a power of two. Default 16 (more
    ///     than the event loops of most machines, so that loops rarely share one).
    public init(slots: Int = 128, windowSeconds: Int = 60, stripes: Int = 16) {
        precondition(slots > 0 && windowSeconds > 0 && stripes > 0)
        self.slots = slots
        self.windowSeconds = windowSeconds
        var count = 1
        var bits = 0
        while count < stripes {
            count <<= 1
            bits += 1
        }
        self.stripeShift = 64 - bits
        self.stripes = (0..<count).map { _ in Stripe(capacity: slots) }
        self.window = Mutex(Window())
    }

    /// Whether ``record(_:)`` counts.
    public var isEnabled: Bool { enabled.load(ordering: .relaxed) }

    /// Turns counting on or off. Turning it off forgets everything counted.
    public func setEnabled(_ on: Bool) {
        let was = enabled.exchange(on, ordering: .relaxed)
        guard was && !on else { return }
        // A fresh sketch holds no storage: a gateway nobody watches keeps no tables.
        for stripe in stripes { stripe.sketch.withLock { $0 = SpaceSaving(capacity: slots) } }
        window.withLock { $0 = Window() }
    }

    /// Counts one message on `topic`. Called on the publish path: cheap, never blocks for long.
    @inline(__always)
    public func record(_ topic: String) {
        guard enabled.load(ordering: .relaxed) else { return }
        stripes[stripeIndex()].sketch.withLock { $0.add(topic) }
    }

    /// Closes the current second: merges the stripes into one summary of at most `slots` topics and
    /// pushes it into the window, dropping the oldest second beyond it. Called once a second.
    public func tick() {
        var merged: [String: Int] = [:]
        var total = 0
        for stripe in stripes {
            let (entries, count) = stripe.sketch.withLock { $0.drain() }
            total += count
            for (topic, n) in entries { merged[topic, default: 0] += n }
        }
        var second = merged.map { (topic: $0.key, count: $0.value) }
        if second.count > slots {
            second.sort { $0.count > $1.count }
            second.removeLast(second.count - slots)
        }
        window.withLock { window in
            window.seconds.append(second)
            window.totals.append(total)
            if window.seconds.count > windowSeconds {
                window.seconds.removeFirst(window.seconds.count - windowSeconds)
                window.totals.removeFirst(window.totals.count - windowSeconds)
            }
        }
    }

    /// The `limit` busiest topics over the window, busiest first (ties by topic).
    public func report(limit: Int) -> Report {
        let (seconds, totals) = window.withLock { ($0.seconds, $0.totals) }
        var sums: [String: Int] = [:]
        for second in seconds {
            for entry in second { sums[entry.topic, default: 0] += entry.count }
        }
        let total = totals.reduce(0, +)
        let span = max(1, seconds.count)
        let top = sums.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(max(0, limit))
        return Report(
            topics: top.map { Entry(topic: $0.key, count: $0.value, perSecond: Double($0.value) / Double(span)) },
            total: total,
            seconds: seconds.count,
            maxError: 2 * total / slots
        )
    }

    /// One thread's sketch, in an object of its own, padded so that two stripes' locks do not share a
    /// cache line.
    private final class Stripe: Sendable {
        let sketch: Mutex<SpaceSaving>
        private let padding: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)

        init(capacity: Int) {
            sketch = Mutex(SpaceSaving(capacity: capacity))
        }
    }

    /// The stripe of the calling thread: a multiplicative hash of its pthread id.
    @inline(__always)
    private func stripeIndex() -> Int {
        guard stripeShift < 64 else { return 0 }
        #if canImport(Glibc)
        let id = UInt64(pthread_self())
        #else
        let id = UInt64(UInt(bitPattern: pthread_self()))
        #endif
        return Int(truncatingIfNeeded: (id &* 0x9E37_79B9_7F4A_7C15) >> UInt64(stripeShift))
    }
}

/// A Space-Saving summary of `capacity` counters: an open-addressing table from topic to its slot, and
/// a min-heap of the slots by count. A tracked topic is counted in place; an untracked one takes the
/// slot of the least counted topic, inheriting its count plus one (so counts never underestimate a
/// tracked topic, and overestimate it by at most the count it inherited, which is at most
/// `total / capacity`).
///
/// The topic is hashed once per message; the table stores each slot's hash, so probing compares
/// integers first and moving entries never hashes again, and the heap moves slot numbers only.
struct SpaceSaving: Sendable {
    let capacity: Int
    /// Per slot: its topic, the topic's hash and its count.
    private var topics: [String]
    private var hashes: [Int]
    private var counts: [Int]
    /// Slots as a min-heap by count, and each slot's position in it.
    private var heap: [Int]
    private var heapPositions: [Int]
    /// Linear-probing table of slots (-1: empty), at most half full.
    private var table: [Int]
    private let mask: Int
    /// Messages added since the last drain.
    private(set) var total = 0

    init(capacity: Int) {
        self.capacity = capacity
        var size = 2
        while size < 2 * capacity { size <<= 1 }
        mask = size - 1
        // Storage is made by the first ``add(_:)``, so sketches of idle threads cost nothing.
        table = []
        topics = []
        hashes = []
        counts = []
        heap = []
        heapPositions = []
    }

    /// The tracked topics and their counts, in no order.
    var entries: [(topic: String, count: Int)] { zip(topics, counts).map { (topic: $0, count: $1) } }

    mutating func add(_ topic: String) {
        total += 1
        if table.isEmpty { allocate() }
        let hash = topic.hashValue
        var index = hash & mask
        while table[index] >= 0 {
            let slot = table[index]
            if hashes[slot] == hash && topics[slot] == topic {
                counts[slot] += 1
                siftDown(from: heapPositions[slot])
                return
            }
            index = (index + 1) & mask
        }
        if topics.count < capacity {
            let slot = topics.count
            topics.append(topic)
            hashes.append(hash)
            counts.append(1)
            table[index] = slot
            heap.append(slot)
            heapPositions.append(slot)
            siftUp(from: slot)
            return
        }
        // Evict the least counted topic (the heap's root); the newcomer inherits its count.
        let slot = heap[0]
        removeFromTable(slot)
        topics[slot] = topic
        hashes[slot] = hash
        counts[slot] += 1
        index = hash & mask
        while table[index] >= 0 { index = (index + 1) & mask }
        table[index] = slot
        siftDown(from: 0)
    }

    private mutating func allocate() {
        table = Array(repeating: -1, count: mask + 1)
        topics.reserveCapacity(capacity)
        hashes.reserveCapacity(capacity)
        counts.reserveCapacity(capacity)
        heap.reserveCapacity(capacity)
        heapPositions.reserveCapacity(capacity)
    }

    /// Returns what was counted and starts over (keeping the capacity).
    mutating func drain() -> (entries: [(topic: String, count: Int)], total: Int) {
        let result = (entries, total)
        reset()
        return result
    }

    mutating func reset() {
        for index in table.indices { table[index] = -1 }
        topics.removeAll(keepingCapacity: true)
        hashes.removeAll(keepingCapacity: true)
        counts.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        heapPositions.removeAll(keepingCapacity: true)
        total = 0
    }

    /// Deletes `slot` from the table, shifting later entries of its probe run back (no tombstones).
    private mutating func removeFromTable(_ slot: Int) {
        var hole = hashes[slot] & mask
        while table[hole] != slot { hole = (hole + 1) & mask }
        table[hole] = -1
        var next = (hole + 1) & mask
        while table[next] >= 0 {
            let home = hashes[table[next]] & mask
            // The entry may move into the hole unless its home lies cyclically in (hole, next].
            let staysPut = hole < next ? (home > hole && home <= next) : (home > hole || home <= next)
            if !staysPut {
                table[hole] = table[next]
                table[next] = -1
                hole = next
            }
            next = (next + 1) & mask
        }
    }

    private mutating func siftDown(from start: Int) {
        var position = start
        let count = heap.count
        while true {
            let left = 2 * position + 1
            guard left < count else { return }
            let right = left + 1
            let child = right < count && counts[heap[right]] < counts[heap[left]] ? right : left
            guard counts[heap[child]] < counts[heap[position]] else { return }
            swapHeap(position, child)
            position = child
        }
    }

    private mutating func siftUp(from start: Int) {
        var position = start
        while position > 0 {
            let parent = (position - 1) / 2
            guard counts[heap[position]] < counts[heap[parent]] else { return }
            swapHeap(position, parent)
            position = parent
        }
    }

    private mutating func swapHeap(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        heapPositions[heap[a]] = a
        heapPositions[heap[b]] = b
    }
}

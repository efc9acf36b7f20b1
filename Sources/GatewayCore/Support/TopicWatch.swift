import DequeModule
public import MQTTCodec
import NIOCore
import Synchronization

/// Live copies of the messages of a topic filter for the admin dashboard's "watch" box.
///
/// On the publish path ``offer(_:)`` costs one relaxed atomic load while nobody watches. A watcher gets
/// at most ``Watcher/maxPerSecond`` messages a second and holds at most ``Watcher/capacity`` of them
/// until its reader takes them; the rest are counted as skipped, never queued. Payloads are cut to
/// ``Watcher/maxPayloadBytes``. ACLs do not apply: the watch is for the admin side only.
public final class TopicWatch: Sendable {
    /// One message as a watcher sees it.
    public struct Seen: Sendable, Hashable {
        public var topic: String
        /// The first ``Watcher/maxPayloadBytes`` of the payload.
        public var payload: [UInt8]
        /// The whole payload's size.
        public var payloadSize: Int
        public var qos: MQTTQoS
        public var retain: Bool
        /// The publisher's client id; nil for the gateway's own messages.
        public var publisherClientID: String?
        /// When the message was routed, in milliseconds since the Unix epoch.
        public var receivedAt: Int64

        package init(
            topic: String,
            payload: [UInt8],
            payloadSize: Int,
            qos: MQTTQoS,
            retain: Bool,
            publisherClientID: String?,
            receivedAt: Int64
        ) {
            self.topic = topic
            self.payload = payload
            self.payloadSize = payloadSize
            self.qos = qos
            self.retain = retain
            self.publisherClientID = publisherClientID
            self.receivedAt = receivedAt
        }
    }

    /// One watch of one topic filter.
    public final class Watcher: Sendable {
        /// The most messages a watcher takes per second; more are skipped.
        public static let maxPerSecond = 20
        /// The most messages a watcher holds until they are taken.
        public static let capacity = 100
        /// The most payload bytes kept per message.
        public static let maxPayloadBytes = 1024

        public let filter: String
        private let state = Mutex<State>(State())

        private struct State: Sendable {
            var buffer: Deque<Seen> = []
            var skipped = 0
            var second: Int64 = 0
            var takenThisSecond = 0
        }

        init(filter: String) {
            self.filter = filter
        }

        fileprivate func accept(_ message: Message, now: Int64) {
            state.withLock { state in
                let second = now / 1000
                if second != state.second {
                    state.second = second
                    state.takenThisSecond = 0
                }
                guard state.takenThisSecond < Self.maxPerSecond, state.buffer.count < Self.capacity else {
                    state.skipped += 1
                    return
                }
                state.takenThisSecond += 1
                let view = message.payload.readableBytesView
                state.buffer.append(
                    Seen(
                        topic: message.topic,
                        payload: Array(view.prefix(Self.maxPayloadBytes)),
                        payloadSize: view.count,
                        qos: message.qos,
                        retain: message.retain,
                        publisherClientID: message.publisherClientID,
                        receivedAt: now
                    )
                )
            }
        }

        /// Takes the messages held so far and the number skipped since the last call.
        public func take() -> (messages: [Seen], skipped: Int) {
            state.withLock { state in
                let taken = (Array(state.buffer), state.skipped)
                state.buffer.removeAll(keepingCapacity: true)
                state.skipped = 0
                return taken
            }
        }
    }

    private let count = Atomic<Int>(0)
    private let watchers = Mutex<[Watcher]>([])

    public init() {}

    /// Starts watching `filter` (a valid MQTT topic filter; `$share/` filters are not).
    /// - Returns: nil when the filter is not valid.
    public func start(filter: String) -> Watcher? {
        guard MQTTTopic.isValidFilter(filter), MQTTTopic.parseShared(filter) == nil else { return nil }
        let watcher = Watcher(filter: filter)
        watchers.withLock { list in
            list.append(watcher)
            count.store(list.count, ordering: .relaxed)
        }
        return watcher
    }

    /// Stops `watcher`.
    public func stop(_ watcher: Watcher) {
        watchers.withLock { list in
            list.removeAll { $0 === watcher }
            count.store(list.count, ordering: .relaxed)
        }
    }

    /// The number of active watchers.
    public var watcherCount: Int { count.load(ordering: .relaxed) }

    /// Offers a routed message to the watchers whose filter matches its topic.
    @inline(__always)
    public func offer(_ message: Message) {
        guard count.load(ordering: .relaxed) > 0 else { return }
        deliver(message)
    }

    @inline(never)
    private func deliver(_ message: Message) {
        let list = watchers.withLock { $0 }
        var now: Int64?
        for watcher in list where MQTTTopic.matches(filter: watcher.filter, topic: message.topic) {
            let at = now ?? WallClock.millisecondsSinceEpoch()
            now = at
            watcher.accept(message, now: at)
        }
    }
}

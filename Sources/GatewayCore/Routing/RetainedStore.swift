import NIOCore
import Synchronization

/// Retained messages by topic (MQTT-3.3.1-5 to -11): a retained PUBLISH replaces the topic's message,
/// an empty retained payload clears it, and a new subscription receives what matches its filter.
final class RetainedStore: Sendable {
    private let messages = Mutex<[String: Message]>([:])

    /// Stores or clears (empty payload) the retained message of `message.topic`. Returns the new count.
    /// The change is mirrored into `journal` (when given) under the same lock, so the store sees the
    /// topic's changes in order.
    @discardableResult
    func apply(_ message: Message, journal: StateJournal? = nil, onCommit: (@Sendable () -> Void)? = nil) -> Int {
        messages.withLock { messages in
            if message.payload.readableBytes == 0 {
                if messages.removeValue(forKey: message.topic) != nil, let journal {
                    journal.append(.deleteRetained(topic: message.topic), onCommit: onCommit)
                } else {
                    onCommit?()
                }
            } else {
                messages[message.topic] = message
                if let journal {
                    journal.append(.setRetained(StoredForm.retained(message)), onCommit: onCommit)
                } else {
                    onCommit?()
                }
            }
            return messages.count
        }
    }

    /// Puts back a retained message loaded from the store (not journalled: it came from there).
    func restore(_ message: Message) {
        messages.withLock { $0[message.topic] = message }
    }

    /// The retained messages whose topic matches `filter`, dropping any that have expired.
    func matching(_ filter: String, now: ContinuousClock.Instant) -> [Message] {
        messages.withLock { messages in
            var result: [Message] = []
            var expired: [String] = []
            for (topic, message) in messages where SubscriptionIndex.matches(filter: filter, topic: topic) {
                if let expiresAt = message.expiresAt, expiresAt <= now {
                    expired.append(topic)
                } else {
                    result.append(message)
                }
            }
            for topic in expired { messages[topic] = nil }
            return result.sorted { $0.topic < $1.topic }
        }
    }

    var count: Int { messages.withLock { $0.count } }

    /// Every retained message (for persistence and the admin API).
    var all: [Message] { messages.withLock { Array($0.values) } }
}

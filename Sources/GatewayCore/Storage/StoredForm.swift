import MQTTCodec
import NIOCore

/// Conversions between the broker's in-memory forms and the session store's rows.
enum StoredForm {
    /// Encoded MQTT 5 properties (length prefix included), or nil when there are none.
    static func properties(_ properties: MQTTProperties) -> ByteBuffer? {
        guard !properties.isEmpty else { return nil }
        var buffer = ByteBufferAllocator().buffer(capacity: 32)
        properties.write(to: &buffer)
        return buffer
    }

    /// Decodes stored properties; a row that does not decode keeps none (and is counted by the caller).
    static func properties(_ buffer: ByteBuffer?) throws(MQTTCodecError) -> MQTTProperties {
        guard var buffer else { return MQTTProperties() }
        return try MQTTProperties.read(from: &buffer, context: .publish)
    }

    /// A continuous-clock instant as wall-clock milliseconds since the epoch.
    static func wallClock(_ instant: ContinuousClock.Instant?) -> Int64? {
        guard let instant else { return nil }
        let remaining = ContinuousClock.now.duration(to: instant)
        let millis = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
        return WallClock.millisecondsSinceEpoch() + millis
    }

    /// Wall-clock milliseconds since the epoch as a continuous-clock instant (in the past if they are).
    static func instant(_ wallClock: Int64?, now: ContinuousClock.Instant, wallNow: Int64) -> ContinuousClock.Instant? {
        guard let wallClock else { return nil }
        return now.advanced(by: .milliseconds(wallClock - wallNow))
    }

    /// A message as a retained row.
    static func retained(_ message: Message) -> StoredRetainedMessage {
        StoredRetainedMessage(
            topic: message.topic,
            payload: message.payload,
            qos: message.qos,
            properties: properties(message.properties),
            publisherClientID: message.publisherClientID,
            expiresAt: wallClock(message.expiresAt)
        )
    }
}

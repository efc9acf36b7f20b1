public import MQTTCodec
public import NIOCore

/// An application message as the gateway routes it: what a PUBLISH carried, independent of the
/// connection and protocol version it came from.
public struct Message: Sendable, Hashable {
    public var topic: String
    public var payload: ByteBuffer
    /// The QoS it was published with (each subscriber receives min(this, its subscription QoS)).
    public var qos: MQTTQoS
    public var retain: Bool
    /// MQTT 5 properties forwarded to subscribers: payload format, message expiry, content type,
    /// response topic, correlation data and user properties. Never topic alias or subscription ids.
    public var properties: MQTTProperties
    /// The client that published it, for No Local; `nil` for messages the gateway makes itself.
    public var publisherClientID: String?
    /// When the message expires (MQTT 5 Message Expiry Interval), on the continuous clock.
    public var expiresAt: ContinuousClock.Instant?
    /// The wire bytes shared by this message's receivers (encode once); attached by the router when a
    /// message goes to more than one subscriber. Not part of the message's value.
    var sharedEncoding: SharedPublishEncoding? {
        get { sharedEncodingSlot.value }
        set { sharedEncodingSlot.value = newValue }
    }
    private var sharedEncodingSlot = SharedEncodingSlot()

    public init(
        topic: String,
        payload: ByteBuffer,
        qos: MQTTQoS,
        retain: Bool,
        properties: MQTTProperties = .init(),
        publisherClientID: String? = nil,
        expiresAt: ContinuousClock.Instant? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.publisherClientID = publisherClientID
        self.expiresAt = expiresAt
    }

    /// The bytes this message holds while queued: what per-client and global queue caps count.
    public var queuedByteCount: Int { topic.utf8.count + payload.readableBytes + 64 }
}

/// Limits and switches of the broker core. Every field has the default the shipped configuration
/// files use; the file model (GatewayConfig) maps onto this.
public struct BrokerConfiguration: Sendable, Hashable {
    /// The most simultaneous client connections; more are refused at accept. Default 100,000.
    public var maxConnections: Int = 100_000
    /// The largest packet accepted from a client, fixed header included. Default 1 MiB.
    public var maxPacketSize: Int = 1_048_576
    /// Seconds a new socket may stay open without sending CONNECT. Default 10.
    public var connectTimeout: Double = 10
    /// Unacknowledged outbound QoS 1/2 messages per session (the in-flight window). Default 32.
    public var maxInflight: Int = 32
    /// Messages a session's outbound queue holds (pending plus in flight). Default 1,000.
    public var maxQueuedMessages: Int = 1_000
    /// Bytes a session's outbound queue holds. Default 1 MiB.
    public var maxQueuedBytes: Int = 1_048_576
    /// Bytes all outbound queues together hold. Default 256 MiB: per-client caps alone would let ten
    /// thousand slow clients hold 10 GB.
    public var globalMaxQueuedBytes: Int = 268_435_456
    /// What happens when a QoS 1/2 message does not fit a connected subscriber's queue. Default
    /// ``SlowConsumerPolicy/backpressure``.
    public var slowConsumer: SlowConsumerPolicy = .backpressure
    /// Seconds a subscriber's full queue may hold its publishers back (`backpressure`) before the
    /// subscriber is disconnected (0x97) and the publishers resume. Default 10.
    public var slowConsumerTimeout: Double = 10
    /// What happens when a QoS 0 message does not fit once older QoS 0 messages were evicted. Default
    /// ``QoS0WhenFullPolicy/drop``: a QoS 0 stream never slows its publishers.
    public var qos0WhenFull: QoS0WhenFullPolicy = .drop
    /// Connections one address (host) may hold open; 0: no limit. A connection past it is answered
    /// CONNACK 0x97 (3.1.1: 3) and closed. Default 0: devices behind one NAT share an address.
    public var maxConnectionsPerAddress: Int = 0
    /// CONNECTs per second one address may make on average; 0: no limit. Past it (and its burst) a CONNECT
    /// is answered 0x9F connection rate exceeded (3.1.1: 3). Default 0.
    public var connectRatePerAddress: Double = 0
    /// CONNECTs one address may make at once before the rate applies. Default 20.
    public var connectBurstPerAddress: Int = 20
    /// Seconds an offline persistent session (3.1.1 clean session 0) is kept. MQTT 3.1.1 has no session
    /// expiry, so forgotten sessions would otherwise queue forever. Default 1 day.
    public var sessionExpiry: Double = 86_400
    /// The highest QoS granted to subscriptions. Default 2.
    public var maxQoS: Int = 2
    /// Whether retained messages are stored. Default true.
    public var retainAvailable: Bool = true
    /// Whether clients without a username may connect. Default true.
    public var allowAnonymous: Bool = true
    /// The longest client identifier accepted, in bytes. Default 256.
    public var maxClientIDLength: Int = 256
    /// The keep-alive the server imposes on MQTT 5 clients that ask for 0 or more than this, in seconds
    /// (Server Keep Alive). MQTT 3.1.1 clients cannot be told, so for them it is not applied. Default 0 (off).
    public var maxKeepAlive: Int = 0
    /// How many QoS 1/2 PUBLISHes a client may have unacknowledged towards the gateway (MQTT 5 Receive
    /// Maximum; exceeding it is a protocol error 0x93). Default 65,535 (the protocol maximum, not
    /// advertised).
    public var receiveMaximum: Int = 65_535
    /// The highest topic alias an MQTT 5 client may use towards the gateway. Default 64; 0 disables.
    public var topicAliasMaximum: Int = 64
    /// Seconds between `$SYS/broker/...` statistics publications; 0 disables them. Default 10.
    public var sysInterval: Double = 10
    /// Seconds the graceful shutdown may take before connections are cut. Default 10.
    public var shutdownTimeout: Double = 10

    public init() {}
}

/// `limits.slow_consumer`: what a subscriber's full queue does with a QoS 1/2 message.
public enum SlowConsumerPolicy: String, Sendable, Hashable, CaseIterable {
    /// Take it (over the cap) and stop reading from the publishers that feed the queue until it has
    /// drained to half; after `slow_consumer_timeout`, `disconnect`.
    case backpressure
    /// Disconnect the subscriber (0x97); its session and queue are kept.
    case disconnect
    /// Drop the message (counted in `iotgw_messages_dropped_total{reason="queue_full_qos12"}`).
    case drop
}

/// `limits.qos0_when_full`: what a subscriber's full queue does with a QoS 0 message once older QoS 0
/// messages were evicted.
public enum QoS0WhenFullPolicy: String, Sendable, Hashable, CaseIterable {
    /// Drop it (counted).
    case drop
    /// Hold the publishers back as for QoS 1/2 (`limits.slow_consumer: backpressure`).
    case backpressure
}

extension BrokerConfiguration {
    /// This configuration with the fields that may change while clients are connected taken from `new`
    /// (a SIGHUP reload); every other field keeps its current value.
    ///
    /// Live: `maxConnections` (checked at accept), `allowAnonymous`, `maxClientIDLength`, `maxKeepAlive`
    /// and `sessionExpiry` (read at CONNECT), `maxInflight`, `maxQueuedMessages` and `maxQueuedBytes`
    /// (sessions created after the change; existing sessions keep theirs), `sysInterval`, and the
    /// overflow policies `slowConsumer`, `slowConsumerTimeout` and `qos0WhenFull` (read per message).
    ///
    /// Not live, because connected clients were told them or they are fixed at bind time:
    /// `maxPacketSize` and `connectTimeout` (in each listener's pipeline), `maxQoS`, `retainAvailable`,
    /// `receiveMaximum` and `topicAliasMaximum` (advertised in CONNACK), `globalMaxQueuedBytes` (the
    /// queue budget's fixed limit) and `shutdownTimeout`.
    public func applyingLiveChanges(from new: BrokerConfiguration) -> BrokerConfiguration {
        var result = self
        result.maxConnections = new.maxConnections
        result.allowAnonymous = new.allowAnonymous
        result.maxClientIDLength = new.maxClientIDLength
        result.maxKeepAlive = new.maxKeepAlive
        result.sessionExpiry = new.sessionExpiry
        result.maxInflight = new.maxInflight
        result.maxQueuedMessages = new.maxQueuedMessages
        result.maxQueuedBytes = new.maxQueuedBytes
        result.sysInterval = new.sysInterval
        result.slowConsumer = new.slowConsumer
        result.slowConsumerTimeout = new.slowConsumerTimeout
        result.qos0WhenFull = new.qos0WhenFull
        result.maxConnectionsPerAddress = new.maxConnectionsPerAddress
        result.connectRatePerAddress = new.connectRatePerAddress
        result.connectBurstPerAddress = new.connectBurstPerAddress
        return result
    }
}

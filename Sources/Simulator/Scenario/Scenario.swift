/// A description of one simulation: which devices connect, how fast, what they publish, who listens,
/// how long it runs and how much loss is acceptable.
///
/// A scenario says nothing about *where* the devices connect; that is ``Simulation/Target``.
/// Build one in code, load one with ``Scenario/load(contentsOf:)`` from a YAML file (see
/// `Configs/scenarios/`), and adjust it with command-line overrides.
public struct Scenario: Sendable, Equatable {
    /// A short name used in reports. Default `"custom"`.
    public var name: String
    /// Free text describing what the scenario exercises.
    public var summary: String
    /// How many simulated devices connect over each transport.
    public var devices: Devices
    /// The connect ramp and per-connection options.
    public var connect: Connect
    /// Telemetry the devices publish.
    public var publish: Publish
    /// Extra clients that subscribe to the devices' telemetry.
    public var consumers: Consumers
    /// Request/response round trips from a controller to the devices' command topics.
    public var requests: Requests
    /// The MQTT protocol version every MQTT client speaks (libmosquitto and WebSocket MQTT alike).
    public var protocolVersion: ProtocolVersion
    /// How long devices publish once everyone is connected and subscribed. Default 10 s.
    public var duration: Duration
    /// How long to wait after the last publish for deliveries still in flight. Default 5 s.
    /// The wait ends early as soon as every expected message has arrived.
    public var drain: Duration
    /// The fraction (0...1) of expected deliveries (and request round trips) that may be lost before
    /// the run counts as failed. Default 0: any loss fails the run.
    public var lossTolerance: Double

    /// Creates a scenario; every parameter has the default documented on its property.
    public init(
        name: String = "custom",
        summary: String = "",
        devices: Devices = Devices(),
        connect: Connect = Connect(),
        publish: Publish = Publish(),
        consumers: Consumers = Consumers(),
        requests: Requests = Requests(),
        protocolVersion: ProtocolVersion = .v311,
        duration: Duration = .seconds(10),
        drain: Duration = .seconds(5),
        lossTolerance: Double = 0
    ) {
        self.name = name
        self.summary = summary
        self.devices = devices
        self.connect = connect
        self.publish = publish
        self.consumers = consumers
        self.requests = requests
        self.protocolVersion = protocolVersion
        self.duration = duration
        self.drain = drain
        self.lossTolerance = lossTolerance
    }
}

extension Scenario {
    /// The three ways a simulated client reaches the gateway.
    public enum Transport: String, Sendable, Equatable, CaseIterable, Codable {
        /// MQTT over TCP (or TLS) through libmosquitto.
        case mqtt
        /// MQTT over WebSocket (subprotocol `mqtt`, binary frames) through libwebsockets.
        case wsMQTT = "ws-mqtt"
        /// iotgw's JSON API over WebSocket (text frames) through libwebsockets.
        case wsJSON = "ws-json"
    }

    /// MQTT protocol versions the simulator speaks.
    public enum ProtocolVersion: String, Sendable, Equatable, CaseIterable, Codable {
        /// MQTT 3.1.1 (protocol level 4).
        case v311 = "3.1.1"
        /// MQTT 5.0 (protocol level 5).
        case v5 = "5"
    }

    /// Device counts per transport.
    public struct Devices: Sendable, Equatable {
        /// Devices speaking MQTT over TCP through libmosquitto. Default 100.
        public var mqtt: Int
        /// Devices speaking MQTT over WebSocket. Default 0.
        public var wsMQTT: Int
        /// Devices speaking the JSON API over WebSocket. Default 0.
        public var wsJSON: Int

        /// Creates device counts; defaults are on the properties.
        public init(mqtt: Int = 100, wsMQTT: Int = 0, wsJSON: Int = 0) {
            self.mqtt = mqtt
            self.wsMQTT = wsMQTT
            self.wsJSON = wsJSON
        }

        /// All devices over all transports.
        public var total: Int { mqtt + wsMQTT + wsJSON }
    }

    /// How clients connect.
    public struct Connect: Sendable, Equatable {
        /// Connect ramp in devices per second across all transports; 0 connects everyone at once. Default 500.
        public var rate: Double
        /// How long the whole connect phase (CONNACK and SUBACK for everyone) may take. Default 30 s.
        public var timeout: Duration
        /// MQTT keep-alive in seconds. Default 60.
        public var keepAlive: Int
        /// The fraction (0...1) of clients allowed to fail to connect or to drop before the run fails. Default 0.
        public var failureTolerance: Double

        /// Creates connect options; defaults are on the properties.
        public init(rate: Double = 500, timeout: Duration = .seconds(30), keepAlive: Int = 60, failureTolerance: Double = 0) {
            self.rate = rate
            self.timeout = timeout
            self.keepAlive = keepAlive
            self.failureTolerance = failureTolerance
        }
    }

    /// What a publishing device sends.
    public enum Payload: Sendable, Equatable {
        /// A JSON object padded to exactly this many bytes (at least ``ProbeCodec/minimumSize``).
        case size(Int)
        /// A JSON object template. `{id}`, `{seq}` and `{ts}` are replaced by the device id (a quoted-safe string),
        /// the sequence number and the send timestamp; the measurement fields are added to the object.
        case template(String)
    }

    /// Telemetry publishing.
    public struct Publish: Sendable, Equatable {
        /// How many devices publish, counted from the first device; `nil` means all. Default `nil`.
        public var publishers: Int?
        /// Messages per second per publisher. Ignored when ``totalRate`` is set. Default 1.
        public var rate: Double
        /// Messages per second across all publishers, divided evenly among them; `nil` uses ``rate``. Default `nil`.
        public var totalRate: Double?
        /// Quality of service 0, 1 or 2. Default 0.
        public var qos: Int
        /// Whether messages are published with the retain flag. Default false.
        public var retain: Bool
        /// The topic pattern; `{id}` becomes the device id. Default `devices/{id}/telemetry`.
        public var topic: String
        /// The payload shape. Default `.size(64)`.
        public var payload: Payload
        /// QoS 1 and 2: the most telemetry messages one device keeps unacknowledged. A message falling due
        /// while its device's window is full is not sent and is counted as held back: the device waits for
        /// the broker, as a real device with a bounded outbox does, instead of handing the client library
        /// a queue that grows without bound. At QoS 0 a message is held back while the device's earlier
        /// messages still wait for its socket (the broker is not reading fast enough). 0: no window (every
        /// message is handed to the client library, which queues what it cannot send yet). Default 100.
        public var window: Int

        /// Creates publishing options; defaults are on the properties.
        public init(
            publishers: Int? = nil,
            rate: Double = 1,
            totalRate: Double? = nil,
            qos: Int = 0,
            retain: Bool = false,
            topic: String = "devices/{id}/telemetry",
            payload: Payload = .size(64),
            window: Int = 100
        ) {
            self.publishers = publishers
            self.rate = rate
            self.totalRate = totalRate
            self.qos = qos
            self.retain = retain
            self.topic = topic
            self.payload = payload
            self.window = window
        }
    }

    /// Clients that subscribe to telemetry.
    public struct Consumers: Sendable, Equatable {
        /// How many consumer clients connect (in addition to the devices). Default 1.
        public var count: Int
        /// The transport consumers use. Default ``Transport/mqtt``.
        public var transport: Transport
        /// The filter every consumer subscribes to. Default `devices/+/telemetry`.
        /// Ignored when ``partition`` is true.
        public var filter: String
        /// When true, publishers are divided evenly among consumers and each consumer subscribes to the exact
        /// topics of its share (fan-in of publishers/consumers to 1) instead of ``filter``. Default false.
        public var partition: Bool
        /// Subscription quality of service. Default 0.
        public var qos: Int

        /// Creates consumer options; defaults are on the properties.
        public init(count: Int = 1, transport: Transport = .mqtt, filter: String = "devices/+/telemetry", partition: Bool = false, qos: Int = 0) {
            self.count = count
            self.transport = transport
            self.filter = filter
            self.partition = partition
            self.qos = qos
        }
    }

    /// Request/response round trips: one controller client publishes requests to device command topics,
    /// each device answers on its reply topic, and the controller measures the round trip.
    public struct Requests: Sendable, Equatable {
        /// Requests per second across all devices; 0 disables requests (and command subscriptions). Default 0.
        public var rate: Double
        /// Quality of service for requests, replies and the subscriptions that carry them. Default 1.
        public var qos: Int
        /// Command topic pattern every device subscribes to. Default `devices/{id}/commands`.
        public var commandTopic: String
        /// Reply topic pattern devices answer on. Default `devices/{id}/replies`.
        public var replyTopic: String

        /// Creates request options; defaults are on the properties.
        public init(rate: Double = 0, qos: Int = 1, commandTopic: String = "devices/{id}/commands", replyTopic: String = "devices/{id}/replies") {
            self.rate = rate
            self.qos = qos
            self.commandTopic = commandTopic
            self.replyTopic = replyTopic
        }
    }
}

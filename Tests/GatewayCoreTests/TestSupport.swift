@testable import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import Synchronization
import Testing

// Drives `Broker` and `ClientConnection` with packets, no sockets: the test plays the transport. It
// hands the connection packets, looks at the actions it returns, and pulls what the connection task
// would write next with `nextOutboundPacket()`, as the transport does after every inbound packet and
// every `deliveryAvailable()` wake-up.

/// A `ConnectionHandle` that records every `close(reason:)` and counts `deliveryAvailable()` wake-ups.
final class RecordingHandle: ConnectionHandle {
    private struct State {
        var reasons: [ServerDisconnectReason] = []
        var readPauses: [Bool] = []
        var wakes = 0
        var waiters: [(target: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }
    private let state = Mutex(State())

    func close(reason: ServerDisconnectReason) {
        state.withLock { $0.reasons.append(reason) }
    }

    func setReadPaused(_ paused: Bool) {
        state.withLock { $0.readPauses.append(paused) }
    }

    /// Every `setReadPaused` call, in order (back-pressure).
    var readPauses: [Bool] { state.withLock { $0.readPauses } }

    func deliveryAvailable() {
        let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.wakes += 1
            let wakes = state.wakes
            let ready = state.waiters.filter { $0.target <= wakes }.map(\.continuation)
            state.waiters.removeAll { $0.target <= wakes }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }

    var closeReasons: [ServerDisconnectReason] { state.withLock { $0.reasons } }

    /// How many times the session asked the connection task to poll again.
    var wakeCount: Int { state.withLock { $0.wakes } }

    /// Returns once `deliveryAvailable()` has been called `count` times in all: at once if it already
    /// has, otherwise as soon as the call happens. No timers involved.
    func waitForWake(_ count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.wakes >= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if done { continuation.resume() }
        }
    }
}

/// A logger that discards everything, so drop notices do not clutter the test output.
let silentLogger = Logger(label: "iotgw.tests", factory: { _ in SwiftLogNoOpLogHandler() })

func makeBroker(_ configure: (inout BrokerConfiguration) -> Void = { _ in }) -> Broker {
    var configuration = BrokerConfiguration()
    configure(&configuration)
    return Broker(configuration: configuration, logger: silentLogger)
}

/// The packets in `actions`, in order.
func sentPackets(_ actions: [ClientConnection.Action]) -> [MQTTPacket] {
    actions.compactMap { action in
        if case .send(let packet) = action { return packet }
        return nil
    }
}

/// A short, comparable description of an action list: `["send CONNACK", "keepAlive 60"]`.
func describe(_ actions: [ClientConnection.Action]) -> [String] {
    actions.map { action in
        switch action {
        case .send(let packet): "send \(packet.type)"
        case .keepAlive(let seconds): "keepAlive \(seconds)"
        case .close: "close"
        }
    }
}

/// One simulated client: a `ClientConnection` and its handle.
final class TestClient {
    let broker: Broker
    let handle = RecordingHandle()
    let connection: ClientConnection
    let version: MQTTProtocolVersion

    init(_ broker: Broker, version: MQTTProtocolVersion = .v3_1_1) {
        self.broker = broker
        self.version = version
        self.connection = ClientConnection(broker: broker, handle: handle, peer: try! SocketAddress(ipAddress: "127.0.0.1", port: 5000), logger: silentLogger)
    }

    /// Sends CONNECT and returns the actions.
    @discardableResult
    func connect(
        _ clientID: String,
        cleanStart: Bool = true,
        keepAlive: UInt16 = 60,
        will: MQTTWill? = nil,
        username: String? = nil,
        password: ByteBuffer? = nil,
        properties: MQTTProperties = .init()
    ) async -> [ClientConnection.Action] {
        let packet = MQTTConnectPacket(
            version: version,
            cleanStart: cleanStart,
            keepAlive: keepAlive,
            clientIdentifier: clientID,
            will: will,
            username: username,
            password: password,
            properties: properties
        )
        return await send(.connect(packet))
    }

    /// Connects and checks that the CONNACK says success; returns it.
    @discardableResult
    func connectAccepted(
        _ clientID: String,
        cleanStart: Bool = true,
        will: MQTTWill? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async -> MQTTConnAckPacket? {
        let actions = await connect(clientID, cleanStart: cleanStart, will: will)
        guard case .connack(let connack)? = sentPackets(actions).first, connack.reasonCode == .success else {
            Issue.record("CONNECT of \(clientID) not accepted: \(describe(actions))", sourceLocation: sourceLocation)
            return nil
        }
        return connack
    }

    /// Hands `packet` to the connection and returns its actions.
    @discardableResult
    /// Hands `packet` to the connection and returns its actions followed by the acknowledgements it made
    /// ready, as the transport writes them right after handling a packet.
    func send(_ packet: MQTTPacket) async -> [ClientConnection.Action] {
        let actions = await connection.handle(packet)
        return actions + connection.takeReadyAcknowledgements().map { .send($0) }
    }

    /// Subscribes and returns the SUBACK's reason codes.
    @discardableResult
    func subscribe(_ filters: [(String, MQTTQoS)], id: UInt16 = 1, sourceLocation: SourceLocation = #_sourceLocation) async -> [MQTTReasonCode] {
        let subscriptions = filters.map { MQTTSubscription(topicFilter: $0.0, qos: $0.1) }
        return await subscribe(subscriptions, id: id, sourceLocation: sourceLocation)
    }

    @discardableResult
    func subscribe(
        _ subscriptions: [MQTTSubscription],
        id: UInt16 = 1,
        properties: MQTTProperties = .init(),
        sourceLocation: SourceLocation = #_sourceLocation
    ) async -> [MQTTReasonCode] {
        let actions = await send(.subscribe(MQTTSubscribePacket(packetIdentifier: id, subscriptions: subscriptions, properties: properties)))
        guard case .suback(let suback)? = sentPackets(actions).first else {
            Issue.record("no SUBACK: \(describe(actions))", sourceLocation: sourceLocation)
            return []
        }
        #expect(suback.packetIdentifier == id, sourceLocation: sourceLocation)
        return suback.reasonCodes
    }

    /// Publishes and returns the actions (PUBACK/PUBREC for QoS 1/2).
    @discardableResult
    func publish(
        _ topic: String,
        _ payload: String,
        qos: MQTTQoS = .atMostOnce,
        retain: Bool = false,
        id: UInt16? = nil,
        dup: Bool = false
    ) async -> [ClientConnection.Action] {
        let packetID = qos == .atMostOnce ? nil : (id ?? 1)
        return await send(
            .publish(MQTTPublishPacket(topic: topic, payload: ByteBuffer(string: payload), qos: qos, retain: retain, dup: dup, packetIdentifier: packetID))
        )
    }

    /// The next packet the connection task would write now, or nil when there is nothing to send.
    func poll() -> MQTTPacket? {
        connection.nextOutboundPacket()
    }

    /// Every packet ready now.
    func drain() -> [MQTTPacket] {
        var packets: [MQTTPacket] = []
        while let packet = poll() { packets.append(packet) }
        return packets
    }

    /// The PUBLISH packets ready now.
    func drainPublishes() -> [MQTTPublishPacket] {
        drain().compactMap { packet in
            if case .publish(let publish) = packet { return publish }
            return nil
        }
    }

    func closed(_ cause: ClientConnection.CloseCause = .connectionLost) {
        connection.connectionClosed(cause: cause)
    }
}

extension MQTTPublishPacket {
    /// The payload as a string.
    var text: String { String(buffer: payload) }
}

extension MQTTPacket {
    var publish: MQTTPublishPacket? {
        if case .publish(let publish) = self { return publish }
        return nil
    }
}

/// A session outside any broker, for index tests.
func makeSession(_ clientID: String) -> Session {
    Session(
        clientID: clientID,
        persistent: false,
        expiryInterval: nil,
        limits: Session.Limits(maxInflight: 10, maxQueuedMessages: 100, maxQueuedBytes: 1 << 20),
        budget: QueueBudget(limit: 1 << 30),
        metrics: GatewayMetrics()
    )
}

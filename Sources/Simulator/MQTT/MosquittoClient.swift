import CMosquitto

/// One libmosquitto client (`struct mosquitto`) and its state, owned by a ``MosquittoLoop``.
///
/// libmosquitto reports events through C function pointers that cannot capture context, so every callback receives
/// this object through the `obj` user-data pointer (`Unmanaged`, unretained). The loop keeps the client alive for as
/// long as its `struct mosquitto` exists: ``destroy()`` frees the C object before the Swift one can go away.
final class MosquittoClient {
    enum State: Equatable { case idle, connecting, subscribing, ready, closing, closed, failed }

    let plan: ClientPlan
    let slot: Int
    /// The owning loop; set right after creation, and the loop outlives its clients.
    unowned(unsafe) var loop: MosquittoLoop!
    private(set) var mosq: OpaquePointer?
    var state = State.idle
    /// The socket registered in the loop's epoll set, or -1.
    var fd: Int32 = -1
    var watchingWrites = false
    private var pendingSubscriptions: Set<Int32> = []
    /// Message ids of QoS 1/2 telemetry awaiting PUBACK or PUBCOMP.
    private(set) var awaitingAcknowledgement: Set<Int32> = []

    init(plan: ClientPlan, slot: Int) {
        self.plan = plan
        self.slot = slot
    }

    /// Creates the C client, configures it and starts a non-blocking connect. Returns a failure reason, or `nil`.
    func connect(target: Simulation.Target, scenario: Scenario) -> String? {
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let mosq = mosquitto_new(plan.clientID, true, context) else { return "mosquitto_new failed" }
        self.mosq = mosq
        if scenario.protocolVersion == .v5 {
            mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5)
        }
        // Latency is what we measure: do not let Nagle hold small publishes back.
        mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1)
        // The whole window on the wire at once (libmosquitto's own default is 20 in flight, the rest
        // queued inside the library).
        if scenario.publish.qos > 0 && scenario.publish.window > 0 {
            mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, Int32(scenario.publish.window))
        }
        if let username = target.username {
            let rc = mosquitto_username_pw_set(mosq, username, target.password)
            if rc != MOSQ_ERR_SUCCESS.rawValue { return fail("username: \(Self.describe(rc))") }
        }
        if let tls = target.tls {
            let rc = mosquitto_tls_set(mosq, tls.caFile, nil, tls.certificateFile, tls.keyFile, nil)
            if rc != MOSQ_ERR_SUCCESS.rawValue { return fail("tls: \(Self.describe(rc))") }
            if tls.skipHostnameVerification { mosquitto_tls_insecure_set(mosq, true) }
        }
        mosquitto_connect_callback_set(mosq) { _, context, rc in
            MosquittoClient.from(context).didConnect(rc: rc)
        }
        mosquitto_subscribe_callback_set(mosq) { _, context, mid, count, granted in
            MosquittoClient.from(context).didSubscribe(mid: mid, count: count, granted: granted)
        }
        mosquitto_message_callback_set(mosq) { _, context, message in
            guard let message else { return }
            MosquittoClient.from(context).didReceive(message.pointee)
        }
        mosquitto_publish_callback_set(mosq) { _, context, mid in
            MosquittoClient.from(context).didPublish(mid: mid)
        }
        mosquitto_disconnect_callback_set(mosq) { _, context, rc in
            MosquittoClient.from(context).didDisconnect(rc: rc)
        }
        state = .connecting
        let rc = mosquitto_connect_async(mosq, target.host, Int32(target.mqttPort), Int32(scenario.connect.keepAlive))
        if rc != MOSQ_ERR_SUCCESS.rawValue {
            return fail("connect: \(Self.describe(rc))")
        }
        return nil
    }

    private func fail(_ reason: String) -> String {
        state = .failed
        destroy()
        return reason
    }

    /// Starts a clean disconnect (DISCONNECT, then libmosquitto closes the socket once it is written).
    func disconnect(version: Scenario.ProtocolVersion) {
        guard let mosq else { return }
        switch state {
        case .connecting, .subscribing, .ready:
            state = .closing
            _ = mosquitto_disconnect(mosq)
        case .idle, .closing, .closed, .failed:
            break
        }
    }

    /// Frees the C client (closing its socket if still open).
    func destroy() {
        guard let mosq else { return }
        self.mosq = nil
        fd = -1
        mosquitto_destroy(mosq)
    }

    // MARK: Callbacks (on the loop thread, inside mosquitto_loop_* calls)

    private static func from(_ context: UnsafeMutableRawPointer?) -> MosquittoClient {
        Unmanaged<MosquittoClient>.fromOpaque(context!).takeUnretainedValue()
    }

    private func didConnect(rc: Int32) {
        guard state == .connecting, let mosq else { return }
        guard rc == 0 else {
            state = .failed
            loop.clientFailed(self, reason: "CONNACK refused: \(String(cString: mosquitto_connack_string(rc)))")
            return
        }
        guard !plan.subscriptions.isEmpty else {
            state = .ready
            loop.clientBecameReady(self)
            return
        }
        state = .subscribing
        for subscription in plan.subscriptions {
            var mid: Int32 = 0
            let rc = mosquitto_subscribe(mosq, &mid, subscription.filter, Int32(subscription.qos))
            guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                state = .failed
                loop.clientFailed(self, reason: "subscribe: \(Self.describe(rc))")
                return
            }
            pendingSubscriptions.insert(mid)
        }
    }

    private func didSubscribe(mid: Int32, count: Int32, granted: UnsafePointer<Int32>?) {
        guard state == .subscribing, pendingSubscriptions.remove(mid) != nil else { return }
        // Granted QoS values of 0x80 and above are refusals (MQTT 3.1.1 0x80, MQTT 5 reason codes).
        for index in 0..<Int(count) where (granted?[index] ?? 0x80) >= 0x80 {
            state = .failed
            loop.clientFailed(self, reason: "subscription refused (0x\(String(granted?[index] ?? 0x80, radix: 16)))")
            return
        }
        if pendingSubscriptions.isEmpty {
            state = .ready
            loop.clientBecameReady(self)
        }
    }

    private func didReceive(_ message: mosquitto_message) {
        let payload = UnsafeRawBufferPointer(start: message.payload, count: Int(message.payloadlen))
        loop.received(self, topic: message.topic, payload: payload, retained: message.retain)
    }

    /// Publishes telemetry; returns the libmosquitto result code.
    func publish(topic: String, payload: [UInt8], qos: Int, retain: Bool) -> Int32 {
        guard let mosq else { return MOSQ_ERR_NO_CONN.rawValue }
        var mid: Int32 = 0
        let rc = payload.withUnsafeBytes { bytes in
            mosquitto_publish(mosq, &mid, topic, Int32(bytes.count), bytes.baseAddress, Int32(qos), retain)
        }
        if rc == MOSQ_ERR_SUCCESS.rawValue, qos > 0 { awaitingAcknowledgement.insert(mid) }
        return rc
    }

    private func didPublish(mid: Int32) {
        // libmosquitto also reports QoS 0 messages (once written) and replies; only telemetry acknowledgements count.
        if awaitingAcknowledgement.remove(mid) != nil { loop.acknowledged() }
    }

    private func didDisconnect(rc: Int32) {
        let wasReady = state == .ready
        switch state {
        case .closing:
            state = .closed
            loop.clientClosedCleanly(self)
        case .failed, .closed:
            break
        default:
            state = rc == 0 ? .closed : .failed
            loop.clientDropped(self, wasReady: wasReady, rc: rc)
        }
    }

    static func describe(_ rc: Int32) -> String {
        String(cString: mosquitto_strerror(rc))
    }
}

/// A client belongs to exactly one loop thread.
@available(*, unavailable)
extension MosquittoClient: Sendable {}

import CMosquitto
import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One bridge's thread: the libmosquitto client of the upstream, driven through the external-loop API
/// (`mosquitto_socket`, `mosquitto_loop_read/write/misc`) from `poll(2)` on a dedicated thread.
///
/// Every libmosquitto call, and every callback, happens on this thread, so the library's threaded mode
/// is off and no event loop or cooperative thread ever waits for the upstream (connect and DNS
/// included). The thread talks to the rest of the gateway through the broker's thread-safe,
/// non-blocking API: it takes deliveries from the bridge's internal session
/// (``InternalClient/nextDelivery()``), acknowledges them when the upstream does, and publishes what
/// arrives from the upstream into the broker, where each subscriber's bounded queue and its policy
/// apply. The bridge queue is that internal session: bounded in messages and bytes, QoS 1/2 kept while
/// the upstream is away, a full queue dropping (and counting) new messages.
///
/// Wake-ups come through a pipe: the session's ``ConnectionHandle/deliveryAvailable()`` and
/// ``requestStop()`` write a byte to it.
///
/// Each connection attempt uses a fresh `struct mosquitto`: libmosquitto's own retry queue is thrown
/// away with it, and the session delivers everything unacknowledged again (oldest first) after the
/// next connect, so the session is the only place a message waits.
final class BridgeWorker: @unchecked Sendable {
    // @unchecked Sendable: the mutable state below `// Thread-confined` is only touched on the worker
    // thread (run() and the libmosquitto callbacks it triggers). What other threads call —
    // requestStop(), wake(), requestReconnect() — touches only the atomics and the pipe's write end.

    let configuration: BridgeConfiguration
    let client: InternalClient
    let mapper: TopicMapper
    let status: BridgeStatus
    let logger: Logger
    let onStateChange: @Sendable (BridgeState, String?) -> Void

    private let stopRequested = Atomic<Bool>(false)
    private let reconnectRequested = Atomic<Bool>(false)
    private let wakeRead: Int32
    private let wakeWrite: Int32

    // Thread-confined
    private enum Phase {
        /// Waiting for the next attempt.
        case waiting(until: ContinuousClock.Instant)
        /// TCP connected, CONNECT sent, waiting for CONNACK (or SUBACKs) until the deadline.
        case connecting(deadline: ContinuousClock.Instant)
        case connected
    }

    private var mosq: OpaquePointer?
    private var phase: Phase
    /// libmosquitto message id → the internal session's packet id, for QoS 1/2 messages in flight.
    private var inflight: [Int32: UInt16] = [:]
    private var pendingSubscriptions: Set<Int32> = []
    private var failures = 0
    /// Set by the disconnect callback; handled after the libmosquitto call returns.
    private var lostReason: String?
    private var echo: EchoFilter?
    private var refusedEpisode = false
    private let clock = ContinuousClock()
    private lazy var handle = BridgeConnectionHandle(worker: self)

    init(
        configuration: BridgeConfiguration,
        client: InternalClient,
        status: BridgeStatus,
        logger: Logger,
        onStateChange: @escaping @Sendable (BridgeState, String?) -> Void
    ) {
        self.configuration = configuration
        self.client = client
        self.mapper = TopicMapper(rules: configuration.rules)
        self.status = status
        var logger = logger
        logger[metadataKey: "iotgw.bridge"] = "\(configuration.name)"
        self.logger = logger
        self.onStateChange = onStateChange
        var fds: [Int32] = [-1, -1]
        let rc = pipe(&fds)
        precondition(rc == 0, "pipe failed: errno \(errno)")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        phase = .waiting(until: ContinuousClock.now)
        if configuration.protocolVersion == .v3_1_1 && !mapper.remoteSubscriptions.isEmpty {
            echo = EchoFilter()
        }
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    // MARK: Calls from other threads

    /// Asks the thread to disconnect from the upstream and end. Idempotent.
    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        wake()
    }

    /// Asks for the upstream connection to be dropped and made again (admin disconnect of `$bridge/NAME`).
    func requestReconnect() {
        reconnectRequested.store(true, ordering: .releasing)
        wake()
    }

    /// Interrupts `poll`. Never blocks: a full pipe already holds a wake-up.
    func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    // MARK: The thread

    /// The thread body: runs until ``requestStop()``.
    func run() {
        mosquitto_lib_init()
        // libmosquitto writes TLS records with SSL_write, which can raise SIGPIPE on a socket the
        // upstream closed; the default action would end the whole gateway. NIO never relies on it.
        signal(SIGPIPE, SIG_IGN)
        status.set(.connecting)
        onStateChange(.connecting, nil)
        logger.info(
            "bridge starting",
            metadata: [
                "iotgw.bridge.upstream": "\(configuration.host):\(configuration.port)",
                "mqtt.client.id": "\(configuration.clientID)",
                "mqtt.protocol.version": "\(configuration.protocolVersion)",
            ]
        )
        var lastMisc = clock.now
        while !stopRequested.load(ordering: .acquiring) {
            let now = clock.now
            if reconnectRequested.exchange(false, ordering: .acquiringAndReleasing), mosq != nil {
                connectionLost("reconnect requested by an operator", now: now)
            }
            switch phase {
            case .waiting(let until) where now >= until:
                startConnect(now: now)
            case .connecting(let deadline) where now >= deadline:
                connectionLost("no CONNACK/SUBACK within \(Self.connectTimeoutSeconds) s", now: now)
            default:
                break
            }
            if case .connected = phase { pump() }
            pollOnce(timeout: pollTimeout(now: clock.now))
            if let reason = lostReason {
                lostReason = nil
                connectionLost(reason, now: clock.now)
            }
            if lastMisc.duration(to: clock.now) >= .seconds(1) {
                lastMisc = clock.now
                if let mosq {
                    let rc = mosquitto_loop_misc(mosq)
                    if rc != MOSQ_ERR_SUCCESS.rawValue && rc != MOSQ_ERR_NO_CONN.rawValue {
                        connectionLost("keep-alive: \(Self.describe(rc))", now: clock.now)
                    }
                }
                status.queueDepth(client.queuedCount)
            }
        }
        shutdown()
    }

    private static let connectTimeoutSeconds = 10

    private func pollTimeout(now: ContinuousClock.Instant) -> Int32 {
        var timeout: Duration = .seconds(1)
        if case .waiting(let until) = phase { timeout = min(timeout, max(.zero, now.duration(to: until))) }
        let ms = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
        return Int32(max(ms, 0))
    }

    private func pollOnce(timeout: Int32) {
        var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        let socket = mosq.map { mosquitto_socket($0) } ?? -1
        if let mosq, socket >= 0 {
            let events = Int16(POLLIN) | (mosquitto_want_write(mosq) ? Int16(POLLOUT) : 0)
            fds.append(pollfd(fd: socket, events: events, revents: 0))
        }
        let count = poll(&fds, nfds_t(fds.count), timeout)
        guard count > 0 else { return }
        if fds[0].revents != 0 {
            var buffer = [UInt8](repeating: 0, count: 64)
            while read(wakeRead, &buffer, buffer.count) > 0 {}
        }
        guard fds.count > 1, fds[1].revents != 0, let mosq = self.mosq else { return }
        // A TLS handshake in progress is driven by reads, so read on any event (EAGAIN costs little).
        var rc = mosquitto_loop_read(mosq, 1)
        if rc == MOSQ_ERR_SUCCESS.rawValue, self.mosq != nil, mosquitto_want_write(mosq) {
            rc = mosquitto_loop_write(mosq, 1)
        }
        if rc != MOSQ_ERR_SUCCESS.rawValue && lostReason == nil {
            lostReason = Self.describe(rc)
        }
    }

    // MARK: Connecting

    private func startConnect(now: ContinuousClock.Instant) {
        status.set(.connecting)
        onStateChange(.connecting, nil)
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let mosq = mosquitto_new(configuration.clientID, configuration.cleanSession, context) else {
            connectFailed("mosquitto_new failed (errno \(errno))", now: now)
            return
        }
        self.mosq = mosq
        let v5 = configuration.protocolVersion == .v5
        mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, v5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311)
        mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1)
        // libmosquitto's own window matches the session's, so it never holds a queue of its own.
        mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, Int32(configuration.queue.maxInflight))
        if let username = configuration.username {
            let rc = mosquitto_username_pw_set(mosq, username, configuration.password)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { return connectFailed("username: \(Self.describe(rc))", now: now) }
        }
        if let tls = configuration.tls {
            if tls.caFile == nil { mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1) }
            let rc = mosquitto_tls_set(mosq, tls.caFile, nil, tls.certificateFile, tls.keyFile, nil)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { return connectFailed("TLS: \(Self.describe(rc))", now: now) }
            if tls.insecure { mosquitto_tls_insecure_set(mosq, true) }
        }
        mosquitto_connect_callback_set(mosq) { _, context, rc in
            BridgeWorker.from(context).didConnect(rc: rc)
        }
        mosquitto_subscribe_callback_set(mosq) { _, context, mid, count, granted in
            BridgeWorker.from(context).didSubscribe(mid: mid, count: count, granted: granted)
        }
        // The v5 callback also serves 3.1.1 (its property list is then empty).
        mosquitto_message_v5_callback_set(mosq) { _, context, message, properties in
            guard let message else { return }
            BridgeWorker.from(context).didReceive(message.pointee, properties: properties)
        }
        mosquitto_publish_v5_callback_set(mosq) { _, context, mid, reasonCode, _ in
            BridgeWorker.from(context).didPublish(mid: mid, reasonCode: reasonCode)
        }
        mosquitto_disconnect_callback_set(mosq) { _, context, rc in
            BridgeWorker.from(context).didDisconnect(rc: rc)
        }
        // A blocking connect (DNS, TCP and CONNECT written): this thread is the bridge's alone. MQTT 5
        // needs the variant with properties to ask for a persistent session (Session Expiry Interval).
        var rc: Int32
        if v5 {
            var properties: OpaquePointer?
            if !configuration.cleanSession {
                mosquitto_property_add_int32(&properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), configuration.sessionExpiry)
            }
            rc = mosquitto_connect_bind_v5(mosq, configuration.host, Int32(configuration.port), Int32(configuration.keepAlive), nil, properties)
            mosquitto_property_free_all(&properties)
        } else {
            rc = mosquitto_connect(mosq, configuration.host, Int32(configuration.port), Int32(configuration.keepAlive))
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            let reason = rc == MOSQ_ERR_ERRNO.rawValue ? String(cString: strerror(errno)) : Self.describe(rc)
            return connectFailed("connect to \(configuration.host):\(configuration.port): \(reason)", now: now)
        }
        phase = .connecting(deadline: now.advanced(by: .seconds(Self.connectTimeoutSeconds)))
    }

    private func didConnect(rc: Int32) {
        guard let mosq, case .connecting = phase else { return }
        guard rc == 0 else {
            lostReason = "CONNACK refused: \(String(cString: mosquitto_connack_string(rc)))"
            return
        }
        let subscriptions = mapper.remoteSubscriptions
        if subscriptions.isEmpty {
            becomeConnected()
            return
        }
        for subscription in subscriptions {
            var mid: Int32 = 0
            let result: Int32
            if configuration.protocolVersion == .v5 {
                // No Local: the upstream does not send back what this bridge publishes; Retain As
                // Published keeps the RETAIN flag of forwarded retained messages.
                let options = Int32(MQTT_SUB_OPT_NO_LOCAL.rawValue | MQTT_SUB_OPT_RETAIN_AS_PUBLISHED.rawValue)
                result = mosquitto_subscribe_v5(mosq, &mid, subscription.filter, Int32(subscription.qos.rawValue), options, nil)
            } else {
                result = mosquitto_subscribe(mosq, &mid, subscription.filter, Int32(subscription.qos.rawValue))
            }
            guard result == MOSQ_ERR_SUCCESS.rawValue else {
                lostReason = "SUBSCRIBE \(subscription.filter): \(Self.describe(result))"
                return
            }
            pendingSubscriptions.insert(mid)
        }
    }

    private func didSubscribe(mid: Int32, count: Int32, granted: UnsafePointer<Int32>?) {
        guard pendingSubscriptions.remove(mid) != nil else { return }
        for index in 0..<Int(count) where (granted?[index] ?? 0x80) >= 0x80 {
            // The upstream refused a filter (ACL): the rest of the bridge still works; say so.
            let code = granted?[index] ?? 0x80
            logger.error("upstream refused a bridge subscription", metadata: ["mqtt.reason_code": "0x\(String(code, radix: 16))"])
            status.noteError("upstream refused a subscription (0x\(String(code, radix: 16)))")
        }
        if pendingSubscriptions.isEmpty, case .connecting = phase { becomeConnected() }
    }

    private func becomeConnected() {
        phase = .connected
        failures = 0
        client.connect(handle: handle)
        status.set(.connected)
        onStateChange(.connected, nil)
        logger.notice("bridge connected", metadata: ["iotgw.bridge.queued": "\(client.queuedCount)"])
    }

    private func connectFailed(_ reason: String, now: ContinuousClock.Instant) {
        teardown()
        scheduleRetry(reason, now: now)
    }

    /// Ends the current connection (or attempt) and schedules the next attempt.
    private func connectionLost(_ reason: String, now: ContinuousClock.Instant) {
        let wasConnected: Bool
        if case .connected = phase { wasConnected = true } else { wasConnected = false }
        teardown()
        if wasConnected {
            logger.notice("bridge connection lost", metadata: ["error": "\(reason)", "iotgw.bridge.queued": "\(client.queuedCount)"])
        }
        scheduleRetry(reason, now: now)
    }

    private func scheduleRetry(_ reason: String, now: ContinuousClock.Instant) {
        failures += 1
        let delay = configuration.reconnectDelay(afterFailures: failures, random: Double.random(in: 0...1))
        phase = .waiting(until: now.advanced(by: .milliseconds(Int64(delay * 1000))))
        status.set(.down, error: reason)
        onStateChange(.down, reason)
        // Once per outage at info; the retries of a long outage at debug.
        let level: Logger.Level = failures == 1 ? .info : .debug
        logger.log(
            level: level,
            "bridge down, retrying",
            metadata: ["error": "\(reason)", "iotgw.bridge.retry_seconds": "\((delay * 100).rounded() / 100)", "iotgw.bridge.failures": "\(failures)"]
        )
    }

    /// Frees the libmosquitto client and releases the internal session (its unacknowledged messages
    /// are delivered again after the next connect).
    private func teardown() {
        client.disconnect()
        inflight.removeAll()
        pendingSubscriptions.removeAll()
        if let mosq {
            self.mosq = nil
            mosquitto_destroy(mosq)
        }
        lostReason = nil
    }

    private func shutdown() {
        if let mosq, case .connected = phase {
            // Best effort: DISCONNECT so a persistent upstream session ends cleanly (no Will).
            _ = mosquitto_disconnect(mosq)
            _ = mosquitto_loop_write(mosq, 1)
        }
        let queued = client.queuedCount
        teardown()
        status.set(.down, error: "stopped")
        status.queueDepth(queued)
        onStateChange(.down, "stopped")
        logger.info("bridge stopped", metadata: ["iotgw.bridge.queued": "\(queued)"])
    }

    // MARK: Forwarding (gateway → upstream)

    /// Hands the session's deliveries to libmosquitto while its output buffer is empty. The session's
    /// window bounds QoS 1/2 in flight; checking `want_write` first bounds what libmosquitto buffers.
    private func pump() {
        guard let mosq else { return }
        let now = clock.now
        while !mosquitto_want_write(mosq), let publish = client.nextDelivery() {
            guard let topic = mapper.remoteTopic(forLocal: publish.topic) else {
                // Cannot happen with the session subscribed to the rules' own filters; never silently.
                status.dropped(.noRule)
                if let id = publish.packetIdentifier { client.acknowledge(packetID: id) }
                continue
            }
            var mid: Int32 = 0
            let qos = Int32(publish.qos.rawValue)
            // On MQTT 5 the message's properties go along (what is left of its expiry included).
            var (properties, failed) = configuration.protocolVersion == .v5
                ? BridgeProperties.mosquittoList(publish.properties) : (nil, false)
            defer { mosquitto_property_free_all(&properties) }
            let rc = failed ? MOSQ_ERR_NOMEM.rawValue : publish.payload.withUnsafeReadableBytes { bytes in
                mosquitto_publish_v5(mosq, &mid, topic, Int32(bytes.count), bytes.baseAddress, qos, publish.retain, properties)
            }
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                if echo != nil {
                    publish.payload.withUnsafeReadableBytes { echo?.record(topic: topic, payload: $0, now: now) }
                }
                if let id = publish.packetIdentifier {
                    inflight[mid] = id
                } else {
                    status.forwarded()
                }
            } else if rc == MOSQ_ERR_NO_CONN.rawValue || rc == MOSQ_ERR_CONN_LOST.rawValue || rc == MOSQ_ERR_NOMEM.rawValue {
                // Stays in flight in the session; delivered again after the reconnect.
                lostReason = lostReason ?? Self.describe(rc)
                return
            } else {
                refused(publish, why: Self.describe(rc))
            }
        }
    }

    private func refused(_ publish: MQTTPublishPacket, why: String) {
        status.dropped(.refused)
        if let id = publish.packetIdentifier { client.acknowledge(packetID: id) }
        if !refusedEpisode {
            refusedEpisode = true
            logger.notice("message refused for the upstream, dropped", metadata: ["error": "\(why)", "mqtt.topic": "\(publish.topic)"])
        }
    }

    private func didPublish(mid: Int32, reasonCode: Int32) {
        guard let id = inflight.removeValue(forKey: mid) else { return }
        client.acknowledge(packetID: id)
        if reasonCode >= 0x80 {
            // MQTT 5 PUBACK/PUBREC with a failure code: the upstream will never take it; not retried.
            status.dropped(.refused)
            if !refusedEpisode {
                refusedEpisode = true
                logger.notice("upstream refused a forwarded message", metadata: ["mqtt.reason_code": "0x\(String(reasonCode, radix: 16))"])
            }
        } else {
            refusedEpisode = false
            status.forwarded()
        }
    }

    // MARK: Receiving (upstream → gateway)

    private func didReceive(_ message: mosquitto_message, properties list: OpaquePointer?) {
        let remoteTopic = message.topic.map { String(cString: $0) } ?? ""
        let payload = UnsafeRawBufferPointer(start: message.payload, count: Int(message.payloadlen))
        if echo != nil, echo!.isEcho(topic: remoteTopic, payload: payload, now: clock.now) {
            status.dropped(.echo)
            return
        }
        guard let topic = mapper.localTopic(forRemote: remoteTopic) else {
            status.dropped(.noRule)
            return
        }
        var buffer = ByteBufferAllocator().buffer(capacity: payload.count)
        buffer.writeBytes(payload)
        let qos = MQTTQoS(rawValue: UInt8(clamping: message.qos)) ?? .atMostOnce
        let properties = BridgeProperties.properties(from: list)
        client.publish(Message(
            topic: topic,
            payload: buffer,
            qos: qos,
            retain: message.retain,
            properties: properties,
            expiresAt: properties.messageExpiryInterval.map { clock.now.advanced(by: .seconds(Int64($0))) }
        ))
        status.received()
    }

    private func didDisconnect(rc: Int32) {
        if lostReason == nil {
            lostReason = rc == 0 ? "disconnected" : "connection lost: \(Self.describe(rc))"
        }
    }

    // MARK: Helpers

    private static func from(_ context: UnsafeMutableRawPointer?) -> BridgeWorker {
        Unmanaged<BridgeWorker>.fromOpaque(context!).takeUnretainedValue()
    }

    static func describe(_ rc: Int32) -> String {
        String(cString: mosquitto_strerror(rc))
    }
}

/// The bridge as the owner of its internal session: wake-ups go to the worker's pipe.
final class BridgeConnectionHandle: ConnectionHandle {
    // Only `let` properties; the worker's wake() and requestReconnect() are thread-safe.
    private unowned let worker: BridgeWorker

    init(worker: BridgeWorker) {
        self.worker = worker
    }

    func deliveryAvailable() {
        worker.wake()
    }

    func setReadPaused(_ paused: Bool) {
        // The bridge publishes into the broker without a ReadThrottle (nothing to pause reading from).
    }

    func close(reason: ServerDisconnectReason) {
        // Shutdown is ordered by the bridge's Service (after the listeners drain), so the broker's
        // "close everything" does not stop it; an operator's disconnect restarts the upstream connection.
        if reason == .administrativeAction { worker.requestReconnect() }
    }
}

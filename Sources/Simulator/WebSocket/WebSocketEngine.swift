import CWebSockets
import Foundation
import Logging

/// Runs every WebSocket client of a simulation on one libwebsockets context and its single service thread.
///
/// libwebsockets calls back through a C function pointer; the client travels in each connection's
/// `opaque_user_data` and the engine in the context's user pointer, both `Unmanaged` and unretained: the engine owns
/// the clients and destroys the context (closing every connection) before either goes away. Scheduling (connect ramp,
/// publish times, phase changes) runs from a libwebsockets timer (`lws_sul_schedule`) on the same thread, so nothing
/// here needs a lock.
final class WebSocketEngine: EngineTransport {
    private let plan: SimulationPlan
    private let control: RunControl
    private let logger: Logger
    private let core: EngineCore
    private var clients: [WebSocketClient] = []
    private var context: OpaquePointer?
    private let protocols: UnsafeMutablePointer<lws_protocols>
    private let protocolName: UnsafeMutablePointer<CChar>
    private let subprotocolMQTT: UnsafeMutablePointer<CChar>
    private let hostString: UnsafeMutablePointer<CChar>
    private let mqttPath: UnsafeMutablePointer<CChar>
    private let caFile: UnsafeMutablePointer<CChar>?
    /// The timer: an `lws_sorted_usec_list_t` followed by a pointer back to this engine.
    private let timer: UnsafeMutableRawPointer
    private var finished = false
    private var disconnectStarted: UInt64?
    private var lastPublish: UInt64 = 0
    private var lastPing: UInt64 = 0

    static func run(plan: SimulationPlan, control: RunControl, engineIndex: Int, slots: [Int], logger: Logger) -> EngineResult {
        let engine = WebSocketEngine(plan: plan, control: control, engineIndex: engineIndex, slots: slots, logger: logger)
        defer { engine.close() }
        engine.serve()
        return engine.core.ledger.result()
    }

    private init(plan: SimulationPlan, control: RunControl, engineIndex: Int, slots: [Int], logger: Logger) {
        self.plan = plan
        self.control = control
        self.logger = logger
        core = EngineCore(plan: plan, engineIndex: engineIndex, slots: slots)
        protocolName = strdup("iotgw-sim")
        subprotocolMQTT = strdup("mqtt")
        hostString = strdup(plan.target.host)
        mqttPath = strdup(plan.target.webSocketMQTTPath)
        caFile = plan.target.tls.map { strdup($0.caFile) }
        // A zero-filled terminator entry ends the protocol list.
        protocols = .allocate(capacity: 2)
        protocols.initialize(repeating: lws_protocols(), count: 2)
        protocols[0].name = UnsafePointer(protocolName)
        protocols[0].callback = webSocketCallback
        protocols[0].rx_buffer_size = 65536
        let timerSize = MemoryLayout<lws_sorted_usec_list_t>.stride
        timer = .allocate(byteCount: timerSize + MemoryLayout<UnsafeMutableRawPointer>.stride, alignment: 16)
        timer.initializeMemory(as: UInt8.self, repeating: 0, count: timerSize)
        clients = slots.enumerated().map { slot, index in WebSocketClient(plan: plan.clients[index], slot: slot, version: plan.scenario.protocolVersion) }
    }

    private func close() {
        if let context { lws_context_destroy(context) }
        context = nil
        protocols.deallocate()
        timer.deallocate()
        for pointer in [protocolName, subprotocolMQTT, hostString, mqttPath] { free(pointer) }
        if let caFile { free(caFile) }
    }

    private func serve() {
        // Errors only: a refused connection is counted and logged by us at debug, not printed by the library.
        lws_set_log_level(Int32(LLL_ERR), nil)
        var info = lws_context_creation_info()
        info.port = iotgw_lws_no_listen()
        info.protocols = UnsafePointer(protocols)
        info.gid = -1
        info.uid = -1
        info.user = Unmanaged.passUnretained(self).toOpaque()
        info.timeout_secs = UInt32(clamping: Swift.max(1, plan.scenario.connect.timeout.nanoseconds / 1_000_000_000))
        info.fd_limit_per_thread = UInt32(clamping: clients.count + 64)
        if plan.target.tls != nil {
            info.options = iotgw_lws_option_ssl_global_init()
            info.client_ssl_ca_filepath = UnsafePointer(caFile)
        }
        guard let context = lws_create_context(&info) else {
            logger.error("lws_create_context failed")
            core.ledger.counters.connectFailures += clients.count
            control.publish(core.ledger.counters, engine: core.engineIndex)
            // Without a context there is nothing to run, but the orchestrator still walks through its phases.
            control.waitForDisconnecting()
            return
        }
        self.context = context
        timer.storeBytes(of: Unmanaged.passUnretained(self).toOpaque(), toByteOffset: MemoryLayout<lws_sorted_usec_list_t>.stride, as: UnsafeMutableRawPointer.self)
        schedule(afterMicroseconds: 0)
        while !finished {
            if lws_service(context, 0) < 0 { break }
        }
        control.publish(core.ledger.counters, engine: core.engineIndex)
    }

    private func schedule(afterMicroseconds delay: Int64) {
        timer.withMemoryRebound(to: lws_sorted_usec_list_t.self, capacity: 1) { sul in
            lws_sul_schedule(context, 0, sul, webSocketTimerFired, delay)
        }
    }

    // MARK: Timer

    fileprivate func timerFired() {
        var now = MonotonicClock.now()
        let nextDue = core.tick(now: now, phase: control.currentPhase, transport: self)
        if core.stage == .disconnecting {
            disconnectStarted = disconnectStarted ?? now
            if clients.allSatisfy({ $0.wsi == nil }) || now - disconnectStarted! > 3_000_000_000 {
                finished = true
                lws_cancel_service(context)
                return
            }
        }
        if now - lastPing >= 1_000_000_000 {
            lastPing = now
            sendKeepAlives(now: now)
        }
        if now - lastPublish >= 50_000_000 {
            lastPublish = now
            control.publish(core.ledger.counters, engine: core.engineIndex)
        }
        now = MonotonicClock.now()
        let wait = nextDue > now ? Int64((nextDue - now) / 1_000) : 0
        schedule(afterMicroseconds: Swift.min(wait, 10_000))
    }

    private func sendKeepAlives(now: UInt64) {
        let keepAlive = UInt64(plan.scenario.connect.keepAlive) * 1_000_000_000
        guard keepAlive > 0 else { return }
        for client in clients where client.isMQTT && client.wsi != nil && (client.state == .ready || client.state == .subscribing) {
            if now - client.lastSent > keepAlive / 2 {
                client.queueMQTT(MiniMQTT.pingreq)
                requestWrite(client)
            }
        }
    }

    // MARK: libwebsockets events

    fileprivate func handle(_ client: WebSocketClient, wsi: OpaquePointer, reason: lws_callback_reasons, input: UnsafeMutableRawPointer?, length: Int) -> Int32 {
        switch reason {
        case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
            let message = input.map { String(cString: $0.assumingMemoryBound(to: CChar.self)) } ?? "unknown"
            client.wsi = nil
            fail(client, reason: "connection error: \(message)")
        case LWS_CALLBACK_CLIENT_ESTABLISHED:
            client.wsi = wsi
            established(client)
        case LWS_CALLBACK_CLIENT_RECEIVE:
            guard let input else { return 0 }
            let bytes = UnsafeRawBufferPointer(start: input, count: length)
            if client.isMQTT {
                receiveMQTT(client, bytes)
            } else {
                client.jsonInbound.append(contentsOf: bytes)
                if lws_is_final_fragment(wsi) != 0 && lws_remaining_packet_payload(wsi) == 0 {
                    let message = client.jsonInbound
                    client.jsonInbound.removeAll(keepingCapacity: true)
                    receiveJSON(client, message)
                }
            }
        case LWS_CALLBACK_CLIENT_WRITEABLE:
            return writeable(client, wsi: wsi)
        case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
            if client.state != .closing { dropped(client, reason: "server closed the WebSocket") }
        case LWS_CALLBACK_CLIENT_CLOSED:
            if client.state == .closing {
                client.state = .closed
                core.ledger.counters.closed += 1
            } else if client.state != .failed && client.state != .closed {
                dropped(client, reason: "connection closed")
            }
        case LWS_CALLBACK_WSI_DESTROY:
            client.wsi = nil
        default:
            break
        }
        return 0
    }

    private func established(_ client: WebSocketClient) {
        client.state = .handshaking
        if client.isMQTT {
            client.queueMQTT(MiniMQTT.connect(
                clientID: client.plan.clientID, keepAlive: plan.scenario.connect.keepAlive, version: plan.scenario.protocolVersion,
                username: plan.target.username, password: plan.target.password
            ))
            requestWrite(client)
        }
        // A JSON API client waits for the gateway's `{"op":"connected",...}`, its CONNACK, before subscribing.
    }

    private func startSubscribing(_ client: WebSocketClient) {
        guard !client.plan.subscriptions.isEmpty else {
            becameReady(client)
            return
        }
        client.state = .subscribing
        for subscription in client.plan.subscriptions {
            if client.isMQTT {
                let packetID = client.allocatePacketID()
                client.pendingSubscriptions.insert(Int(packetID))
                client.queueMQTT(MiniMQTT.subscribe(packetID: packetID, filter: subscription.filter, qos: subscription.qos, version: plan.scenario.protocolVersion))
            } else {
                let id = client.allocateRequestID()
                client.pendingSubscriptions.insert(id)
                client.queueJSON(#"{"op":"subscribe","filter":\#(JSONText.quote(subscription.filter)),"qos":\#(subscription.qos),"id":\#(id)}"#)
            }
        }
        requestWrite(client)
    }

    private func becameReady(_ client: WebSocketClient) {
        client.state = .ready
        core.ledger.counters.ready += 1
        control.setReady(client.plan.index, true)
    }

    private func fail(_ client: WebSocketClient, reason: String) {
        guard client.state != .failed && client.state != .closed else { return }
        let wasReady = client.state == .ready
        let closing = client.state == .closing
        client.state = .failed
        if wasReady {
            core.ledger.counters.ready -= 1
            control.setReady(client.plan.index, false)
        }
        if closing || core.stage == .disconnecting { return }
        if wasReady { core.ledger.counters.disconnects += 1 } else { core.ledger.counters.connectFailures += 1 }
        logger.debug("WebSocket client failed", metadata: ["mqtt.client.id": "\(client.plan.clientID)", "reason": "\(reason)"])
    }

    private func dropped(_ client: WebSocketClient, reason: String) {
        fail(client, reason: reason)
    }

    private func protocolFailure(_ client: WebSocketClient, _ reason: String) {
        core.ledger.counters.protocolErrors += 1
        fail(client, reason: reason)
        closeConnection(client)
    }

    private func writeable(_ client: WebSocketClient, wsi: OpaquePointer) -> Int32 {
        if client.mqttOutbound.count > WebSocketClient.headroom {
            let count = client.mqttOutbound.count - WebSocketClient.headroom
            let written = client.mqttOutbound.withUnsafeMutableBufferPointer { buffer in
                lws_write(wsi, buffer.baseAddress! + WebSocketClient.headroom, count, LWS_WRITE_BINARY)
            }
            if written < count { return -1 }
            client.mqttOutbound.removeSubrange(WebSocketClient.headroom...)
            client.lastSent = MonotonicClock.now()
        } else if !client.jsonOutbound.isEmpty {
            var frame = client.jsonOutbound.removeFirst()
            let count = frame.count - WebSocketClient.headroom
            let written = frame.withUnsafeMutableBufferPointer { buffer in
                lws_write(wsi, buffer.baseAddress! + WebSocketClient.headroom, count, LWS_WRITE_TEXT)
            }
            if written < count { return -1 }
            client.lastSent = MonotonicClock.now()
        }
        if client.hasOutbound {
            lws_callback_on_writable(wsi)
        } else if client.closeRequested {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, nil, 0)
            return -1  // tells libwebsockets to close the connection now
        }
        return 0
    }

    private func requestWrite(_ client: WebSocketClient) {
        if let wsi = client.wsi { lws_callback_on_writable(wsi) }
    }

    private func closeConnection(_ client: WebSocketClient) {
        client.closeRequested = true
        requestWrite(client)
    }

    // MARK: MQTT over WebSocket

    private func receiveMQTT(_ client: WebSocketClient, _ bytes: UnsafeRawBufferPointer) {
        client.decoder.feed(bytes)
        do {
            while let packet = try client.decoder.next() {
                handleMQTT(client, packet)
            }
        } catch {
            protocolFailure(client, error.reason)
        }
        if client.hasOutbound { requestWrite(client) }
    }

    private func handleMQTT(_ client: WebSocketClient, _ packet: MiniMQTT.Incoming) {
        switch packet {
        case .connack(let code):
            guard client.state == .handshaking else { return protocolFailure(client, "unexpected CONNACK") }
            guard code == 0 else {
                fail(client, reason: "CONNACK refused with code \(code)")
                return closeConnection(client)
            }
            startSubscribing(client)
        case .suback(let packetID, let codes):
            guard client.pendingSubscriptions.remove(Int(packetID)) != nil else { return }
            if codes.contains(where: { $0 >= 0x80 }) {
                fail(client, reason: "subscription refused")
                return closeConnection(client)
            }
            if client.pendingSubscriptions.isEmpty, client.state == .subscribing { becameReady(client) }
        case .publish(let topic, let payload, let qos, let retain, _, let packetID):
            var deliver = true
            if qos == 1, let packetID {
                client.queueMQTT(MiniMQTT.acknowledgement(MiniMQTT.pubackType, packetID: packetID))
            } else if qos == 2, let packetID {
                // Until PUBREL, a resent PUBLISH with this id is the same message.
                deliver = client.awaitingRelease.insert(packetID).inserted
                client.queueMQTT(MiniMQTT.acknowledgement(MiniMQTT.pubrecType, packetID: packetID))
            }
            if deliver {
                payload.withUnsafeBytes { received(client, topic: topic, payload: $0, retained: retain) }
            }
        case .puback(let packetID), .pubcomp(let packetID):
            if client.awaitingAcknowledgement.remove(Int(packetID)) != nil { core.ledger.counters.acknowledged += 1 }
        case .pubrec(let packetID):
            client.queueMQTT(MiniMQTT.acknowledgement(MiniMQTT.pubrelType, packetID: packetID))
        case .pubrel(let packetID):
            client.awaitingRelease.remove(packetID)
            client.queueMQTT(MiniMQTT.acknowledgement(MiniMQTT.pubcompType, packetID: packetID))
        case .pingresp:
            break
        case .disconnect(let reason):
            fail(client, reason: "server sent DISCONNECT 0x\(String(reason, radix: 16))")
        }
    }

    /// Routes an application message: a request to answer, or telemetry to count.
    private func received(_ client: WebSocketClient, topic: String, payload: UnsafeRawBufferPointer, retained: Bool) {
        if client.plan.role == .device, topic == client.plan.commandTopic {
            if retained {
                core.ledger.counters.retainedIgnored += 1
            } else if let reply = client.plan.replyTopic {
                send(client, topic: reply, payload: Array(payload), qos: plan.scenario.requests.qos, retain: false, telemetry: false)
            }
            return
        }
        core.ledger.recordTelemetry(receiver: client.plan.index, payload: payload, retained: retained, now: MonotonicClock.now())
    }

    /// Queues one PUBLISH (MQTT) or publish op (JSON API) and asks for a writeable callback.
    @discardableResult
    private func send(_ client: WebSocketClient, topic: String, payload: [UInt8], qos: Int, retain: Bool, telemetry: Bool) -> Bool {
        guard client.state == .ready, client.wsi != nil, !client.closeRequested else { return false }
        if client.isMQTT {
            var packetID: UInt16?
            if qos > 0 {
                let id = client.allocatePacketID()
                packetID = id
                if telemetry { client.awaitingAcknowledgement.insert(Int(id)) }
            }
            client.queueMQTT(MiniMQTT.publish(topic: topic, payload: payload, qos: qos, retain: retain, packetID: packetID, version: plan.scenario.protocolVersion))
        } else {
            let id = client.allocateRequestID()
            if telemetry && qos > 0 { client.awaitingAcknowledgement.insert(id) }
            let body = String(decoding: payload, as: UTF8.self)
            client.queueJSON(#"{"op":"publish","topic":\#(JSONText.quote(topic)),"payload":\#(body),"qos":\#(qos),"retain":\#(retain),"id":\#(id)}"#)
        }
        requestWrite(client)
        return true
    }

    // MARK: JSON API

    private func receiveJSON(_ client: WebSocketClient, _ message: [UInt8]) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(message)) as? [String: Any], let op = object["op"] as? String else {
            return protocolFailure(client, "server sent a message that is not a JSON object with an op")
        }
        let id = (object["id"] as? NSNumber)?.intValue
        switch op {
        case "connected":
            // The gateway opened the session: `{"op":"connected","client_id":"..."}`, always the first message.
            guard client.state == .handshaking else { return protocolFailure(client, "unexpected connected message") }
            startSubscribing(client)
        case "ack":
            guard let id else { return }
            if client.pendingSubscriptions.remove(id) != nil {
                if client.pendingSubscriptions.isEmpty, client.state == .subscribing { becameReady(client) }
            } else if client.awaitingAcknowledgement.remove(id) != nil {
                core.ledger.counters.acknowledged += 1
            }
        case "error":
            let reason = object["reason"] as? String ?? "unspecified"
            if client.state == .handshaking {
                // The session was refused (`{"op":"error","id":null,"reason":"connection refused: ..."}`).
                fail(client, reason: reason)
                closeConnection(client)
            } else if let id, client.pendingSubscriptions.contains(id) {
                fail(client, reason: "subscribe refused: \(reason)")
                closeConnection(client)
            } else {
                if let id { client.awaitingAcknowledgement.remove(id) }
                core.ledger.counters.protocolErrors += 1
                logger.debug("JSON API error", metadata: ["mqtt.client.id": "\(client.plan.clientID)", "reason": "\(reason)"])
            }
        case "message":
            guard let topic = object["topic"] as? String else { return protocolFailure(client, "message without a topic") }
            let retained = (object["retain"] as? Bool) ?? false
            let payload: [UInt8]
            switch object["payload"] {
            case let text as String: payload = Array(text.utf8)
            case let value?:
                guard JSONSerialization.isValidJSONObject(value), let data = try? JSONSerialization.data(withJSONObject: value) else {
                    payload = Array("\(value)".utf8)
                    break
                }
                payload = Array(data)
            case nil: payload = []
            }
            payload.withUnsafeBytes { received(client, topic: topic, payload: $0, retained: retained) }
        default:
            core.ledger.counters.unexpected += 1
        }
    }

    // MARK: EngineTransport

    func startConnect(slot: Int, now: UInt64) {
        let client = clients[slot]
        guard let context else { return }
        var info = lws_client_connect_info()
        info.context = context
        info.address = UnsafePointer(hostString)
        info.port = Int32(plan.target.webSocketPort)
        info.path = UnsafePointer(client.isMQTT ? mqttPath : client.jsonPath(base: plan.target.webSocketJSONPath))
        info.host = UnsafePointer(hostString)
        info.origin = UnsafePointer(hostString)
        // Ask for the `mqtt` subprotocol on /mqtt; bind every connection to our one local protocol handler.
        info.protocol = client.isMQTT ? UnsafePointer(subprotocolMQTT) : nil
        info.local_protocol_name = UnsafePointer(protocolName)
        info.opaque_user_data = Unmanaged.passUnretained(client).toOpaque()
        if let tls = plan.target.tls {
            info.ssl_connection = Int32(LCCSCF_USE_SSL.rawValue)
            if tls.skipHostnameVerification { info.ssl_connection |= Int32(LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK.rawValue) }
        }
        client.state = .connecting
        client.lastSent = now
        let wsi = withUnsafeMutablePointer(to: &client.wsi) { slotPointer in
            info.pwsi = slotPointer
            return lws_client_connect_via_info(&info)
        }
        if wsi == nil {
            client.wsi = nil
            fail(client, reason: "lws_client_connect_via_info failed")
        }
    }

    func isReady(slot: Int) -> Bool { clients[slot].state == .ready }

    func unacknowledged(slot: Int) -> Int { clients[slot].awaitingAcknowledgement.count }

    /// Output waits for libwebsockets' next writeable callback even when the socket has room, so only a backlog
    /// of more than 64 KiB (or 256 JSON frames) counts as the socket pushing back.
    func isWriteBlocked(slot: Int) -> Bool {
        let client = clients[slot]
        return client.mqttOutbound.count > 65_536 || client.jsonOutbound.count > 256
    }

    func publishTelemetry(slot: Int, topic: String, payload: [UInt8]) -> Bool {
        send(clients[slot], topic: topic, payload: payload, qos: plan.scenario.publish.qos, retain: plan.scenario.publish.retain, telemetry: true)
    }

    func publishRequest(slot: Int, topic: String, payload: [UInt8]) -> Bool {
        // The controller always runs on libmosquitto.
        false
    }

    func abandon(slot: Int) {
        let client = clients[slot]
        switch client.state {
        case .connecting, .handshaking, .subscribing:
            fail(client, reason: "not ready when publishing started")
            core.ledger.counters.connectFailures += 1
            closeConnection(client)
        default:
            break
        }
    }

    func disconnectAll() {
        for client in clients where client.wsi != nil {
            if client.isMQTT && client.state == .ready { client.queueMQTT(MiniMQTT.disconnect) }
            if client.state != .failed { client.state = .closing }
            closeConnection(client)
        }
    }
}

/// The engine belongs to its service thread.
@available(*, unavailable)
extension WebSocketEngine: Sendable {}

/// The protocol callback libwebsockets calls for every connection event.
private func webSocketCallback(
    wsi: OpaquePointer?, reason: lws_callback_reasons, user: UnsafeMutableRawPointer?, input: UnsafeMutableRawPointer?, length: Int
) -> Int32 {
    guard let wsi, let opaque = lws_get_opaque_user_data(wsi), let context = lws_get_context(wsi), let enginePointer = lws_context_user(context) else {
        return 0
    }
    let client = Unmanaged<WebSocketClient>.fromOpaque(opaque).takeUnretainedValue()
    let engine = Unmanaged<WebSocketEngine>.fromOpaque(enginePointer).takeUnretainedValue()
    return engine.handle(client, wsi: wsi, reason: reason, input: input, length: length)
}

/// The scheduling timer: the engine pointer sits right after the `lws_sorted_usec_list_t`.
private func webSocketTimerFired(_ sul: UnsafeMutablePointer<lws_sorted_usec_list_t>?) {
    guard let sul else { return }
    let enginePointer = UnsafeMutableRawPointer(sul).load(fromByteOffset: MemoryLayout<lws_sorted_usec_list_t>.stride, as: UnsafeMutableRawPointer.self)
    Unmanaged<WebSocketEngine>.fromOpaque(enginePointer).takeUnretainedValue().timerFired()
}

/// JSON string quoting for topics and filters.
enum JSONText {
    static func quote(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20: result += String(format: "\\u%04x", scalar.value)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

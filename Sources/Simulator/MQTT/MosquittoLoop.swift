import CMosquitto
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// One event-loop thread driving many libmosquitto clients through the library's external-loop API.
///
/// Every client's socket sits in one epoll set; readiness calls `mosquitto_loop_read`/`mosquitto_loop_write`,
/// `mosquitto_loop_misc` runs for every client about once a second (keep-alive), and `mosquitto_want_write` decides
/// whether the socket is watched for writability. There is no thread per device and no `mosquitto_loop_start`.
///
/// All clients of a loop, and every libmosquitto call on them, stay on the loop's thread. That is why the library's
/// threaded mode is not enabled: it exists for clients touched from several threads.
final class MosquittoLoop: EngineTransport {
    private let plan: SimulationPlan
    private let control: RunControl
    private let logger: Logger
    private let core: EngineCore
    private var clients: [MosquittoClient] = []
    private let epollFD: Int32
    private var miscCursor = 0
    private var disconnectStarted: UInt64?

    /// Runs a loop on the calling thread until the run reaches the disconnecting phase and every client is closed.
    static func run(plan: SimulationPlan, control: RunControl, engineIndex: Int, slots: [Int], logger: Logger) -> EngineResult {
        let loop = MosquittoLoop(plan: plan, control: control, engineIndex: engineIndex, slots: slots, logger: logger)
        defer { loop.close() }
        loop.serve()
        return loop.core.ledger.result()
    }

    private init(plan: SimulationPlan, control: RunControl, engineIndex: Int, slots: [Int], logger: Logger) {
        self.plan = plan
        self.control = control
        self.logger = logger
        core = EngineCore(plan: plan, engineIndex: engineIndex, slots: slots)
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epollFD >= 0, "epoll_create1 failed: errno \(errno)")
        clients = slots.enumerated().map { slot, index in MosquittoClient(plan: plan.clients[index], slot: slot) }
        for client in clients { client.loop = self }
    }

    private func close() {
        for client in clients { client.destroy() }
        Glibc.close(epollFD)
    }

    // MARK: The loop

    private func serve() {
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        var lastPublish: UInt64 = 0
        var lastMisc: UInt64 = 0
        while true {
            var now = MonotonicClock.now()
            let phase = control.currentPhase
            let nextDue = core.tick(now: now, phase: phase, transport: self)
            if core.stage == .disconnecting {
                disconnectStarted = disconnectStarted ?? now
                // Stop once every socket is closed, or after a grace period for peers that never answer.
                if clients.allSatisfy({ $0.fd < 0 }) || now - disconnectStarted! > 3_000_000_000 { break }
            }
            // mosquitto_loop_misc handles keep-alive pings; once a second per client is what the header asks for.
            if now - lastMisc >= 100_000_000 {
                lastMisc = now
                runMiscSlice()
            }
            if now - lastPublish >= 50_000_000 {
                lastPublish = now
                control.publish(core.ledger.counters, engine: core.engineIndex)
            }
            now = MonotonicClock.now()
            let waitNanos = nextDue > now ? nextDue - now : 0
            // Round up so a publish due in 0.4 ms does not spin; cap so phase changes are seen within 10 ms.
            let timeout = Int32(Swift.min((waitNanos + 999_999) / 1_000_000, 10))
            let count = events.withUnsafeMutableBufferPointer { buffer in
                epoll_wait(epollFD, buffer.baseAddress, Int32(buffer.count), timeout)
            }
            if count < 0 {
                if errno == EINTR { continue }
                logger.error("epoll_wait failed", metadata: ["errno": "\(errno)"])
                break
            }
            for index in 0..<Int(count) {
                let event = events[index]
                let client = clients[Int(event.data.u64)]
                service(client, events: event.events)
            }
        }
        control.publish(core.ledger.counters, engine: core.engineIndex)
    }

    private func service(_ client: MosquittoClient, events: UInt32) {
        guard let mosq = client.mosq, client.fd >= 0 else { return }
        // A TLS handshake in progress is driven from mosquitto_loop_read, even when the socket became writable,
        // so read on every event; with nothing to read it costs one EAGAIN.
        let readRC = readAvailable(client, mosq)
        if readRC == MOSQ_ERR_SUCCESS.rawValue, client.fd >= 0, mosquitto_socket(mosq) >= 0, mosquitto_want_write(mosq) {
            _ = mosquitto_loop_write(mosq, 1)
        }
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0, mosquitto_socket(mosq) >= 0, readRC == MOSQ_ERR_SUCCESS.rawValue {
            // The peer is gone but the read did not notice yet; the next read will report it.
            _ = mosquitto_loop_read(mosq, 1)
        }
        syncInterest(client)
    }

    /// Most packets one readiness event reads before the loop looks at its other clients and its clock.
    static let packetsPerEvent = 64

    /// Reads the packets the socket holds, up to ``packetsPerEvent``; returns the last read's result.
    ///
    /// `mosquitto_loop_read` reads as many packets as the client has QoS 1/2 messages of its own in
    /// flight, at least one. A subscriber publishes nothing, so it read one packet per `epoll_wait`,
    /// and the loop's own round (clock, phase, another `epoll_wait`) cost as much as the message. The
    /// library reports that the socket ran dry by leaving `errno` at `EAGAIN` (its result is success
    /// then too), which is where this stops.
    private func readAvailable(_ client: MosquittoClient, _ mosq: OpaquePointer) -> Int32 {
        var rc = MOSQ_ERR_SUCCESS.rawValue
        for _ in 0..<Self.packetsPerEvent {
            errno = 0
            rc = mosquitto_loop_read(mosq, 1)
            if rc != MOSQ_ERR_SUCCESS.rawValue || errno == EAGAIN || errno == EWOULDBLOCK { break }
            // A callback may have closed or replaced the socket (disconnect, failure).
            if client.mosq == nil || mosquitto_socket(mosq) != client.fd { break }
        }
        return rc
    }

    private func runMiscSlice() {
        guard !clients.isEmpty else { return }
        let slice = Swift.max(1, clients.count / 10)
        for _ in 0..<slice {
            let client = clients[miscCursor]
            miscCursor = (miscCursor + 1) % clients.count
            if let mosq = client.mosq, client.fd >= 0 {
                _ = mosquitto_loop_misc(mosq)
                if mosquitto_want_write(mosq) { _ = mosquitto_loop_write(mosq, 1) }
                syncInterest(client)
            }
        }
    }

    /// Brings the epoll registration in line with the client's socket and libmosquitto's wish to write.
    func syncInterest(_ client: MosquittoClient) {
        guard let mosq = client.mosq else { return }
        let fd = mosquitto_socket(mosq)
        if fd != client.fd {
            // libmosquitto closed the old socket itself; closing removed it from the epoll set, so no EPOLL_CTL_DEL
            // (the number may already belong to another thread's new socket).
            client.fd = fd
            client.watchingWrites = false
            guard fd >= 0 else { return }
            let wantWrite = mosquitto_want_write(mosq)
            var event = epoll_event()
            event.events = EPOLLIN.rawValue | (wantWrite ? EPOLLOUT.rawValue : 0)
            event.data.u64 = UInt64(client.slot)
            if epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 {
                client.watchingWrites = wantWrite
            } else {
                logger.error("epoll_ctl ADD failed", metadata: ["errno": "\(errno)", "mqtt.client.id": "\(client.plan.clientID)"])
            }
            return
        }
        guard fd >= 0 else { return }
        let wantWrite = mosquitto_want_write(mosq)
        if wantWrite != client.watchingWrites {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue | (wantWrite ? EPOLLOUT.rawValue : 0)
            event.data.u64 = UInt64(client.slot)
            if epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) == 0 { client.watchingWrites = wantWrite }
        }
    }

    // MARK: Events from clients (called from libmosquitto callbacks on this thread)

    var phaseStage: EngineCore.Stage { core.stage }

    func clientBecameReady(_ client: MosquittoClient) {
        core.ledger.counters.ready += 1
        control.setReady(client.plan.index, true)
    }

    func clientFailed(_ client: MosquittoClient, reason: String) {
        core.ledger.counters.connectFailures += 1
        logger.debug("client failed", metadata: ["mqtt.client.id": "\(client.plan.clientID)", "reason": "\(reason)"])
    }

    func clientDropped(_ client: MosquittoClient, wasReady: Bool, rc: Int32) {
        if wasReady {
            core.ledger.counters.ready -= 1
            control.setReady(client.plan.index, false)
        }
        if core.stage == .disconnecting { return }
        if wasReady {
            core.ledger.counters.disconnects += 1
        } else {
            core.ledger.counters.connectFailures += 1
        }
        logger.debug("client disconnected", metadata: ["mqtt.client.id": "\(client.plan.clientID)", "rc": "\(rc)"])
    }

    func clientClosedCleanly(_ client: MosquittoClient) {
        core.ledger.counters.closed += 1
    }

    func acknowledged() { core.ledger.counters.acknowledged += 1 }

    func protocolError() { core.ledger.counters.protocolErrors += 1 }

    /// - Parameter topic: libmosquitto's C string, read only by a device (to tell a request from other
    ///   messages); a consumer's telemetry needs no Swift copy of it.
    func received(_ client: MosquittoClient, topic: UnsafePointer<CChar>?, payload: UnsafeRawBufferPointer, retained: Bool) {
        let now = MonotonicClock.now()
        switch client.plan.role {
        case .controller:
            if retained { core.ledger.counters.retainedIgnored += 1 } else { core.ledger.recordReply(payload: payload, now: now) }
        case .device where topic.map { String(cString: $0) } ?? "" == client.plan.commandTopic:
            // Answer a request: echo its payload on the reply topic.
            if !retained, let reply = client.plan.replyTopic, let mosq = client.mosq {
                let rc = mosquitto_publish(mosq, nil, reply, Int32(payload.count), payload.baseAddress, Int32(plan.scenario.requests.qos), false)
                if rc != MOSQ_ERR_SUCCESS.rawValue { core.ledger.counters.publishErrors += 1 }
            } else if retained {
                core.ledger.counters.retainedIgnored += 1
            }
        default:
            core.ledger.recordTelemetry(receiver: client.plan.index, payload: payload, retained: retained, now: now)
        }
    }

    // MARK: EngineTransport

    func startConnect(slot: Int, now: UInt64) {
        let client = clients[slot]
        if let failure = client.connect(target: plan.target, scenario: plan.scenario) {
            clientFailed(client, reason: failure)
        }
        syncInterest(client)
    }

    func isReady(slot: Int) -> Bool { clients[slot].state == .ready }

    func unacknowledged(slot: Int) -> Int { clients[slot].awaitingAcknowledgement.count }

    /// libmosquitto writes a publish at once when the socket takes it, so anything still queued means the
    /// socket's send buffer is full.
    func isWriteBlocked(slot: Int) -> Bool {
        guard let mosq = clients[slot].mosq else { return false }
        return mosquitto_want_write(mosq)
    }

    func publishTelemetry(slot: Int, topic: String, payload: [UInt8]) -> Bool {
        let client = clients[slot]
        guard client.state == .ready else { return false }
        let rc = client.publish(topic: topic, payload: payload, qos: plan.scenario.publish.qos, retain: plan.scenario.publish.retain)
        syncInterest(client)
        return rc == MOSQ_ERR_SUCCESS.rawValue
    }

    func publishRequest(slot: Int, topic: String, payload: [UInt8]) -> Bool {
        let client = clients[slot]
        guard client.state == .ready, let mosq = client.mosq else { return false }
        let rc = payload.withUnsafeBytes { bytes in
            mosquitto_publish(mosq, nil, topic, Int32(bytes.count), bytes.baseAddress, Int32(plan.scenario.requests.qos), false)
        }
        syncInterest(client)
        return rc == MOSQ_ERR_SUCCESS.rawValue
    }

    func abandon(slot: Int) {
        let client = clients[slot]
        guard client.mosq != nil else { return }
        if client.state == .connecting || client.state == .subscribing { core.ledger.counters.connectFailures += 1 }
        client.state = .failed
        client.destroy()
    }

    func disconnectAll() {
        for client in clients {
            client.disconnect(version: plan.scenario.protocolVersion)
            syncInterest(client)
        }
    }
}

/// Only this file's loop thread ever touches a loop.
@available(*, unavailable)
extension MosquittoLoop: Sendable {}

/// What a transport engine (libmosquitto or libwebsockets) provides to the shared phase logic in ``EngineCore``.
/// Every method runs on the engine's own thread.
protocol EngineTransport: AnyObject {
    /// Starts connecting the client in local `slot`.
    func startConnect(slot: Int, now: UInt64)
    /// Whether the client in `slot` is connected and its subscriptions are confirmed.
    func isReady(slot: Int) -> Bool
    /// Telemetry messages from `slot` the broker has not acknowledged yet (QoS 1/2).
    func unacknowledged(slot: Int) -> Int
    /// Whether `slot` has data waiting for its socket to take it (the broker is not reading fast enough).
    func isWriteBlocked(slot: Int) -> Bool
    /// Publishes one telemetry payload from `slot`; returns whether the client library accepted it.
    func publishTelemetry(slot: Int, topic: String, payload: [UInt8]) -> Bool
    /// Publishes a request from the controller in `slot` to `topic`; returns whether it was accepted.
    func publishRequest(slot: Int, topic: String, payload: [UInt8]) -> Bool
    /// Gives up on a client that was not ready when publishing started: closes it without counting it as a drop.
    func abandon(slot: Int)
    /// Starts a clean disconnect of every client.
    func disconnectAll()
}

/// Phase handling and scheduling shared by the engines: who connects when, who publishes when, which request goes
/// where. It owns the thread's ``Ledger``.
///
/// A class rather than a struct because the transport calls back into it (to count events in the ledger) while
/// ``tick(now:phase:transport:)`` runs; a mutating struct method would hold exclusive access to all of it.
/// Owned by one engine thread.
final class EngineCore {
    let plan: SimulationPlan
    let engineIndex: Int
    /// local slot → client index.
    let slots: [Int]
    var ledger: Ledger
    var fanout: [Int] = []
    /// The current publish order, once publishing started.
    private(set) var order: PublishOrder?
    private(set) var stage = Stage.connecting

    enum Stage: Equatable { case connecting, publishing, draining, disconnecting }

    private var connectOrder: [Int]
    /// `publish.window`; 0 when there is none.
    private let window: Int
    private let qos: Int
    private var connectCursor = 0
    private var publisherSlots: [Int] = []
    private var publisherOffsets: [UInt64] = []
    private var publishCursor = 0
    private var publishRound: UInt64 = 0
    private var sequences: [UInt64]
    private var controllerSlot: Int?
    private var requestsSent: UInt64 = 0
    private var payload: [UInt8] = []
    private var lastPublished: UInt64 = 0

    init(plan: SimulationPlan, engineIndex: Int, slots: [Int]) {
        window = plan.scenario.publish.window
        qos = plan.scenario.publish.qos
        self.plan = plan
        self.engineIndex = engineIndex
        self.slots = slots
        ledger = Ledger(plan: plan)
        connectOrder = slots.indices.sorted { plan.clients[slots[$0]].connectOffset < plan.clients[slots[$1]].connectOffset }
        sequences = Array(repeating: 0, count: slots.count)
        controllerSlot = slots.firstIndex { plan.clients[$0].role == .controller }
        // Publishers on this thread in rank order; rank k of P fires at k/P of the interval, spreading load evenly.
        if let interval = plan.publishInterval {
            publisherSlots = slots.indices.filter { plan.clients[slots[$0]].telemetryTopic != nil }
                .sorted { plan.clients[slots[$0]].publisherRank < plan.clients[slots[$1]].publisherRank }
            publisherOffsets = publisherSlots.map { slot in
                UInt64(plan.clients[slots[slot]].publisherRank) * interval / UInt64(Swift.max(plan.publisherCount, 1))
            }
        }
    }

    /// Runs whatever is due at `now` and returns when the next scheduled action is due (monotonic ns).
    func tick(now: UInt64, phase: RunPhase, transport: some EngineTransport) -> UInt64 {
        var nextDue = now + 10_000_000
        switch phase {
        case .connecting(let start):
            while connectCursor < connectOrder.count {
                let slot = connectOrder[connectCursor]
                let due = start + plan.clients[slots[slot]].connectOffset
                guard due <= now else {
                    nextDue = Swift.min(nextDue, due)
                    break
                }
                ledger.counters.connectAttempts += 1
                transport.startConnect(slot: slot, now: now)
                connectCursor += 1
            }
        case .publishing(let order):
            if stage == .connecting {
                stage = .publishing
                self.order = order
                fanout = order.fanout
                for (slot, client) in slots.enumerated() where !order.ready[client] {
                    transport.abandon(slot: slot)
                }
            }
            if now < order.start { return order.start }
            nextDue = Swift.min(nextDue, publishDue(now: now, order: order, transport: transport))
            nextDue = Swift.min(nextDue, requestsDue(now: now, order: order, transport: transport))
        case .draining:
            stage = .draining
            ledger.counters.publishingOver = 1
        case .disconnecting:
            if stage != .disconnecting {
                stage = .disconnecting
                transport.disconnectAll()
            }
        }
        return nextDue
    }

    private func publishDue(now: UInt64, order: PublishOrder, transport: some EngineTransport) -> UInt64 {
        guard let interval = plan.publishInterval, !publisherSlots.isEmpty else { return UInt64.max }
        while true {
            let due = order.start + publisherOffsets[publishCursor] + publishRound * interval
            if due >= order.end { return UInt64.max }
            if due > now { return due }
            let slot = publisherSlots[publishCursor]
            let client = plan.clients[slots[slot]]
            if order.ready[client.index] {
                if window > 0 && holdsBack(slot: slot, transport: transport) {
                    ledger.counters.heldBack += 1
                } else {
                    publishTelemetry(slot: slot, client: client, transport: transport)
                }
            }
            publishCursor += 1
            if publishCursor == publisherSlots.count {
                publishCursor = 0
                publishRound += 1
            }
        }
    }

    /// Sends the next telemetry probe of the device in `slot`.
    private func publishTelemetry(slot: Int, client: ClientPlan, transport: some EngineTransport) {
        let probe = Probe(publisher: client.index, sequence: sequences[slot], timestamp: MonotonicClock.now())
        if let template = plan.template {
            template.render(probe, deviceID: client.deviceID, into: &payload)
        } else if case .size(let size) = plan.scenario.publish.payload {
            ProbeCodec.encodeSized(probe, size: size, into: &payload)
        }
        if transport.publishTelemetry(slot: slot, topic: client.telemetryTopic!, payload: payload) {
            sequences[slot] += 1
            ledger.recordSent(publisher: client.index, fanout: fanout[client.index])
        } else {
            ledger.counters.publishErrors += 1
        }
    }

    /// Whether the device in `slot` must not publish now: at QoS 1/2 its window of unacknowledged messages is
    /// full; at QoS 0 the broker is not reading fast enough (TCP pushes back, so the client library holds unsent
    /// data).
    private func holdsBack(slot: Int, transport: some EngineTransport) -> Bool {
        qos > 0 ? transport.unacknowledged(slot: slot) >= window : transport.isWriteBlocked(slot: slot)
    }

    private func requestsDue(now: UInt64, order: PublishOrder, transport: some EngineTransport) -> UInt64 {
        guard let controllerSlot, let interval = plan.requestInterval, !order.responders.isEmpty, order.ready[slots[controllerSlot]] else {
            return UInt64.max
        }
        while true {
            let due = order.start + requestsSent * interval
            if due >= order.end { return UInt64.max }
            if due > now { return due }
            let device = plan.clients[order.responders[Int(requestsSent % UInt64(order.responders.count))]]
            ProbeCodec.encodeRequest(id: requestsSent, timestamp: MonotonicClock.now(), into: &payload)
            if transport.publishRequest(slot: controllerSlot, topic: device.commandTopic!, payload: payload) {
                ledger.counters.requestsSent += 1
            } else {
                ledger.counters.publishErrors += 1
            }
            requestsSent += 1
        }
    }
}

/// Owned by one engine thread.
@available(*, unavailable)
extension EngineCore: Sendable {}

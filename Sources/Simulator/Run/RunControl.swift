import Dispatch
import Synchronization

/// The phase of a run, set by the orchestrator and read by every engine thread on each loop turn.
enum RunPhase: Sendable {
    /// Clients connect at their planned offsets after `start` (monotonic ns).
    case connecting(start: UInt64)
    /// Publishers publish from `start` to `end`; ``PublishOrder`` says who counts as a receiver.
    case publishing(PublishOrder)
    /// Publishing has stopped; clients stay connected to receive what is still in flight.
    case draining
    /// Clients disconnect cleanly and engines stop.
    case disconnecting
}

/// What the orchestrator fixes when publishing starts.
struct PublishOrder: Sendable {
    /// Monotonic ns when publishing starts and stops.
    var start: UInt64
    var end: UInt64
    /// For each client index, how many ready receivers its telemetry should reach (0 for non-publishers).
    var fanout: [Int]
    /// Client indices of devices ready to answer requests.
    var responders: [Int]
    /// Which clients were ready when publishing started; the others are given up on.
    var ready: [Bool]
}

/// Counters an engine thread publishes for progress lines and for the orchestrator's wait conditions.
struct LiveCounters: Sendable, Equatable {
    var connectAttempts = 0
    var ready = 0
    var connectFailures = 0
    var disconnects = 0
    var closed = 0
    var published: UInt64 = 0
    var acknowledged: UInt64 = 0
    var publishErrors: UInt64 = 0
    /// Messages not sent because their device was held back (``Scenario/Publish/window``).
    var heldBack: UInt64 = 0
    /// Sum of the fanout of every published message: deliveries the receivers should see.
    var expected: UInt64 = 0
    var delivered: UInt64 = 0
    var duplicates: UInt64 = 0
    var unexpected: UInt64 = 0
    var retainedIgnored: UInt64 = 0
    var requestsSent: UInt64 = 0
    var repliesReceived: UInt64 = 0
    var protocolErrors: UInt64 = 0
    /// 1 once the engine has left the publishing phase (summed: how many engines have). Until every engine
    /// has, the totals' `published` and `expected` may lag by one publishing interval of an engine.
    var publishingOver = 0

    init() {}

    /// Adds another thread's counters.
    mutating func add(_ other: LiveCounters) {
        connectAttempts += other.connectAttempts
        ready += other.ready
        connectFailures += other.connectFailures
        disconnects += other.disconnects
        closed += other.closed
        published += other.published
        acknowledged += other.acknowledged
        publishErrors += other.publishErrors
        heldBack += other.heldBack
        expected += other.expected
        delivered += other.delivered
        duplicates += other.duplicates
        unexpected += other.unexpected
        retainedIgnored += other.retainedIgnored
        requestsSent += other.requestsSent
        repliesReceived += other.repliesReceived
        protocolErrors += other.protocolErrors
        publishingOver += other.publishingOver
    }

    /// Errors worth showing on a progress line.
    var errors: UInt64 {
        UInt64(connectFailures + disconnects) + publishErrors + protocolErrors
    }
}

/// The channel between the orchestrator (async code) and the engine threads: the phase going one way,
/// counters and a finished flag per engine coming back. Everything is behind `Mutex`es, so it is `Sendable`.
final class RunControl: Sendable {
    /// The phase, and the engine threads blocked in ``waitForDisconnecting()``.
    private struct PhaseState {
        var phase: RunPhase
        var disconnectWaiters: [DispatchSemaphore] = []
    }

    private let phase: Mutex<PhaseState>
    private let slots: Mutex<[LiveCounters]>
    private let ready: Mutex<[Bool]>

    init(engines: Int, clients: Int) {
        phase = Mutex(PhaseState(phase: .connecting(start: MonotonicClock.now())))
        slots = Mutex(Array(repeating: LiveCounters(), count: engines))
        ready = Mutex(Array(repeating: false, count: clients))
    }

    /// Records that a client became ready (connected and subscribed) or stopped being ready.
    /// Called once per connection event, not per message, so the lock is cold.
    func setReady(_ client: Int, _ isReady: Bool) { ready.withLock { $0[client] = isReady } }

    /// Which clients are ready now, by client index.
    var readiness: [Bool] { ready.withLock { $0 } }

    var currentPhase: RunPhase { phase.withLock { $0.phase } }

    func setPhase(_ newPhase: RunPhase) {
        let waiters = phase.withLock { state in
            state.phase = newPhase
            guard case .disconnecting = newPhase else { return [DispatchSemaphore]() }
            defer { state.disconnectWaiters.removeAll() }
            return state.disconnectWaiters
        }
        for waiter in waiters { waiter.signal() }
    }

    /// Blocks the calling engine thread (never an event loop or a cooperative thread) until the
    /// orchestrator enters `.disconnecting`.
    func waitForDisconnecting() {
        let waiter = phase.withLock { state -> DispatchSemaphore? in
            if case .disconnecting = state.phase { return nil }
            let waiter = DispatchSemaphore(value: 0)
            state.disconnectWaiters.append(waiter)
            return waiter
        }
        waiter?.wait()
    }

    func publish(_ counters: LiveCounters, engine: Int) { slots.withLock { $0[engine] = counters } }

    /// The sum over all engines.
    var totals: LiveCounters {
        slots.withLock { slots in
            var total = LiveCounters()
            for slot in slots { total.add(slot) }
            return total
        }
    }
}

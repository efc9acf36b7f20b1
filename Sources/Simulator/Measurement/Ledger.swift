import Histogram

/// The measurements one engine thread makes: counters, latency histograms, sends per publisher and one
/// ``SequenceTracker`` per (receiver, publisher) stream. Owned by its thread; handed to the orchestrator
/// as an ``EngineResult`` once the thread has finished.
struct Ledger {
    var counters = LiveCounters()
    /// One-way publish-to-delivery latency in nanoseconds.
    var latency = Ledger.makeHistogram()
    /// Request round-trip time in nanoseconds.
    var roundTrips = Ledger.makeHistogram()
    /// receiver index → publisher index → tracker.
    var streams: [Int: [Int: SequenceTracker]] = [:]
    /// publisher index → messages accepted for sending.
    var sent: [Int: UInt64] = [:]
    /// When the last new telemetry message arrived (monotonic ns), 0 before the first.
    var lastDelivery: UInt64 = 0
    /// Request ids answered so far, so a duplicated reply is not counted twice.
    private var replies = SequenceTracker()
    private let maximumSequence: UInt64
    private let clientCount: Int

    init(plan: SimulationPlan) {
        maximumSequence = plan.maximumSequence
        clientCount = plan.clients.count
    }

    /// A histogram from 1 µs to 1 hour at three significant digits: about 150 KB, precise enough for p99.9.
    static func makeHistogram() -> Histogram<UInt64> {
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1_000, highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .three)
        histogram.autoResize = true
        return histogram
    }

    /// Counts one telemetry message accepted for sending and the deliveries it should cause.
    mutating func recordSent(publisher: Int, fanout: Int) {
        sent[publisher, default: 0] += 1
        counters.published += 1
        counters.expected += UInt64(fanout)
    }

    /// Counts one telemetry delivery to `receiver`.
    /// - Parameters:
    ///   - retained: the broker marked it retained; such messages predate the subscription (maybe a previous run) and are ignored.
    mutating func recordTelemetry(receiver: Int, payload: UnsafeRawBufferPointer, retained: Bool, now: UInt64) {
        if retained {
            counters.retainedIgnored += 1
            return
        }
        guard let probe = ProbeCodec.decode(payload), probe.publisher < clientCount, probe.sequence <= maximumSequence else {
            counters.unexpected += 1
            return
        }
        recordProbe(probe, receiver: receiver, now: now)
    }

    /// Counts one decoded probe delivered to `receiver`.
    mutating func recordProbe(_ probe: Probe, receiver: Int, now: UInt64) {
        guard probe.publisher >= 0, probe.publisher < clientCount, probe.sequence <= maximumSequence else {
            counters.unexpected += 1
            return
        }
        let isNew = streams[receiver, default: [:]][probe.publisher, default: SequenceTracker()].record(probe.sequence)
        if isNew {
            counters.delivered += 1
            lastDelivery = now
            _ = latency.record(now >= probe.timestamp ? now - probe.timestamp : 0)
        } else {
            counters.duplicates += 1
        }
    }

    /// Counts one reply arriving at the controller.
    mutating func recordReply(payload: UnsafeRawBufferPointer, now: UInt64) {
        guard let request = ProbeCodec.decodeRequest(payload), request.id <= maximumSequence else {
            counters.unexpected += 1
            return
        }
        guard replies.record(request.id) else {
            counters.duplicates += 1
            return
        }
        counters.repliesReceived += 1
        _ = roundTrips.record(now >= request.timestamp ? now - request.timestamp : 0)
    }

    /// Freezes the ledger for the orchestrator.
    func result() -> EngineResult {
        EngineResult(counters: counters, latency: latency, roundTrips: roundTrips, streams: streams, sent: sent, lastDelivery: lastDelivery)
    }
}

/// What an engine thread measured, handed over when it finishes.
struct EngineResult: Sendable {
    var counters: LiveCounters
    var latency: Histogram<UInt64>
    var roundTrips: Histogram<UInt64>
    var streams: [Int: [Int: SequenceTracker]]
    var sent: [Int: UInt64]
    var lastDelivery: UInt64
}

import Foundation

/// Live figures of a running simulation, passed to the progress callback of ``Simulation/run(progress:)``.
public struct SimulationProgress: Sendable, Equatable {
    /// `connecting`, `publishing`, `draining` or `disconnecting`.
    public var phase: String
    /// Seconds since the run started.
    public var elapsed: Double
    /// Clients connected and subscribed.
    public var connected: Int
    /// Telemetry messages published so far.
    public var published: UInt64
    /// Distinct telemetry deliveries so far.
    public var delivered: UInt64
    /// Published messages per second since the previous report.
    public var publishRate: Double
    /// Deliveries per second since the previous report.
    public var deliveryRate: Double
    /// Connection failures, drops, refused publishes and protocol errors so far.
    public var errors: UInt64

    /// One line for a terminal or a log.
    public var line: String {
        "[\(String(format: "%6.1f", elapsed))s] \(phase.padding(toLength: 13, withPad: " ", startingAt: 0)) connected \(connected)  "
            + "sent \(published) (\(Int(publishRate.rounded()))/s)  received \(delivered) (\(Int(deliveryRate.rounded()))/s)  errors \(errors)"
    }
}

/// Waits for the orchestrator's conditions while calling the progress callback at its interval.
struct ProgressMonitor {
    let control: RunControl
    let interval: UInt64
    let callback: (@Sendable (SimulationProgress) -> Void)?
    let start: UInt64
    private var lastReport: UInt64
    private var lastPublished: UInt64 = 0
    private var lastDelivered: UInt64 = 0

    init(control: RunControl, interval: Duration, callback: (@Sendable (SimulationProgress) -> Void)?, start: UInt64) {
        self.control = control
        self.interval = UInt64(Swift.max(interval.nanoseconds, 10_000_000))
        self.callback = callback
        self.start = start
        lastReport = start
    }

    /// Polls every 10 ms until `done` holds, reporting progress on the way.
    mutating func wait(phase: String, until done: (LiveCounters, UInt64) -> Bool) async {
        while true {
            let now = MonotonicClock.now()
            let counters = control.totals
            if now - lastReport >= interval, let callback {
                let seconds = Double(now - lastReport) / 1e9
                callback(SimulationProgress(
                    phase: phase, elapsed: Double(now - start) / 1e9, connected: counters.ready,
                    published: counters.published, delivered: counters.delivered,
                    publishRate: Double(counters.published &- lastPublished) / seconds,
                    deliveryRate: Double(counters.delivered &- lastDelivered) / seconds,
                    errors: counters.errors
                ))
                lastReport = now
                lastPublished = counters.published
                lastDelivered = counters.delivered
            }
            if done(counters, now) { return }
            // A cancelled run skips ahead to disconnecting, which still waits for the engines to close their clients.
            if Task.isCancelled && phase != "disconnecting" { return }
            // Once cancelled, Task.sleep returns at once; a detached sleep is not cancelled and keeps
            // this loop from spinning (or blocking a cooperative thread) while the engines close.
            await Task.detached { try? await Task.sleep(for: .milliseconds(10)) }.value
        }
    }
}

import Metrics
import NIOCore
import NIOSSL
import NIOTLS
import Synchronization

/// The bound on TLS handshakes in progress (`tls.max_concurrent_handshakes`), shared by the `mqtts` and
/// `wss` listeners. A handshake costs public-key operations; without a bound a flood of them takes the
/// CPU that established clients need.
final class TLSHandshakeLimiter: Sendable {
    let limit: Int
    let timeout: TimeAmount
    private let inProgress = Atomic<Int>(0)

    /// Made on first use, not with the limiter: the TLS context is built while the configuration is
    /// checked, before the metrics backend is bootstrapped.
    private struct Metrics: Sendable {
        let refused = Counter(label: "iotgw_tls_handshakes_refused_total")
        let timedOut = Counter(label: "iotgw_tls_handshake_timeouts_total")
        let inProgress = Gauge(label: "iotgw_tls_handshakes_in_progress")
    }
    private static let metrics = Metrics()
    private var refused: Counter { Self.metrics.refused }
    private var timedOut: Counter { Self.metrics.timedOut }
    private var gauge: Gauge { Self.metrics.inProgress }

    init(limit: Int, timeout: TimeAmount) {
        self.limit = limit
        self.timeout = timeout
    }

    /// Takes a slot; false (counted) when `limit` handshakes are already in progress.
    func enter() -> Bool {
        var current = inProgress.load(ordering: .relaxed)
        while true {
            guard current < limit else {
                refused.increment()
                return false
            }
            let (exchanged, original) = inProgress.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged {
                gauge.record(current + 1)
                return true
            }
            current = original
        }
    }

    func leave() {
        gauge.record(inProgress.subtract(1, ordering: .relaxed).newValue)
    }

    func timedOutOne() { timedOut.increment() }

    /// Handshakes in progress now.
    var current: Int { inProgress.load(ordering: .relaxed) }
}

/// Follows one connection's TLS handshake: takes a slot of the ``TLSHandshakeLimiter`` when the
/// connection becomes active (closing it at once when none is free), closes it when the handshake has not
/// completed within `tls.handshake_timeout`, and gives the slot back — then leaves the pipeline — when the
/// handshake completes or the connection ends. Placed right after `NIOSSLServerHandler`.
final class TLSHandshakeGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let limiter: TLSHandshakeLimiter
    private var holding = false
    private var finished = false
    private var deadline: Scheduled<Void>?

    init(limiter: TLSHandshakeLimiter) {
        self.limiter = limiter
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !holding && !finished else { return }
        guard limiter.enter() else {
            finished = true
            context.close(promise: nil)
            return
        }
        holding = true
        let limiter = self.limiter
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: limiter.timeout) {
            limiter.timedOutOne()
            loopBound.value.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            finish()
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish()
    }

    private func finish() {
        deadline?.cancel()
        deadline = nil
        if holding {
            holding = false
            limiter.leave()
        }
        finished = true
    }
}

@available(*, unavailable)
extension TLSHandshakeGuard: Sendable {}

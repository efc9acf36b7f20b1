import NIOCore

/// Closes connections that go quiet: before CONNECT after the connect timeout, afterwards after 1.5 ×
/// the negotiated keep alive (MQTT-3.1.2-24).
///
/// One timer per connection, re-armed only when it fires (at the last read + timeout), so a busy
/// connection costs a timestamp per read and an idle one a single scheduled task.
final class KeepAliveHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Sent down the pipeline (`triggerUserOutboundEvent`) once CONNECT was accepted.
    struct SetKeepAlive: Sendable {
        /// The keep alive in seconds; 0 turns the timer off.
        var seconds: Int
    }

    /// Fired through the pipeline when the keep alive expires, so the connection task can tell an MQTT 5
    /// client why (0x8D) before closing.
    struct KeepAliveExpired: Error {}

    private var timeout: TimeAmount
    private var connected = false
    private var lastRead = NIODeadline.now()
    private var timer: Scheduled<Void>?

    /// - Parameter connectTimeout: how long a socket may stay open without sending CONNECT.
    init(connectTimeout: TimeAmount) {
        self.timeout = connectTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = .now()
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let event = event as? SetKeepAlive else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        connected = true
        timer?.cancel()
        timer = nil
        if event.seconds > 0 {
            // 1.5 × keep alive, in milliseconds to keep the half second.
            timeout = .milliseconds(Int64(event.seconds) * 1500)
            lastRead = .now()
            arm(context: context)
        }
        promise?.succeed()
    }

    private func arm(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        schedule(context: context, at: lastRead + timeout)
    }

    private func schedule(context: ChannelHandlerContext, at deadline: NIODeadline) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            handler.value.fire(context: loopBound.value)
        }
    }

    private func fire(context: ChannelHandlerContext) {
        timer = nil
        let due = lastRead + timeout
        if due > .now() {
            schedule(context: context, at: due)
            return
        }
        if connected {
            context.fireErrorCaught(KeepAliveExpired())
        } else {
            // No CONNECT in time: there is no session and nobody to tell.
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension KeepAliveHandler: Sendable {}

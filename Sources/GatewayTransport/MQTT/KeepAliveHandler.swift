import NIOCore

/// Closes connections that go quiet: before CONNECT after the connect timeout, afterwards after 1.5 ×
/// the negotiated keep alive (MQTT-3.1.2-24). It also holds the connection's reads while back-pressure
/// pauses the publisher (``SetReadPaused``): a paused client is not read, so it is not counted as quiet.
///
/// The deadline is filed in its event loop's ``KeepAliveWheel`` and re-filed only when it comes due
/// (at the last read + timeout), so a busy connection costs a timestamp per read and an idle one an
/// entry in a bucket, removed in O(1) when the connection closes.
final class KeepAliveHandler: ChannelDuplexHandler, RemovableChannelHandler, WheelDeadline {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Sent down the pipeline (`triggerUserOutboundEvent`) once CONNECT was accepted.
    struct SetKeepAlive: Sendable {
        /// The keep alive in seconds; 0 turns the timer off.
        var seconds: Int
    }

    /// Sent down the pipeline by ``ChannelConnectionHandle/setReadPaused(_:)``: stop or resume reading
    /// from the socket (back-pressure on a publisher, ``ReadThrottle``).
    struct SetReadPaused: Sendable {
        var paused: Bool
    }

    /// Fired through the pipeline when the keep alive expires, so the connection task can tell an MQTT 5
    /// client why (0x8D) before closing.
    struct KeepAliveExpired: Error {}

    private var timeout: TimeAmount
    private var connected = false
    private var lastRead = NIODeadline.now()
    /// The wheel bucket this connection's deadline is filed in, while filed.
    private var filed: (wheel: KeepAliveWheel, bucket: Int64)?
    /// Reading is paused by back-pressure; `heldRead` records a read asked for meanwhile.
    private var readPaused = false
    private var heldRead = false

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
        unfile()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        unfile()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = .now()
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        // Not reading while the socket is not writable either: a client that sends without reading
        // would otherwise pile up our answers (PUBACKs, PINGRESPs) in NIO's write buffer.
        if readPaused || !context.channel.isWritable {
            heldRead = true
        } else {
            context.read()
        }
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let pause = event as? SetReadPaused {
            setReadPaused(pause.paused, context: context)
            promise?.succeed()
            return
        }
        guard let event = event as? SetKeepAlive else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        connected = true
        unfile()
        if event.seconds > 0 {
            // 1.5 × keep alive, in milliseconds to keep the half second.
            timeout = .milliseconds(Int64(event.seconds) * 1500)
            lastRead = .now()
            arm(context: context)
        }
        promise?.succeed()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        releaseHeldRead(context: context)
        context.fireChannelWritabilityChanged()
    }

    private func setReadPaused(_ paused: Bool, context: ChannelHandlerContext) {
        guard paused != readPaused else { return }
        readPaused = paused
        if !paused {
            // The client was silent because we did not read it: its keep alive starts afresh.
            lastRead = .now()
            releaseHeldRead(context: context)
        }
    }

    private func releaseHeldRead(context: ChannelHandlerContext) {
        guard heldRead, !readPaused, context.channel.isWritable else { return }
        heldRead = false
        context.read()
    }

    private func arm(context: ChannelHandlerContext) {
        guard filed == nil else { return }
        file(context: context, at: lastRead + timeout)
    }

    private func file(context: ChannelHandlerContext, at deadline: NIODeadline) {
        let wheel = KeepAliveWheel.of(context.eventLoop)
        filed = (wheel, wheel.insert(self, context: context, deadline: deadline))
    }

    private func unfile() {
        guard let filed else { return }
        filed.wheel.remove(self, bucket: filed.bucket)
        self.filed = nil
    }

    /// Called by the wheel when the filed deadline's bucket is due (the wheel has dropped the entry).
    func deadlineReached(context: ChannelHandlerContext) {
        filed = nil
        let due = readPaused ? NIODeadline.now() + timeout : lastRead + timeout
        if due > .now() {
            file(context: context, at: due)
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

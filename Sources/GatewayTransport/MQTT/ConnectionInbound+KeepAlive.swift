import NIOCore

/// Closes connections that go quiet: before CONNECT after the connect timeout, afterwards after 1.5 ×
/// the negotiated keep alive (MQTT-3.1.2-24). It also holds the connection's reads while back-pressure
/// pauses the publisher (``SetReadPaused``): a paused client is not read, so it is not counted as quiet.
///
/// Part of ``ConnectionInbound`` rather than a handler of its own: a second handler and its pipeline
/// context cost every connection about 150 bytes.
///
/// The deadline is filed in its event loop's ``KeepAliveWheel`` and re-filed only when it comes due
/// (at the last read + timeout), so a busy connection costs a timestamp per read and an idle one an
/// entry in a bucket, removed in O(1) when the connection closes.
extension ConnectionInbound: WheelDeadline {
    /// Sent down the pipeline (`triggerUserOutboundEvent`) once CONNECT was accepted.
    struct SetKeepAlive: Sendable {
        /// The keep alive in seconds; 0 turns the timer off.
        var seconds: Int
    }

    /// Sent down the pipeline by ``ChannelConnectionHandle/setReadPaused(_:)``: stop or resume reading
    /// from the socket (back-pressure on a publisher, `ReadThrottle`).
    struct SetReadPaused: Sendable {
        var paused: Bool
    }

    /// Ends the connection's input when the keep alive expires, so the connection task can tell an MQTT 5
    /// client why (0x8D) before closing.
    struct KeepAliveExpired: Error {}

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let pause = event as? SetReadPaused {
            setReadPaused(pause.paused)
            promise?.succeed()
            return
        }
        guard let event = event as? SetKeepAlive else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        keepAliveConnected = true
        unfileKeepAlive()
        if event.seconds > 0 {
            // 1.5 × keep alive, in milliseconds to keep the half second.
            keepAliveTimeout = .milliseconds(Int64(event.seconds) * 1500)
            lastRead = eventLoop.now
            armKeepAlive(context: context)
        }
        promise?.succeed()
    }

    private func setReadPaused(_ paused: Bool) {
        guard paused != readPaused else { return }
        readPaused = paused
        if !paused {
            // The client was silent because we did not read it: its keep alive starts afresh.
            lastRead = eventLoop.now
            releaseHeldRead()
        }
    }

    func armKeepAlive(context: ChannelHandlerContext) {
        guard keepAliveBucket == nil else { return }
        fileKeepAlive(context: context, at: lastRead + keepAliveTimeout)
    }

    private func fileKeepAlive(context: ChannelHandlerContext, at deadline: NIODeadline) {
        keepAliveBucket = KeepAliveWheel.of(context.eventLoop).insert(self, context: context, deadline: deadline)
    }

    func unfileKeepAlive() {
        guard let bucket = keepAliveBucket else { return }
        keepAliveBucket = nil
        // The wheel leaves its loop's registry only when empty, so while this entry is filed `of`
        // returns the wheel it is in.
        KeepAliveWheel.of(eventLoop).remove(self, bucket: bucket)
    }

    /// Called by the wheel when the filed deadline's bucket is due (the wheel has dropped the entry).
    func deadlineReached(context: ChannelHandlerContext) {
        keepAliveBucket = nil
        let due = readPaused ? eventLoop.now + keepAliveTimeout : lastRead + keepAliveTimeout
        if due > eventLoop.now {
            fileKeepAlive(context: context, at: due)
            return
        }
        if keepAliveConnected {
            fail(KeepAliveExpired())
        } else {
            // No CONNECT in time: there is no session and nobody to tell.
            context.close(promise: nil)
        }
    }
}

import GatewayCore
import NIOCore
import NIOWebSocket

/// The WebSocket layer of an upgraded connection: turns frames into data for the handlers above it and
/// data from them into frames, and performs what ``WebSocketStateMachine`` decides (pong, ping, the close
/// handshake, failing the connection with a close code).
///
/// Above it the pipeline sees plain `ByteBuffer`s both ways: for MQTT over WebSocket the binary byte
/// stream that feeds the same packet decoder (`ConnectionInbound`) as TCP, for the JSON API whole text
/// messages. Closing the channel from above (the connection task ending, or ``ChannelConnectionHandle``)
/// starts the close handshake instead of dropping the socket: a close frame (1000, or the code a preceding
/// ``CloseRequest`` asked for: 1001 on shutdown), then the TCP close once the peer answers or after
/// ``closeTimeout``.
///
/// With permessage-deflate negotiated, messages from above of at least the compression threshold go out
/// compressed (RSV1 set); control frames never are.
final class WebSocketProtocolHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    /// Sent down the pipeline (`triggerUserOutboundEvent`) before closing, to choose the close code.
    struct CloseRequest: Sendable {
        var code: WebSocketErrorCode
        var reason: String

        init(code: WebSocketErrorCode, reason: String = "") {
            self.code = code
            self.reason = reason
        }

        /// The close code that goes with a server-side disconnect reason.
        init(_ reason: ServerDisconnectReason) {
            switch reason {
            case .serverShuttingDown: self.init(code: .goingAway, reason: "server shutting down")
            case .sessionTakenOver: self.init(code: .policyViolation, reason: "session taken over")
            case .quotaExceeded: self.init(code: .policyViolation, reason: "slow consumer: queue full")
            case .administrativeAction: self.init(code: .policyViolation, reason: "administrative action")
            case .keepAliveTimeout: self.init(code: .policyViolation, reason: "keep alive timeout")
            }
        }
    }

    /// How long to wait for the peer's close frame after sending ours.
    static let closeTimeout = TimeAmount.seconds(2)
    /// Set once the connection has been failed with a close frame: what still arrives is discarded.
    private var failed = false

    private var machine: WebSocketStateMachine
    private let pingInterval: TimeAmount?
    private var pingTimer: Scheduled<Void>?
    private var closeTimer: Scheduled<Void>?
    private var pendingClose: CloseRequest?
    private var closePromise: EventLoopPromise<Void>?
    /// The opcode of the last message received: the echo endpoint answers with it.
    private var lastOpcode = WebSocketOpcode.binary
    private let outboundOpcode: WebSocketOpcode?
    private var compressor: PerMessageDeflate.Compressor?

    /// - Parameters:
    ///   - configuration: the endpoint kind, message size limit and agreed permessage-deflate parameters.
    ///   - pingInterval: how long a connection may be silent before the server pings it (a second
    ///     silent interval closes it); nil disables pings.
    ///   - compressionThreshold: with permessage-deflate, the smallest message sent compressed (bytes).
    init(configuration: WebSocketStateMachine.Configuration, pingInterval: TimeAmount?, compressionThreshold: Int = 0) {
        self.machine = WebSocketStateMachine(configuration: configuration)
        self.pingInterval = pingInterval
        self.compressor = configuration.deflate.map {
            PerMessageDeflate.Compressor(parameters: $0, threshold: compressionThreshold, budget: configuration.deflateBudget)
        }
        switch configuration.endpoint {
        case .mqttStream: outboundOpcode = .binary
        case .textMessages: outboundOpcode = .text
        case .echo: outboundOpcode = nil
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { schedulePing(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimers()
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine.closed()
        compressor?.release()
        cancelTimers()
        closePromise?.succeed()
        closePromise = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if failed { return }
        switch machine.receive(frame) {
        case .none:
            break
        case .deliver(let buffer, let opcode):
            lastOpcode = opcode
            context.fireChannelRead(wrapInboundOut(buffer))
        case .sendPong(let payload):
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: payload)), promise: nil)
        case .sendCloseAndDisconnect(let code, let reason):
            sendCloseAndDisconnect(context: context, code: code, reason: reason)
        case .disconnect:
            disconnect(context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The frame decoder stops after its first error: what it reports afterwards is input the
        // lingering close discards.
        if failed { return }
        guard let error = error as? NIOWebSocketError else {
            context.fireErrorCaught(error)
            return
        }
        switch machine.decoderFailed(error) {
        case .sendCloseAndDisconnect(let code, let reason):
            sendCloseAndDisconnect(context: context, code: code, reason: reason)
        default:
            disconnect(context: context)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard machine.canSendData else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let message = unwrapOutboundIn(data)
        let opcode = outboundOpcode ?? lastOpcode
        let frame: WebSocketFrame
        if let compressed = compressor?.compress(message, allocator: context.channel.allocator) {
            frame = WebSocketFrame(fin: true, rsv1: true, opcode: opcode, data: compressed)
        } else {
            frame = WebSocketFrame(fin: true, opcode: opcode, data: message)
        }
        context.write(wrapOutboundOut(frame), promise: promise)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let request = event as? CloseRequest {
            if pendingClose == nil { pendingClose = request }
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        let request = pendingClose ?? CloseRequest(code: .normalClosure)
        switch machine.close(code: request.code) {
        case .sendClose(let code):
            if let promise {
                if let closePromise { closePromise.futureResult.cascade(to: promise) } else { closePromise = promise }
            }
            var payload = context.channel.allocator.buffer(capacity: 2 + request.reason.utf8.count)
            payload.write(webSocketErrorCode: code)
            payload.writeString(request.reason)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            closeTimer = context.eventLoop.scheduleTask(in: Self.closeTimeout) {
                // The peer did not answer the close frame in time.
                loopBound.value.close(promise: nil)
            }
        case .alreadyClosing:
            if closeTimer != nil {
                // Our close frame is out; the timer (or the peer's answer) ends the connection.
                if let promise { context.channel.closeFuture.cascade(to: promise) }
            } else {
                context.close(mode: mode, promise: promise)
            }
        }
    }

    // MARK: Actions

    /// Fails the connection (RFC 6455 7.1.7) with a lingering close: the close frame is flushed, the
    /// write side shut down, and what the peer still sends is read and discarded until it closes or
    /// ``closeTimeout`` passes (as the MQTT listener's lingering close). Closing at once with unread input makes the kernel
    /// reset the connection, and a peer still sending would then never read the close code.
    private func sendCloseAndDisconnect(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        guard !failed else { return }
        failed = true
        cancelTimers()
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        payload.write(webSocketErrorCode: code)
        // Control frames carry at most 125 bytes: the reason is truncated to fit.
        payload.writeString(String(decoding: reason.utf8.prefix(100), as: UTF8.self))
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)))
            .whenComplete { result in
                let context = loopBound.value
                guard case .success = result else {
                    context.close(promise: nil)
                    return
                }
                // Half-close where the transport allows it (TLS may not): otherwise close outright.
                let halfClosed = context.eventLoop.makePromise(of: Void.self)
                halfClosed.futureResult.whenFailure { _ in loopBound.value.close(promise: nil) }
                context.close(mode: .output, promise: halfClosed)
            }
        closeTimer = context.eventLoop.scheduleTask(in: Self.closeTimeout) {
            loopBound.value.close(promise: nil)
        }
    }

    private func disconnect(context: ChannelHandlerContext) {
        cancelTimers()
        context.close(promise: nil)
    }

    private func schedulePing(context: ChannelHandlerContext) {
        guard let pingInterval, pingTimer == nil else { return }
        let loopBound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        pingTimer = context.eventLoop.scheduleTask(in: pingInterval) {
            let (handler, context) = loopBound.value
            handler.pingTimer = nil
            handler.pingTick(context: context)
        }
    }

    private func pingTick(context: ChannelHandlerContext) {
        switch machine.tick() {
        case .none:
            break
        case .sendPing:
            let frame = WebSocketFrame(fin: true, opcode: .ping, data: context.channel.allocator.buffer(capacity: 0))
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        case .disconnect:
            // Two intervals without a frame, not even a pong: the peer is gone (close 1006 on its side).
            disconnect(context: context)
            return
        }
        if context.channel.isActive { schedulePing(context: context) }
    }

    private func cancelTimers() {
        pingTimer?.cancel()
        pingTimer = nil
        closeTimer?.cancel()
        closeTimer = nil
    }
}

@available(*, unavailable)
extension WebSocketProtocolHandler: Sendable {}

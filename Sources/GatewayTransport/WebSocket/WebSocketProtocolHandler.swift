import GatewayCore
import NIOCore
import NIOWebSocket

/// The WebSocket layer of an upgraded connection: reads frames from the byte stream
/// (``WebSocketFrameCodec``) and turns them into data for the handlers above it, frames the data from
/// them, and performs what ``WebSocketStateMachine`` decides (pong, ping, the close handshake, failing the
/// connection with a close code). It sits right after the socket (or TLS): it keeps only the start of a
/// frame not yet whole, so an idle connection holds no buffer here.
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
final class WebSocketProtocolHandler: ChannelDuplexHandler, WheelDeadline {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

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
    /// The largest frame accepted (its header is enough to refuse it, with 1009).
    private let maxFrameSize: Int
    /// The start of a frame whose rest has not arrived.
    private var partial = UnfinishedBytes()
    private let pingInterval: TimeAmount?
    /// The ``KeepAliveWheel`` bucket of the next ping tick, while filed.
    private var pingBucket: Int64?
    /// What closing needs, made on first use: an idle connection holds a nil reference.
    private final class Closing {
        var timer: Scheduled<Void>?
        var request: CloseRequest?
        var promise: EventLoopPromise<Void>?
    }
    private var closing: Closing?
    private var closingState: Closing {
        if let closing { return closing }
        let made = Closing()
        closing = made
        return made
    }
    private var closeTimer: Scheduled<Void>? {
        get { closing?.timer }
        set { if newValue != nil || closing != nil { closingState.timer = newValue } }
    }
    private var pendingClose: CloseRequest? {
        get { closing?.request }
        set { closingState.request = newValue }
    }
    private var closePromise: EventLoopPromise<Void>? {
        get { closing?.promise }
        set { if newValue != nil || closing != nil { closingState.promise = newValue } }
    }
    /// The opcode of the last message received: the echo endpoint answers with it.
    private var lastOpcode = WebSocketOpcode.binary
    private let outboundOpcode: WebSocketOpcode?
    private var compressor: PerMessageDeflate.Compressor?

    /// - Parameters:
    ///   - configuration: the endpoint kind, message size limit and agreed permessage-deflate parameters.
    ///   - maxFrameSize: the largest frame accepted.
    ///   - pingInterval: how long a connection may be silent before the server pings it (a second
    ///     silent interval closes it); nil disables pings.
    ///   - compressionThreshold: with permessage-deflate, the smallest message sent compressed (bytes).
    init(configuration: WebSocketStateMachine.Configuration, maxFrameSize: Int, pingInterval: TimeAmount?, compressionThreshold: Int = 0) {
        self.machine = WebSocketStateMachine(configuration: configuration)
        self.maxFrameSize = maxFrameSize
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
        cancelTimers(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partial.drop()
        machine.closed()
        compressor?.release()
        cancelTimers(context: context)
        closePromise?.succeed()
        closePromise = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if failed { return }
        var bytes = partial.prepend(to: unwrapInboundIn(data))
        do {
            // After a failure (a close frame out, the rest of the input discarded) frames already read
            // are not acted on. After the close handshake the state machine ignores them.
            while !failed, let frame = try WebSocketFrameCodec.next(&bytes, maxFrameSize: maxFrameSize) {
                receive(frame, context: context)
            }
        } catch {
            switch machine.decoderFailed(error) {
            case .sendCloseAndDisconnect(let code, let reason):
                sendCloseAndDisconnect(context: context, code: code, reason: reason)
            default:
                disconnect(context: context)
            }
            return
        }
        guard !failed else { return }
        partial.keep(bytes, allocator: context.channel.allocator)
    }

    private func receive(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
        switch machine.receive(frame) {
        case .none:
            break
        case .deliver(let buffer, let opcode):
            lastOpcode = opcode
            context.fireChannelRead(wrapInboundOut(buffer))
        case .sendPong(let payload):
            writeFrame(context: context, opcode: .pong, data: payload, flush: true, promise: nil)
        case .sendCloseAndDisconnect(let code, let reason):
            sendCloseAndDisconnect(context: context, code: code, reason: reason)
        case .disconnect:
            disconnect(context: context)
        }
    }

    /// Writes one unmasked frame. The header goes in a buffer of its own, with the data copied behind it
    /// when that is small (one write instead of two).
    private func writeFrame(
        context: ChannelHandlerContext,
        rsv1: Bool = false,
        opcode: WebSocketOpcode,
        data: ByteBuffer,
        flush: Bool,
        promise: EventLoopPromise<Void>?
    ) {
        let length = data.readableBytes
        let inline = length <= Self.inlineDataLimit
        var header = context.channel.allocator.buffer(capacity: WebSocketFrameCodec.headerSize(length: length) + (inline ? length : 0))
        WebSocketFrameCodec.writeHeader(rsv1: rsv1, opcode: opcode, length: length, to: &header)
        if inline {
            header.writeImmutableBuffer(data)
            context.write(wrapOutboundOut(header), promise: promise)
        } else {
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(data), promise: promise)
        }
        if flush { context.flush() }
    }

    /// Frames carrying at most this many bytes are written as one buffer, header and data.
    static let inlineDataLimit = 256

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard machine.canSendData else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let message = unwrapOutboundIn(data)
        let opcode = outboundOpcode ?? lastOpcode
        if let compressed = compressor?.compress(message, allocator: context.channel.allocator) {
            writeFrame(context: context, rsv1: true, opcode: opcode, data: compressed, flush: false, promise: promise)
        } else {
            writeFrame(context: context, opcode: opcode, data: message, flush: false, promise: promise)
        }
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
            writeFrame(context: context, opcode: .connectionClose, data: payload, flush: true, promise: nil)
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
        cancelTimers(context: context)
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        payload.write(webSocketErrorCode: code)
        // Control frames carry at most 125 bytes: the reason is truncated to fit.
        payload.writeString(String(decoding: reason.utf8.prefix(100), as: UTF8.self))
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let written = context.eventLoop.makePromise(of: Void.self)
        writeFrame(context: context, opcode: .connectionClose, data: payload, flush: true, promise: written)
        written.futureResult
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
        cancelTimers(context: context)
        context.close(promise: nil)
    }

    private func schedulePing(context: ChannelHandlerContext) {
        guard let pingInterval, pingBucket == nil else { return }
        pingBucket = KeepAliveWheel.of(context.eventLoop).insert(self, context: context, deadline: context.eventLoop.now + pingInterval)
    }

    func deadlineReached(context: ChannelHandlerContext) {
        pingBucket = nil
        pingTick(context: context)
    }

    private func pingTick(context: ChannelHandlerContext) {
        switch machine.tick() {
        case .none:
            break
        case .sendPing:
            writeFrame(context: context, opcode: .ping, data: ByteBuffer(), flush: true, promise: nil)
        case .disconnect:
            // Two intervals without a frame, not even a pong: the peer is gone (close 1006 on its side).
            disconnect(context: context)
            return
        }
        if context.channel.isActive { schedulePing(context: context) }
    }

    private func cancelTimers(context: ChannelHandlerContext) {
        if let pingBucket {
            KeepAliveWheel.of(context.eventLoop).remove(self, bucket: pingBucket)
            self.pingBucket = nil
        }
        closeTimer?.cancel()
        closeTimer = nil
    }
}

@available(*, unavailable)
extension WebSocketProtocolHandler: Sendable {}

import GatewayCore
import MQTTCodec
import NIOCore

/// What an MQTT connection task reads: a packet from the client, or `writable` when its socket can take
/// writes again (and no writer was registered to be called directly, ``ConnectionInbound/writer``).
enum ConnectionInput: Sendable {
    case packet(MQTTPacket)
    case writable
    /// A PUBLISH the loop checked (``ConnectionInbound/inlineHandler``) that waits for room before it is
    /// routed: the task finishes it.
    case publishAwaiting(ClientConnection.PendingPublish)
    /// The loop handled a packet whose answer ends the connection: the task closes it so.
    case closing(MQTTConnectionRunner.Closing)
}

/// What an MQTT connection's task awaits: the next decoded packet, or `writable` when its socket can take
/// writes again. A lighter bridge between the pipeline and the task than `NIOAsyncChannel`'s inbound stream,
/// and the connection's packet decoder (``MQTTPacketParser``) as well: a `ByteToMessageHandler` in front of
/// it cost every connection about 500 bytes (the handler, two ring buffers and a pipeline context) and
/// every packet a pipeline hop. Bytes of a packet not yet whole are the only bytes it keeps.
///
/// An idle connection's task sits in ``wait()`` for hours, and a task keeps the async frames its deepest
/// suspension needed: NIO's generic producer (`NIOThrowingAsyncSequenceProducer`) cost about 3 KiB of
/// frames per connection there, plus its storage, lock and state machine on the heap. This handler is the
/// whole bridge: a small buffer, one continuation, and the back-pressure rule — no more than
/// ``highWatermark`` inputs wait for the task; past that the socket is not read until the task has taken
/// them (TCP then slows the client).
///
/// Errors (a malformed packet, the keep alive expiring) and the end of the connection reach the task
/// after the inputs buffered before them, in order.
///
/// # Thread safety
/// `@unchecked Sendable`: it is handed from the channel initializer to the connection task, which runs
/// on the channel's event loop (``EventLoopTaskExecutor``). Every method runs on that loop — the handler
/// callbacks by NIO's rules, ``wait()`` and the buffer's accessors because the task is pinned there
/// (checked in debug builds) — so the state below is only ever touched by that one thread.
final class ConnectionInbound: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Any

    /// Inputs buffered for the task before the socket stops being read.
    static let highWatermark = 16

    let eventLoop: any EventLoop
    private var context: ChannelHandlerContext?
    private var buffer: [ConnectionInput] = []
    private var head = 0
    private var waiting: UnsafeContinuation<Void, any Error>?
    /// The error that ends the input once what was buffered before it has been taken.
    private(set) var failure: (any Error)?
    private var finished = false
    private var parser: MQTTPacketParser
    /// The start of a packet whose rest has not arrived.
    private var partial = UnfinishedBytes()
    /// Set once the stream failed to decode: nothing after the error is read as packets.
    private var decodingFailed = false
    /// A read asked for while reading is held (``readHeld``).
    private var heldRead = false
    /// Set for a lingering close: what arrives is dropped and reading goes on.
    private var discarding = false
    /// Keep alive (``ConnectionInbound+KeepAlive.swift``): the connect timeout, then 1.5 × the keep alive.
    var keepAliveTimeout: TimeAmount
    /// Set once CONNECT was accepted (``SetKeepAlive``).
    var keepAliveConnected = false
    var lastRead: NIODeadline
    /// The ``KeepAliveWheel`` bucket the deadline is filed in, while filed.
    var keepAliveBucket: Int64?
    /// Reading is paused by back-pressure on this publisher (``SetReadPaused``).
    var readPaused = false
    /// The connection's writer, once its task set it up. It goes on at once when the socket becomes
    /// writable again, without waiting for the task (which may be waiting for a storage commit), and what
    /// the packets of one read answer is flushed once, when the read completes
    /// (``ConnectionWriter/beginReadBurst()``).
    var writer: ConnectionWriter?
    /// Handles a packet on the loop, as it is read, while the task waits with nothing buffered (set once
    /// CONNECT was accepted). Returns nil when the packet was handled, or what the task is to take instead
    /// (the packet itself, a PUBLISH that waits for room, or how to close). A packet read while the task is
    /// busy or has inputs waiting is buffered for it as before, so packets are handled in the order read.
    var inlineHandler: ((MQTTPacket) -> ConnectionInput?)?

    /// - Parameter connectTimeout: how long a socket may stay open without sending CONNECT.
    init(eventLoop: any EventLoop, parser: MQTTPacketParser, connectTimeout: TimeAmount) {
        self.eventLoop = eventLoop
        self.parser = parser
        self.keepAliveTimeout = connectTimeout
        self.lastRead = eventLoop.now
    }

    private var buffered: Int { buffer.count - head }

    /// Whether the task waits in ``wait()`` (for tests).
    var isTaskWaiting: Bool { waiting != nil }

    /// The storage held for a packet not yet whole, in bytes (0: none).
    var partialCapacity: Int { partial.capacity }

    /// Drops what is buffered and everything that arrives from now on, and keeps reading (a lingering
    /// close reads the client's input until it closes, so that closing does not reset the connection).
    func discardInput() {
        eventLoop.assertInEventLoop()
        discarding = true
        partial.drop()
        buffer.removeAll()
        head = 0
        releaseHeldRead()
    }

    /// Waits until an input is buffered (true) or the connection has closed (false); throws the error
    /// that ended it. Call from the connection task only, then take the inputs with ``nextBuffered()``.
    ///
    /// Nothing but a flag crosses the suspension: the connection task's frame for its longest wait holds
    /// no packet (a task keeps its deepest frames for its whole life).
    func wait() async throws -> Bool {
        eventLoop.assertInEventLoop()
        if buffered > 0 { return true }
        if let failure {
            self.failure = nil
            finished = true
            throw failure
        }
        if finished { return false }
        // Nothing is buffered: an idle connection keeps no buffer storage.
        buffer = []
        try await withUnsafeThrowingContinuation { continuation in
            waiting = continuation
        }
        return buffered > 0
    }

    /// The next buffered input, nil when none is. Call from the connection task only.
    func nextBuffered() -> ConnectionInput? {
        eventLoop.assertInEventLoop()
        return take()
    }

    /// Replaces the next buffered input (the one ``peekBuffered()`` returned) with `input`, which the task
    /// takes next. Call from the connection task only.
    func replaceBuffered(with input: ConnectionInput) {
        eventLoop.assertInEventLoop()
        precondition(head < buffer.count, "nothing is buffered")
        buffer[head] = input
    }

    /// The next buffered input, left in the buffer; nil when none is. Call from the connection task only.
    func peekBuffered() -> ConnectionInput? {
        eventLoop.assertInEventLoop()
        return head < buffer.count ? buffer[head] : nil
    }

    /// Drops the next buffered input (the one ``peekBuffered()`` returned).
    func dropBuffered() {
        _ = take()
    }

    private func take() -> ConnectionInput? {
        guard head < buffer.count else { return nil }
        let input = buffer[head]
        head += 1
        if head == buffer.count {
            // Emptied: start over, keeping the storage for the rest of this burst (``wait()`` gives it
            // back if the task then has to wait).
            buffer.removeAll(keepingCapacity: true)
            head = 0
        }
        releaseHeldRead()
        return input
    }

    private func deliver(_ input: ConnectionInput) {
        buffer.append(input)
        if let waiting {
            self.waiting = nil
            waiting.resume()
        }
    }

    /// Wakes a waiting task with the end or the error, once nothing is buffered before it.
    private func deliverEnd() {
        guard let waiting, buffered == 0 else { return }
        self.waiting = nil
        if let failure {
            self.failure = nil
            finished = true
            waiting.resume(throwing: failure)
        } else {
            waiting.resume()
        }
    }

    // MARK: ChannelHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { armKeepAlive(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        armKeepAlive(context: context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        unfileKeepAlive()
        self.context = nil
        endWriterBurst()
        inlineHandler = nil
        finished = true
        deliverEnd()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = eventLoop.now
        guard !discarding, !decodingFailed else { return }
        writer?.beginReadBurst()
        var bytes = partial.prepend(to: unwrapInboundIn(data))
        do {
            while let packet = try parser.next(&bytes) {
                if let inlineHandler, waiting != nil, buffered == 0 {
                    // The task waits with nothing before this packet: handling it here saves waking the
                    // task (a job on the loop, and its frames) for each packet.
                    if let rest = inlineHandler(packet) { deliver(rest) }
                } else {
                    deliver(.packet(packet))
                }
            }
        } catch {
            // The packets before the error reach the task first, then the error (answered with the
            // reason code it carries, and the connection closes).
            decodingFailed = true
            fail(error)
            return
        }
        partial.keep(bytes, allocator: context.channel.allocator)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        writer?.endReadBurst()
        context.fireChannelReadComplete()
    }

    /// Ends a read burst that no `channelReadComplete` ended (the channel went away), and lets the writer
    /// go: it holds the channel, whose pipeline holds this.
    private func endWriterBurst() {
        writer?.endReadBurst()
        writer = nil
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            // The writer stopped when the socket filled up.
            if let writer { writer.drainIfConnected() } else { deliver(.writable) }
            releaseHeldRead()
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
    }

    func fail(_ error: any Error) {
        if failure == nil && !finished { failure = error }
        deliverEnd()
    }

    func channelInactive(context: ChannelHandlerContext) {
        unfileKeepAlive()
        endWriterBurst()
        inlineHandler = nil
        finished = true
        deliverEnd()
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if readHeld {
            heldRead = true
        } else {
            context.read()
        }
    }

    /// Whether the socket is not read for now: the task has ``highWatermark`` inputs waiting,
    /// back-pressure paused this publisher, or the socket is not writable (a client that sends without
    /// reading would otherwise pile up our answers, PUBACKs and PINGRESPs, in NIO's write buffer). A
    /// lingering close reads on regardless of the task.
    private var readHeld: Bool {
        (!discarding && buffered >= Self.highWatermark) || readPaused || !(context?.channel.isWritable ?? true)
    }

    /// Asks for the read held back, once nothing holds it any more.
    func releaseHeldRead() {
        guard heldRead, !readHeld, let context else { return }
        heldRead = false
        context.read()
    }
}

/// An accepted MQTT connection (TCP, TLS or WebSocket) as its listener hands it to the connection task.
struct MQTTConnectionChannel: Sendable {
    let channel: any Channel
    let inbound: ConnectionInbound
}

extension MQTTConnectionChannel: AcceptedConnection {
    var acceptedID: ObjectIdentifier { ObjectIdentifier(channel) }

    func discard() async {
        try? await channel.close()
    }
}

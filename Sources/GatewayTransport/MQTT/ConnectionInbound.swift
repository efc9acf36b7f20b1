import MQTTCodec
import NIOCore

/// What an MQTT connection task reads: a packet from the client, or `writable` when its socket can take
/// writes again (and no writer was registered to be called directly, ``ConnectionInbound/onWritable``).
enum ConnectionInput: Sendable {
    case packet(MQTTPacket)
    case writable
}

/// What an MQTT connection's task awaits: the next decoded packet, or `writable` when its socket can take
/// writes again. A lighter bridge between the pipeline and the task than `NIOAsyncChannel`'s inbound stream.
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
/// callbacks by NIO's rules, ``wait()`` and the buffer's accessors because the task is pinned there (checked in debug builds) — so
/// the state below is only ever touched by that one thread.
final class ConnectionInbound: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = MQTTPacket
    typealias OutboundIn = Any

    /// Inputs buffered for the task before the socket stops being read.
    static let highWatermark = 16

    private let eventLoop: any EventLoop
    private var context: ChannelHandlerContext?
    private var buffer: [ConnectionInput] = []
    private var head = 0
    private var waiting: UnsafeContinuation<Void, any Error>?
    private var failure: (any Error)?
    private var finished = false
    private var heldRead = false
    /// Set for a lingering close: what arrives is dropped and reading goes on.
    private var discarding = false
    /// Called when the socket becomes writable again: the connection's writer goes on at once, without
    /// waiting for the task (which may be waiting for a storage commit).
    var onWritable: (() -> Void)?

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    private var buffered: Int { buffer.count - head }

    /// Drops what is buffered and everything that arrives from now on, and keeps reading (a lingering
    /// close reads the client's input until it closes, so that closing does not reset the connection).
    func discardInput() {
        eventLoop.assertInEventLoop()
        discarding = true
        buffer.removeAll()
        head = 0
        if heldRead, let context {
            heldRead = false
            context.read()
        }
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
            // Emptied: start over without giving the storage back (it is at most highWatermark long).
            buffer.removeAll(keepingCapacity: true)
            head = 0
        }
        if heldRead && buffered < Self.highWatermark, let context {
            heldRead = false
            context.read()
        }
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
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        onWritable = nil
        finished = true
        deliverEnd()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !discarding else { return }
        deliver(.packet(unwrapInboundIn(data)))
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            // The writer stopped when the socket filled up.
            if let onWritable { onWritable() } else { deliver(.writable) }
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if failure == nil && !finished { failure = error }
        deliverEnd()
    }

    func channelInactive(context: ChannelHandlerContext) {
        onWritable = nil
        finished = true
        deliverEnd()
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if buffered >= Self.highWatermark {
            heldRead = true
        } else {
            context.read()
        }
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

import GatewayCore
import Logging
import MQTTCodec
import NIOCore

/// Runs one MQTT connection: the per-connection task.
///
/// The task runs on its channel's event loop (``EventLoopTaskExecutor``): it awaits ``ConnectionInbound``
/// for client packets, which it hands to the core and answers, and writability changes; every write goes
/// through the connection's ``ConnectionWriter`` on that loop. Once CONNECT was accepted, a packet read
/// while the task waits with nothing buffered is handled on the loop as it is read (``handleWithoutWaiting(_:connection:handle:writer:)``),
/// without waking the task; the task takes what has to wait (a PUBLISH waiting for room) and what arrives
/// while it is busy, in the order read. Messages routed to this connection are
/// written by the writer when the session wakes it, without waking the task. Every error stays inside
/// this connection.
struct MQTTConnectionRunner: Sendable {
    let broker: Broker
    let transport: GatewayMetrics.Transport
    let registry: ConnectionRegistry
    let logger: Logger
    /// Whether the client certificate's CN replaces the username of CONNECT (TLS listeners with
    /// `tls.use_cn_as_username`).
    var useCertificateCommonName = false
    /// Whether the connection runs over WebSocket (closing it is a close handshake).
    var isWebSocket = false

    /// Inbound packets handled before the task yields the loop to other jobs: a publisher whose packets
    /// are already buffered never suspends on `wait()`.
    private static let packetsPerYield = 16

    /// Runs the connection until it closes.
    ///
    /// # Frames
    /// A task allocates the frames of its async calls from slabs it keeps until it ends: a slab holds
    /// 984 bytes, and every slab the deepest `await` chain ever needed stays with the connection.
    /// The chain an idle connection waits in (the task's start, this function, ``serve(_:_:)`` and
    /// `ConnectionInbound.wait()`) and the one CONNECT is awaited in are kept within that first slab: this
    /// function and ``runOnEventLoop(_:)`` are inlined into the task's closure, no packet crosses a
    /// suspension in them, CONNECT runs in a task of its own (``startFirst(_:_:)``), and anything that logs
    /// is a synchronous function of its own (a log call's temporaries in an async function take frame
    /// space). Measured with `perf probe` on `swift_task_alloc` and heaptrack: 3.7 KiB of slabs per idle
    /// connection before, 1 KiB after.
    @inline(__always)
    func run(_ accepted: MQTTConnectionChannel) async {
        guard admit(accepted.channel) else { return }
        // Connection tasks are not cancelled (the accept loop runs in a task of its own); they end when
        // their channel closes, which shutdown does through the connection registry.
        if Self.currentTaskPrefers(accepted.channel.eventLoop) {
            // The accept loop made the task with this preference: no frame for it here (an idle
            // connection's task keeps every frame it waits in).
            await runOnEventLoop(accepted)
        } else {
            await runPreferringLoop(accepted)
        }
        broker.releaseConnection(transport: transport)
    }

    /// Counts the connection in, or closes it when the gateway is full or draining.
    @inline(never)
    private func admit(_ channel: any Channel) -> Bool {
        guard broker.admitConnection(transport: transport) else {
            logger.debug("connection refused: limit reached or draining")
            channel.close(promise: nil)
            return false
        }
        return true
    }

    @inline(never)
    private func runPreferringLoop(_ accepted: MQTTConnectionChannel) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor.of(accepted.channel.eventLoop)) {
            await runOnEventLoop(accepted)
        }
    }

    @inline(never)
    private static func currentTaskPrefers(_ eventLoop: any EventLoop) -> Bool {
        let executor = EventLoopTaskExecutor.of(eventLoop)
        return withUnsafeCurrentTask { task in task?.unownedTaskExecutor == executor.asUnownedTaskExecutor() }
    }

    /// The parts of a running connection, made before its first read.
    private struct Parts {
        let handle: ChannelConnectionHandle
        let token: UInt64
        let connection: ClientConnection
        let writer: ConnectionWriter
        /// The peer counted against `limits.max_connections_per_address` (nil: not counted); its address
        /// is printed again to give the count back.
        let countedAddress: SocketAddress?
    }

    /// The connection's life. Only what must outlive the reads stays in this frame (the task keeps it for
    /// as long as the client stays); set-up and tear-down are synchronous functions of their own. Inlined
    /// into the task's closure: one frame fewer in the chain (see ``run(_:)``).
    @inline(__always)
    private func runOnEventLoop(_ accepted: MQTTConnectionChannel) async {
        let parts = setUp(accepted.channel, inbound: accepted.inbound)
        var closing: Closing?
        var failure: (any Error)?
        do {
            closing = try await serve(accepted.inbound, parts)
        } catch {
            failure = error
        }
        // The handler refers to the connection's parts, which refer to the channel: break the cycle.
        accepted.inbound.inlineHandler = nil
        if tearDown(parts, closing: closing, failure: failure) == .afterReply {
            if isWebSocket {
                // The WebSocket close handshake that closing starts is the linger: it waits (bounded) for
                // the client's close frame, which must not be stuck behind MQTT input nobody reads.
                accepted.inbound.discardInput()
            } else {
                await linger(accepted)
            }
        }
        accepted.channel.close(promise: nil)
        // The handle, the writer and the connection refer to each other: break the cycle.
        parts.handle.writer = nil
        registry.remove(parts.token)
        if let address = parts.countedAddress { broker.releaseAddress(address.description) }
    }

    /// How the server ends a connection.
    enum Closing {
        /// Nothing to tell the client (it sent DISCONNECT, or 3.1.1 has no server DISCONNECT).
        case now
        /// After a final packet — DISCONNECT with a reason code, or a refusing CONNACK — that the client
        /// should get to read.
        case afterReply
    }

    /// How long a connection closed after a final packet keeps reading (and discarding) what the client
    /// still sends.
    static let lingerTime = TimeAmount.seconds(2)

    /// Lingering close: the final packet is flushed, the write side shut down (FIN), and input is read
    /// and discarded until the client closes or ``lingerTime`` passes. Closing at once with unread input
    /// makes the kernel send RST, and a client still sending (past Receive Maximum, say) then gets
    /// ECONNRESET before it can read the DISCONNECT that says why.
    @inline(never)
    private func linger(_ accepted: MQTTConnectionChannel) async {
        let channel = accepted.channel
        guard channel.isActive else { return }
        accepted.inbound.discardInput()
        channel.close(mode: .output, promise: nil)
        let deadline = channel.eventLoop.scheduleTask(in: Self.lingerTime) { channel.close(promise: nil) }
        try? await channel.closeFuture.get()
        deadline.cancel()
    }

    @inline(never)
    private func setUp(_ channel: any Channel, inbound: ConnectionInbound) -> Parts {
        let handle = ChannelConnectionHandle(channel: channel, isWebSocket: isWebSocket)
        let token = registry.add(handle)
        let peer = channel.remoteAddress
        let connection = ClientConnection(broker: broker, handle: handle, peer: peer, logger: logger)
        let countedAddress = peer.flatMap { broker.admitAddress($0.description) ? $0 : nil }
        connection.overAddressLimit = peer != nil && countedAddress == nil
        connection.transport = transport
        let writer = ConnectionWriter(channel: channel, connection: connection, metrics: broker.metrics)
        handle.writer = writer
        inbound.writer = writer
        return Parts(handle: handle, token: token, connection: connection, writer: writer, countedAddress: countedAddress)
    }

    /// Answers how the reads ended (a malformed packet, the keep alive expiring), flushes and releases the
    /// session (publishing the Will where due). Returns how the channel is to be closed.
    @inline(never)
    private func tearDown(_ parts: Parts, closing: Closing?, failure: (any Error)?) -> Closing {
        let connection = parts.connection
        var cause = ClientConnection.CloseCause.connectionLost
        var actions: [ClientConnection.Action] = []
        switch failure {
        case let error as MQTTCodecError:
            cause = .protocolError
            actions = connection.handleDecodeError(error)
        case is ConnectionInbound.KeepAliveExpired:
            cause = .keepAliveTimeout
            actions = connection.keepAliveExpired()
        case let error?:
            logger.debug("connection ended with error", metadata: ["error": "\(error)"])
        case nil:
            break
        }
        let final = Self.perform(actions, connection: connection, handle: parts.handle, writer: parts.writer)
        parts.writer.flush()
        if let reason = parts.handle.closeReason { cause = .server(reason) }
        connection.connectionClosed(cause: cause)
        return closing ?? final ?? .now
    }

    /// Reads and answers the client until it disconnects, the connection closes (nil), or the core says close.
    ///
    /// This loop is where an idle connection's task waits, for as long as the client stays, and a task
    /// keeps the frames of its deepest `await` chain for its whole life: the wait crosses its suspension
    /// with nothing but references, and the packets are handled in a function of its own.
    @inline(never)
    private func serve(_ inbound: ConnectionInbound, _ parts: Parts) async throws -> Closing? {
        while try await inbound.wait() {
            if let closing = takeClosing(inbound) { return closing }
            if !parts.connection.isConnected {
                // CONNECT: awaited here, not deeper, so that its wait needs no more frames than the idle one.
                guard let first = startFirst(inbound, parts) else { continue }
                if let closing = Self.perform(await first.value, connection: parts.connection, handle: parts.handle, writer: parts.writer) {
                    return closing
                }
                parts.writer.drainIfConnected()
                installInlineHandler(inbound, parts)
                continue
            }
            if let closing = await processBuffered(inbound, parts) { return closing }
        }
        return nil
    }

    /// Handles the inputs buffered for the task, yielding the loop to other jobs every
    /// ``packetsPerYield`` of them. Returns how to close, when the connection is to close.
    ///
    /// Called once CONNECT was accepted (``serve(_:_:)`` handles CONNECT). Most packets are handled without
    /// suspending (``step(_:_:)``); a PUBLISH, which may suspend, is taken by a function of its own, so
    /// only its chain holds a packet in a frame.
    @inline(never)
    private func processBuffered(_ inbound: ConnectionInbound, _ parts: Parts) async -> Closing? {
        var handledSinceYield = 0
        while let step = step(inbound, parts) {
            switch step {
            case .handled:
                break
            case .closing(let closing):
                return closing
            case .suspends:
                let actions = await handleConnected(inbound, parts)
                if let closing = Self.perform(actions, connection: parts.connection, handle: parts.handle, writer: parts.writer) {
                    return closing
                }
            }
            parts.writer.drainIfConnected()
            handledSinceYield += 1
            if handledSinceYield >= Self.packetsPerYield {
                handledSinceYield = 0
                await Task.yield()
            }
        }
        return nil
    }

    /// What ``step(_:_:)`` did with the next buffered input.
    private enum Step {
        case handled
        case closing(Closing)
        /// The input is a packet that may suspend; it is still buffered.
        case suspends
    }

    /// The close that the loop asked for when it handled a packet whose answer ends the connection
    /// (``handleWithoutWaiting(_:connection:handle:writer:)``), taken from the inputs; nil when the next input is something else.
    /// Synchronous, like everything ``serve(_:_:)`` calls between waits: its temporaries would otherwise
    /// join the frame an idle connection's task keeps.
    @inline(never)
    private func takeClosing(_ inbound: ConnectionInbound) -> Closing? {
        guard case .closing(let closing)? = inbound.peekBuffered() else { return nil }
        inbound.dropBuffered()
        return closing
    }

    /// Lets the loop handle the client's packets as they are read, once CONNECT was accepted. Synchronous
    /// (see ``takeClosing(_:)``): made in ``serve(_:_:)`` itself, the closure's temporaries took the idle
    /// chain's frames past the task's first 984-byte slab, and every connection kept a second one
    /// (1.1 KiB more per idle connection, measured).
    @inline(never)
    private func installInlineHandler(_ inbound: ConnectionInbound, _ parts: Parts) {
        guard parts.connection.isConnected, inbound.inlineHandler == nil else { return }
        // Only the three references it needs: the closure's context is kept for the connection's life.
        let connection = parts.connection
        let handle = parts.handle
        let writer = parts.writer
        inbound.inlineHandler = { packet in
            let rest = Self.handleWithoutWaiting(packet, connection: connection, handle: handle, writer: writer)
            if rest == nil { writer.drainIfConnected() }
            return rest
        }
    }

    /// Handles a packet of a connected client without suspending — as it is read, while the task waits
    /// (``ConnectionInbound/inlineHandler``), or when the task takes it from the buffer (``step(_:_:)``).
    /// Returns nil when it was handled, or what the task is to take: the packet (the client is no longer
    /// connected here), a PUBLISH that waits for room, or how to close.
    @inline(never)
    private static func handleWithoutWaiting(
        _ packet: MQTTPacket,
        connection: ClientConnection,
        handle: ChannelConnectionHandle,
        writer: ConnectionWriter
    ) -> ConnectionInput? {
        guard connection.isConnected else { return .packet(packet) }
        let actions: [ClientConnection.Action]
        if case .publish(let publish) = packet {
            switch connection.handlePublishWithoutWaiting(publish) {
            case .done(let done): actions = done
            case .mustWait(let pending): return .publishAwaiting(pending)
            }
        } else {
            guard let done = connection.handleSynchronously(packet) else { return .packet(packet) }
            actions = done
        }
        return perform(actions, connection: connection, handle: handle, writer: writer).map { .closing($0) }
    }

    /// Handles the next buffered input when that needs no suspension. Returns nil when nothing is buffered.
    @inline(never)
    private func step(_ inbound: ConnectionInbound, _ parts: Parts) -> Step? {
        guard let input = inbound.peekBuffered() else { return nil }
        switch input {
        case .packet(let packet):
            switch Self.handleWithoutWaiting(packet, connection: parts.connection, handle: parts.handle, writer: parts.writer) {
            case nil:
                inbound.dropBuffered()
                return .handled
            case .publishAwaiting(let pending)?:
                // Checked: what is left waits for room, in the task (``handleConnected(_:_:)``).
                inbound.replaceBuffered(with: .publishAwaiting(pending))
                return .suspends
            case .closing(let closing)?:
                inbound.dropBuffered()
                return .closing(closing)
            case .packet?, .writable?:
                // A packet that suspends (the client is not connected here): still buffered.
                return .suspends
            }
        case .publishAwaiting:
            return .suspends
        case .closing(let closing):
            inbound.dropBuffered()
            return .closing(closing)
        case .writable:
            inbound.dropBuffered()
            return .handled
        }
    }

    /// Takes the buffered input that suspends — a checked PUBLISH waiting for room, or a packet of a client
    /// no longer connected — and hands it to the core. A publishing connection keeps this chain's frames:
    /// only the PUBLISH crosses the suspension.
    @inline(never)
    private func handleConnected(_ inbound: ConnectionInbound, _ parts: Parts) async -> [ClientConnection.Action] {
        if case .publishAwaiting(let pending)? = inbound.peekBuffered() {
            inbound.dropBuffered()
            return await parts.connection.finishPublish(pending)
        }
        return await handleOther(inbound, parts)
    }

    @inline(never)
    private func handleOther(_ inbound: ConnectionInbound, _ parts: Parts) async -> [ClientConnection.Action] {
        guard case .packet(let packet)? = inbound.nextBuffered() else { return [] }
        return await parts.connection.handleSuspending(packet)
    }

    /// Takes the buffered packet before CONNECT was accepted (CONNECT itself: authentication, session
    /// set-up or restore) and starts a task of its own that handles it; nil when the input was no packet.
    /// That work goes deepest into async frames, and a task's allocator keeps the slabs its deepest chain
    /// needed for the task's whole life; the helper's are freed when it ends, so an idle connection keeps
    /// only the frames of its read loop. The helper runs on the same event loop and the connection task
    /// awaits it at once: the connection is never used by two tasks at a time. It is not a child in a
    /// task group, whose storage and waiting frames would stay in the connection's task.
    @inline(never)
    private func startFirst(_ inbound: ConnectionInbound, _ parts: Parts) -> Task<[ClientConnection.Action], Never>? {
        // Anything else buffered (a `writable` once the channel has gone) is nothing to answer.
        guard case .packet(let packet)? = inbound.nextBuffered() else { return nil }
        let useCertificateCommonName = self.useCertificateCommonName
        let connection = parts.writer.connection
        let channel = parts.handle.channel
        return Task(executorPreference: EventLoopTaskExecutor.of(channel.eventLoop)) {
            var packet = packet
            if useCertificateCommonName, case .connect(var connect) = packet,
                let name = await TLSContext.peerCommonName(of: channel)
            {
                connect.username = name
                packet = .connect(connect)
                // Only a certificate verified against tls.ca_file reaches here (without a CA none is
                // requested): it authenticates the client.
                connection.value.certificateIdentity = name
            }
            return await connection.value.handle(packet)
        }
    }

    /// Performs the core's actions in order. Returns how to close when they end with `close`. Synchronous (on
    /// the channel's event loop), so the connection task keeps no frame for it.
    @inline(never)
    private static func perform(
        _ actions: [ClientConnection.Action],
        connection: ClientConnection,
        handle: ChannelConnectionHandle,
        writer: ConnectionWriter
    ) -> Closing? {
        var replied = false
        for action in actions {
            switch action {
            case .send(let packet):
                writer.send(packet)
                replied = true
            case .keepAlive(let seconds):
                handle.connected(version: connection.version)
                handle.channel.triggerUserOutboundEvent(ConnectionInbound.SetKeepAlive(seconds: seconds), promise: nil)
            case .close:
                writer.flush()
                return replied ? .afterReply : .now
            }
        }
        return nil
    }
}

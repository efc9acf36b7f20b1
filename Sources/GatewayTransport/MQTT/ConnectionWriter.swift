import GatewayCore
import MQTTCodec
import NIOCore

/// Writes one MQTT connection's outbound packets on its channel's event loop.
///
/// Deliveries are written from the routing side: when a session queues a message for an idle
/// connection, ``ChannelConnectionHandle/deliveryAvailable()`` runs ``drain()`` on the subscriber's event
/// loop (one `execute` per wake-up; the session wakes its owner once per empty-queue poll, so a burst
/// of messages costs one), and the packets go straight into the channel. The connection's task is not
/// woken and no `NIOAsyncWriter` is involved. Order is the session's queue order, and the queue is
/// drained only while the socket is writable: a slow reader's messages wait in its bounded queue,
/// where the overflow policy applies, not in NIO's write buffer.
///
/// Writes are coalesced: the packets written while the loop runs one job (a burst of inbound packets and
/// their acknowledgements, one drain) are encoded into one buffer, handed to the channel as one write and
/// flushed once (or at once past ``flushThreshold``). What the packets of one socket read answer on the
/// loop is flushed when the read completes (``beginReadBurst()``), and a delivery job flushes when its
/// drain ends (``drainAndFlush()``); anything else, the task's writes, by a job queued behind it. A
/// PUBLISH whose shared encoding is large goes to the channel as its own buffer, not copied.
///
/// # Thread safety
/// `@unchecked Sendable` because it holds the connection's ``ClientConnection``, which is not
/// `Sendable`. Every use happens on `channel.eventLoop`: the connection task runs there
/// (``EventLoopTaskExecutor``), and the writes it schedules are `execute`d there. One thread therefore
/// runs the task's protocol logic and the writes, never both at once. Debug builds check it.
final class ConnectionWriter: @unchecked Sendable {
    let channel: any Channel
    private let client: ClientConnection
    private let metrics: GatewayMetrics
    private var flushScheduled = false
    /// Set while the loop hands one socket read's packets to the connection, or runs one delivery job:
    /// what is written meanwhile is flushed when it ends, without a job of its own.
    private var inBurst = false
    /// Set once the server ends the connection (``stop()``): nothing more is written after its DISCONNECT.
    private var stopped = false
    /// Packets encoded since the last hand-over to the channel; nil between bursts (an idle connection
    /// holds no buffer).
    private var batch: ByteBuffer?
    /// Bytes handed to the channel and not flushed yet.
    private var unflushed = 0
    /// Past this many unflushed bytes (handed over or batched) a write flushes at once instead of waiting
    /// for the burst to end; it also bounds how far a drain runs past the channel's writability.
    private static let flushThreshold = 64 * 1024
    /// Shared encodings larger than this are handed to the channel as they are instead of copied.
    private static let copyLimit = 4 * 1024
    /// The first capacity of a burst's buffer: a few small packets (it grows as needed).
    private static let batchCapacity = 512

    init(channel: any Channel, connection: ClientConnection, metrics: GatewayMetrics) {
        self.channel = channel
        self.client = connection
        self.metrics = metrics
    }

    /// Encodes and writes `packet` (flushed at the end of the burst).
    func send(_ packet: MQTTPacket) {
        channel.eventLoop.assertInEventLoop()
        append(packet, version: client.version)
    }

    /// Writes what the connection has ready — acknowledgements, then queued deliveries — while the socket
    /// is writable. When it fills up this stops; the socket becoming writable again calls it once more.
    func drain() {
        channel.eventLoop.assertInEventLoop()
        guard channel.isActive, !stopped else { return }
        let version = client.version
        while channel.isWritable, let packet = client.nextOutboundPacket() {
            if case .publish(let publish) = packet {
                metrics.messageSent(qos: publish.qos, bytes: publish.payload.readableBytes)
            }
            append(packet, version: version)
        }
    }

    /// ``drain()`` as one burst, then the flush: the job that writes deliveries from the routing side (a
    /// job of its own, so never inside a read's burst).
    func drainAndFlush() {
        beginReadBurst()
        drain()
        endReadBurst()
    }

    /// The loop starts handing the packets of one socket read to the connection (``ConnectionInbound``).
    func beginReadBurst() {
        inBurst = true
    }

    /// The read completed (or the channel went away): flushes what its packets' answers wrote.
    func endReadBurst() {
        guard inBurst else { return }
        inBurst = false
        if batch != nil || unflushed > 0 { flush() }
    }

    /// ``drain()`` once CONNECT was accepted (before it there is nothing but the CONNACK to write, and
    /// that is written by the task).
    @inline(never)
    func drainIfConnected() {
        if client.isConnected { drain() }
    }

    /// Stops writing deliveries: the server is closing the connection (its DISCONNECT goes last). What
    /// was written before goes out first.
    func stop() {
        channel.eventLoop.assertInEventLoop()
        flush()
        stopped = true
    }

    /// Flushes now (before the connection closes).
    func flush() {
        channel.eventLoop.assertInEventLoop()
        handOver()
        unflushed = 0
        channel.flush()
    }

    /// Adds `packet` to the burst's buffer.
    private func append(_ packet: MQTTPacket, version: MQTTProtocolVersion) {
        if case .publish(let publish) = packet, publish.sharedEncoding != nil, publish.payload.readableBytes > Self.copyLimit {
            // Shared and large: its own buffer, behind what is batched.
            handOver()
            write(packet.encode(version: version, allocator: channel.allocator))
            return
        }
        if batch == nil { batch = channel.allocator.buffer(capacity: Self.batchCapacity) }
        packet.write(version: version, to: &batch!)
        if unflushed + batch!.readableBytes >= Self.flushThreshold {
            flush()
        } else if !inBurst {
            scheduleFlush()
        }
    }

    /// Hands the burst's buffer to the channel (unflushed).
    private func handOver() {
        guard let bytes = batch else { return }
        batch = nil
        unflushed += bytes.readableBytes
        channel.write(bytes, promise: nil)
    }

    private func write(_ bytes: ByteBuffer) {
        unflushed += bytes.readableBytes
        channel.write(bytes, promise: nil)
        if unflushed >= Self.flushThreshold {
            flush()
        } else if !inBurst {
            scheduleFlush()
        }
    }

    private func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        channel.eventLoop.execute {
            self.flushScheduled = false
            if self.batch != nil || self.unflushed > 0 { self.flush() }
        }
    }
}

extension ConnectionWriter {
    /// The connection, for a child task of the connection's own task (see
    /// ``MQTTConnectionRunner``'s `handleFirst`): the parent awaits the child, and both run on the
    /// channel's event loop.
    var connection: LoopBoundConnection { LoopBoundConnection(value: client) }
}

/// A ``ClientConnection`` handed to a child task of its connection task. `@unchecked Sendable` on the
/// same grounds as ``ConnectionWriter``: it is used on the channel's event loop only, by one task at a
/// time (the parent waits for the child).
struct LoopBoundConnection: @unchecked Sendable {
    let value: ClientConnection
}

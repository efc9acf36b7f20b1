import MQTTCodec
import NIOCore

/// What the connection task reads: a packet from the client, or a signal that there is something to
/// write (the session queued a message, or the socket became writable again).
///
/// Folding both into the one inbound stream lets a single task per connection both read and write,
/// without a second task (or a second async frame chain) per connection.
enum ConnectionInput: Sendable {
    case packet(MQTTPacket)
    case writable
}

/// Turns decoded packets into ``ConnectionInput/packet(_:)`` and delivery signals into
/// ``ConnectionInput/writable``.
final class ConnectionInputHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = MQTTPacket
    typealias InboundOut = ConnectionInput

    /// Fired (from any thread, via `pipeline.fireUserInboundEventTriggered`) when the session has
    /// messages for this connection.
    struct DeliverySignal: Sendable {}

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(wrapInboundOut(.packet(unwrapInboundIn(data))))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DeliverySignal {
            context.fireChannelRead(wrapInboundOut(.writable))
            context.fireChannelReadComplete()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            // The task stopped writing when the socket filled up; let it continue.
            context.fireChannelRead(wrapInboundOut(.writable))
            context.fireChannelReadComplete()
        }
        context.fireChannelWritabilityChanged()
    }
}

@available(*, unavailable)
extension ConnectionInputHandler: Sendable {}

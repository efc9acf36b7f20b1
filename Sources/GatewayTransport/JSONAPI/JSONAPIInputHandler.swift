import NIOCore

/// What a JSON API connection task reads: a text message from the client, or a signal that there is
/// something to write (the session queued a message, or the socket became writable again). The JSON
/// counterpart of ``ConnectionInput``.
enum JSONAPIInput: Sendable {
    case message(ByteBuffer)
    case writable
}

/// Turns whole text messages into ``JSONAPIInput/message(_:)`` and delivery signals (from
/// ``ChannelConnectionHandle``) and writability into ``JSONAPIInput/writable``.
final class JSONAPIInputHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = JSONAPIInput

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(wrapInboundOut(.message(unwrapInboundIn(data))))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ConnectionInputHandler.DeliverySignal {
            context.fireChannelRead(wrapInboundOut(.writable))
            context.fireChannelReadComplete()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.fireChannelRead(wrapInboundOut(.writable))
            context.fireChannelReadComplete()
        }
        context.fireChannelWritabilityChanged()
    }
}

@available(*, unavailable)
extension JSONAPIInputHandler: Sendable {}

import NIOCore

/// The input of a JSON API connection task, which both reads and writes: what the client sent, or
/// `writable` (the session queued a message, or the socket became writable again).
protocol TaskInput: Sendable {
    associatedtype Received
    static func received(_ value: Received) -> Self
    static var writable: Self { get }
}

/// Fired (from any thread, via `pipeline.fireUserInboundEventTriggered`, by ``ChannelConnectionHandle``)
/// when the session has messages for the connection.
struct DeliverySignal: Sendable {}

/// Turns what the pipeline decoded into ``TaskInput/received(_:)``, and delivery signals and the socket
/// becoming writable again into ``TaskInput/writable``, in the one inbound stream of a connection task.
final class TaskInputHandler<Input: TaskInput>: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Input.Received
    typealias InboundOut = Input

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(wrapInboundOut(.received(unwrapInboundIn(data))))
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
extension TaskInputHandler: Sendable {}

import MQTTCodec
import NIOCore

/// What the connection task reads: a packet from the client, or a signal that there is something to
/// write (the session queued a message, or the socket became writable again).
///
/// Folding both into the one inbound stream lets a single task per connection both read and write,
/// without a second task (or a second async frame chain) per connection.
enum ConnectionInput: TaskInput {
    case packet(MQTTPacket)
    case writable

    static func received(_ packet: MQTTPacket) -> ConnectionInput { .packet(packet) }
}

/// Turns decoded packets into ``ConnectionInput/packet(_:)`` and delivery signals into
/// ``ConnectionInput/writable``.
typealias ConnectionInputHandler = TaskInputHandler<ConnectionInput>

/// The input of a connection task that both reads and writes: what the client sent, or `writable`.
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

import NIOCore

/// What a JSON API connection task reads: a text message from the client, or a signal that there is
/// something to write (the session queued a message, or the socket became writable again). The JSON
/// counterpart of ``ConnectionInput``.
enum JSONAPIInput: TaskInput {
    case message(ByteBuffer)
    case writable

    static func received(_ message: ByteBuffer) -> JSONAPIInput { .message(message) }
}

/// Turns whole text messages into ``JSONAPIInput/message(_:)`` and delivery signals (from
/// ``ChannelConnectionHandle``) and writability into ``JSONAPIInput/writable``.
typealias JSONAPIInputHandler = TaskInputHandler<JSONAPIInput>

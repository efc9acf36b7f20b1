import NIOCore
import NIOWebSocket

/// The RFC 6455 rules of one upgraded WebSocket connection, without I/O: what to do with each frame
/// received, with each ping tick and with a request to close. ``WebSocketProtocolHandler`` performs the
/// actions it returns.
///
/// It enforces: masked client frames (RFC 6455 5.1), no reserved bits (no extension is negotiated),
/// continuation frames only inside a fragmented message, fragmented messages reassembled under
/// ``Configuration/maxMessageSize`` (1009 when over), valid UTF-8 in text messages (1007), the data
/// opcode the endpoint speaks (1003 otherwise), the close handshake with a valid code echoed, and
/// liveness: a ping after an idle interval, and the connection dropped when a second interval passes
/// without any frame.
struct WebSocketStateMachine {
    /// What the endpoint carries.
    enum Endpoint: Sendable {
        /// MQTT over WebSocket: binary frames are a byte stream (a packet may span frames, a frame may
        /// hold several packets), so frame data is passed on as it arrives, without reassembly.
        case mqttStream
        /// The JSON API: whole text messages.
        case textMessages
        /// The echo endpoint: whole text or binary messages, sent back with the same opcode.
        case echo
    }

    /// Limits of one connection.
    struct Configuration: Sendable {
        var endpoint: Endpoint
        /// The largest reassembled message, in bytes (not used for the MQTT byte stream, where the MQTT
        /// maximum packet size applies instead).
        var maxMessageSize: Int
    }

    /// What the handler must do after a frame.
    enum FrameAction: Equatable {
        /// Nothing to do.
        case none
        /// Pass this data on (a message, or for MQTT a piece of the byte stream).
        case deliver(ByteBuffer, opcode: WebSocketOpcode)
        /// Answer a ping.
        case sendPong(ByteBuffer)
        /// Send a close frame, then close the TCP connection once it is written.
        case sendCloseAndDisconnect(WebSocketErrorCode, reason: String)
        /// The peer answered our close: close the TCP connection.
        case disconnect
    }

    /// What the handler must do when the ping timer fires.
    enum TickAction: Equatable {
        case none
        case sendPing
        /// Nothing arrived for two intervals, not even a pong: the peer is gone.
        case disconnect
    }

    /// What the handler must do when the application (or shutdown) closes the connection.
    enum CloseAction: Equatable {
        /// Send a close frame and wait (bounded) for the peer's close.
        case sendClose(WebSocketErrorCode)
        /// The handshake is already under way or over.
        case alreadyClosing
    }

    private enum State {
        case open
        /// We sent a close frame; waiting for the peer's.
        case closing
        case closed
    }

    private enum Message {
        case none
        /// A fragmented message in progress; `buffer` is nil for the MQTT stream (not reassembled).
        case fragmented(opcode: WebSocketOpcode, buffer: ByteBuffer?)
    }

    let configuration: Configuration
    private var state = State.open
    private var message = Message.none
    private var heardSinceTick = false
    private var pingOutstanding = false

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Whether data frames may still be sent.
    var canSendData: Bool {
        if case .open = state { return true }
        return false
    }

    // MARK: Frames

    mutating func receive(_ frame: WebSocketFrame) -> FrameAction {
        switch state {
        case .closed:
            return .none
        case .open, .closing:
            break
        }
        heardSinceTick = true
        pingOutstanding = false
        guard let maskKey = frame.maskKey else {
            return fail(.protocolError, "client frames must be masked")
        }
        if frame.rsv1 || frame.rsv2 || frame.rsv3 {
            return fail(.protocolError, "reserved bits set without an extension")
        }
        var data = frame.data
        data.webSocketUnmask(maskKey)
        switch frame.opcode {
        case .ping:
            guard case .open = state else { return .none }
            return .sendPong(data)
        case .pong:
            return .none
        case .connectionClose:
            return receiveClose(data)
        case .text, .binary:
            guard case .open = state else { return .none }  // discard data after our close
            guard case .none = message else {
                return fail(.protocolError, "new message before the fragmented one ended")
            }
            return receiveData(opcode: frame.opcode, fin: frame.fin, data: data)
        case .continuation:
            guard case .open = state else { return .none }
            guard case .fragmented(let opcode, let buffer) = message else {
                return fail(.protocolError, "continuation frame outside a fragmented message")
            }
            return receiveContinuation(opcode: opcode, buffer: buffer, fin: frame.fin, data: data)
        default:
            return fail(.protocolError, "unknown opcode \(frame.opcode)")
        }
    }

    private mutating func receiveData(opcode: WebSocketOpcode, fin: Bool, data: ByteBuffer) -> FrameAction {
        switch (configuration.endpoint, opcode) {
        case (.mqttStream, .text):
            return fail(.unacceptableData, "MQTT over WebSocket uses binary frames")
        case (.textMessages, .binary):
            return fail(.unacceptableData, "the JSON API uses text frames")
        default:
            break
        }
        if case .mqttStream = configuration.endpoint {
            if !fin { message = .fragmented(opcode: opcode, buffer: nil) }
            return data.readableBytes > 0 ? .deliver(data, opcode: opcode) : .none
        }
        guard data.readableBytes <= configuration.maxMessageSize else {
            return fail(.messageTooLarge, "message larger than \(configuration.maxMessageSize) bytes")
        }
        if fin { return complete(opcode: opcode, data) }
        message = .fragmented(opcode: opcode, buffer: data)
        return .none
    }

    private mutating func receiveContinuation(
        opcode: WebSocketOpcode,
        buffer: ByteBuffer?,
        fin: Bool,
        data: ByteBuffer
    ) -> FrameAction {
        guard var buffer else {
            // MQTT stream: pass the piece on.
            if fin { message = .none }
            return data.readableBytes > 0 ? .deliver(data, opcode: opcode) : .none
        }
        guard buffer.readableBytes + data.readableBytes <= configuration.maxMessageSize else {
            message = .none
            return fail(.messageTooLarge, "message larger than \(configuration.maxMessageSize) bytes")
        }
        // Drop the reference held in `message` first so the append does not copy the storage.
        message = .none
        var data = data
        buffer.writeBuffer(&data)
        if fin { return complete(opcode: opcode, buffer) }
        message = .fragmented(opcode: opcode, buffer: buffer)
        return .none
    }

    private mutating func complete(opcode: WebSocketOpcode, _ data: ByteBuffer) -> FrameAction {
        message = .none
        if opcode == .text && !Self.isValidUTF8(data) {
            return fail(.dataInconsistentWithMessage, "text message is not valid UTF-8")
        }
        return .deliver(data, opcode: opcode)
    }

    private mutating func receiveClose(_ data: ByteBuffer) -> FrameAction {
        if case .closing = state {
            state = .closed
            return .disconnect
        }
        var data = data
        guard data.readableBytes != 1 else {
            return fail(.protocolError, "close frame with a one-byte payload")
        }
        guard let code = data.readInteger(as: UInt16.self) else {
            // No status code: answer with an empty close (RFC 6455 5.5.1) — 1000 is the closest code.
            state = .closed
            return .sendCloseAndDisconnect(.normalClosure, reason: "")
        }
        guard Self.isValidReceivedCloseCode(code) else {
            return fail(.protocolError, "invalid close code \(code)")
        }
        guard Self.isValidUTF8(data) else {
            return fail(.dataInconsistentWithMessage, "close reason is not valid UTF-8")
        }
        state = .closed
        return .sendCloseAndDisconnect(WebSocketErrorCode(codeNumber: Int(code)), reason: "")
    }

    /// Fails the connection (RFC 6455 7.1.7): send a close with `code`, then drop the TCP connection.
    private mutating func fail(_ code: WebSocketErrorCode, _ reason: String) -> FrameAction {
        state = .closed
        message = .none
        return .sendCloseAndDisconnect(code, reason: reason)
    }

    /// Maps a decoder error (oversized frame, fragmented control frame, …) to its close code.
    mutating func decoderFailed(_ error: NIOWebSocketError) -> FrameAction {
        guard case .open = state else { return .disconnect }
        switch error {
        case .invalidFrameLength:
            return fail(.messageTooLarge, "frame larger than the maximum message size")
        case .fragmentedControlFrame:
            return fail(.protocolError, "fragmented control frame")
        case .multiByteControlFrameLength:
            return fail(.protocolError, "control frame longer than 125 bytes")
        }
    }

    // MARK: Timers and closing

    /// Called every ping interval.
    mutating func tick() -> TickAction {
        guard case .open = state else { return .none }
        defer { heardSinceTick = false }
        if heardSinceTick { return .none }
        if pingOutstanding { return .disconnect }
        pingOutstanding = true
        return .sendPing
    }

    /// The application closes the connection with `code` (1000 normally, 1001 on shutdown).
    mutating func close(code: WebSocketErrorCode) -> CloseAction {
        guard case .open = state else { return .alreadyClosing }
        state = .closing
        message = .none
        return .sendClose(code)
    }

    /// The TCP connection is gone.
    mutating func closed() {
        state = .closed
        message = .none
    }

    // MARK: Helpers

    /// Close codes a peer may send (RFC 6455 7.4): 1000-1003, 1007-1011, 3000-4999.
    static func isValidReceivedCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011: true
        case 3000...4999: true
        default: false
        }
    }

    static func isValidUTF8(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes { String(validating: $0, as: UTF8.self) != nil }
    }
}

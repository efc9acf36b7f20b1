import NIOCore
import NIOWebSocket

/// The RFC 6455 rules of one upgraded WebSocket connection, without I/O: what to do with each frame
/// received, with each ping tick and with a request to close. ``WebSocketProtocolHandler`` performs the
/// actions it returns.
///
/// It enforces: masked client frames (RFC 6455 5.1), no reserved bits except RSV1 on the first frame of a
/// data message when permessage-deflate was negotiated (RFC 7692 6: 1002 otherwise), continuation frames
/// only inside a fragmented message, fragmented messages reassembled under
/// ``Configuration/maxMessageSize`` (1009 when over), valid UTF-8 in text messages (1007), the data
/// opcode the endpoint speaks (1003 otherwise), the close handshake with a valid code echoed, and
/// liveness: a ping after an idle interval, and the connection dropped when a second interval passes
/// without any frame.
///
/// Compressed messages (RSV1) are inflated frame by frame as they arrive through the connection's
/// ``PerMessageDeflate/Decompressor``, under the same bound as plain ones: a message that would inflate
/// past ``Configuration/maxMessageSize`` fails with 1009 as soon as the output passes it, without
/// inflating the rest (a decompression bomb costs at most the limit).
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
        /// The largest reassembled message, in bytes. For the MQTT byte stream (never reassembled, the
        /// MQTT maximum packet size bounds its packets) it bounds only what one compressed message may
        /// inflate to.
        var maxMessageSize: Int
        /// The permessage-deflate parameters agreed in the handshake; nil: not negotiated (RSV1 is then a
        /// protocol error).
        var deflate: PerMessageDeflate? = nil
        /// Counts the inflater's zlib context.
        var deflateBudget: DeflateContextBudget? = nil
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
        /// `inflated` counts what a compressed MQTT message has inflated to so far.
        case fragmented(opcode: WebSocketOpcode, buffer: ByteBuffer?, compressed: Bool, inflated: Int)
    }

    /// From the ``Configuration`` (whose deflate parameters only the decompressor keeps).
    let endpoint: Endpoint
    let maxMessageSize: Int
    private var state = State.open
    private var message = Message.none
    private var heardSinceTick = false
    private var pingOutstanding = false
    private var decompressor: PerMessageDeflate.Decompressor?

    init(configuration: Configuration) {
        self.endpoint = configuration.endpoint
        self.maxMessageSize = configuration.maxMessageSize
        self.decompressor = configuration.deflate.map {
            PerMessageDeflate.Decompressor(parameters: $0, budget: configuration.deflateBudget)
        }
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
        if frame.rsv2 || frame.rsv3 {
            return fail(.protocolError, "reserved bits set without an extension")
        }
        if frame.rsv1 {
            // RFC 7692 6: RSV1 marks a compressed message, on its first frame only.
            guard decompressor != nil else {
                return fail(.protocolError, "RSV1 set but permessage-deflate was not negotiated")
            }
            guard frame.opcode == .text || frame.opcode == .binary else {
                return fail(.protocolError, "RSV1 set on a control or continuation frame")
            }
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
            return receiveData(opcode: frame.opcode, fin: frame.fin, compressed: frame.rsv1, data: data)
        case .continuation:
            guard case .open = state else { return .none }
            guard case .fragmented(let opcode, let buffer, let compressed, let inflated) = message else {
                return fail(.protocolError, "continuation frame outside a fragmented message")
            }
            if compressed {
                return receiveCompressedContinuation(opcode: opcode, buffer: buffer, inflated: inflated, fin: frame.fin, data: data)
            }
            return receiveContinuation(opcode: opcode, buffer: buffer, fin: frame.fin, data: data)
        default:
            return fail(.protocolError, "unknown opcode \(frame.opcode)")
        }
    }

    private mutating func receiveData(opcode: WebSocketOpcode, fin: Bool, compressed: Bool, data: ByteBuffer) -> FrameAction {
        switch (endpoint, opcode) {
        case (.mqttStream, .text):
            return fail(.unacceptableData, "MQTT over WebSocket uses binary frames")
        case (.textMessages, .binary):
            return fail(.unacceptableData, "the JSON API uses text frames")
        default:
            break
        }
        if compressed {
            let buffer: ByteBuffer? = endpoint == .mqttStream ? nil : ByteBuffer()
            return receiveCompressedContinuation(opcode: opcode, buffer: buffer, inflated: 0, fin: fin, data: data)
        }
        if case .mqttStream = endpoint {
            if !fin { message = .fragmented(opcode: opcode, buffer: nil, compressed: false, inflated: 0) }
            return data.readableBytes > 0 ? .deliver(data, opcode: opcode) : .none
        }
        guard data.readableBytes <= maxMessageSize else {
            return fail(.messageTooLarge, "message larger than \(maxMessageSize) bytes")
        }
        if fin { return complete(opcode: opcode, data) }
        message = .fragmented(opcode: opcode, buffer: data, compressed: false, inflated: 0)
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
        guard buffer.readableBytes + data.readableBytes <= maxMessageSize else {
            message = .none
            return fail(.messageTooLarge, "message larger than \(maxMessageSize) bytes")
        }
        // Drop the reference held in `message` first so the append does not copy the storage.
        message = .none
        var data = data
        buffer.writeBuffer(&data)
        if fin { return complete(opcode: opcode, buffer) }
        message = .fragmented(opcode: opcode, buffer: buffer, compressed: false, inflated: 0)
        return .none
    }

    /// A frame of a compressed message (its first one too): inflated at once, into the reassembly
    /// buffer (text and echo) or passed on as a piece of the byte stream (MQTT, `buffer` nil).
    private mutating func receiveCompressedContinuation(
        opcode: WebSocketOpcode,
        buffer: ByteBuffer?,
        inflated: Int,
        fin: Bool,
        data: ByteBuffer
    ) -> FrameAction {
        // Drop the reference held in `message` first so inflating into the buffer does not copy it.
        message = .none
        var output = buffer ?? ByteBuffer()
        let before = output.readableBytes
        let limit = maxMessageSize - before - inflated
        switch decompressor!.inflate(data, fin: fin, into: &output, limit: limit) {
        case .inflated:
            break
        case .tooLarge:
            return fail(.messageTooLarge, "compressed message inflates past \(maxMessageSize) bytes")
        case .corrupt:
            return fail(.dataInconsistentWithMessage, "invalid compressed data")
        case .outOfMemory:
            return fail(.unexpectedServerError, "out of memory for decompression")
        }
        if buffer != nil {
            if fin { return complete(opcode: opcode, output) }
            message = .fragmented(opcode: opcode, buffer: output, compressed: true, inflated: 0)
            return .none
        }
        // MQTT stream: pass the inflated piece on.
        if !fin {
            message = .fragmented(opcode: opcode, buffer: nil, compressed: true, inflated: inflated + output.readableBytes - before)
        }
        return output.readableBytes > 0 ? .deliver(output, opcode: opcode) : .none
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
        decompressor?.release()
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
        decompressor?.release()
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

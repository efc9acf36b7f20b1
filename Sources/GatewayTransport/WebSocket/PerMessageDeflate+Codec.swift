import NIOCore

extension PerMessageDeflate {
    /// Compresses the messages one connection sends. Messages under the threshold go out as they are
    /// (RSV1 clear): a deflate block header and the flush cost more than they save on a few bytes.
    ///
    /// The zlib stream is made on the first compressed message, not at the handshake, so a connection
    /// that never sends anything large holds none. Without context takeover it lives for one message.
    /// A class: a connection without permessage-deflate holds a nil reference, not the inline space of
    /// its parameters and settings.
    final class Compressor {
        let parameters: PerMessageDeflate
        let settings: Settings
        /// Messages of at least this many bytes are compressed.
        let threshold: Int
        let budget: DeflateContextBudget?
        private var deflater: ZlibDeflater?

        init(parameters: PerMessageDeflate, settings: Settings = Settings(), threshold: Int, budget: DeflateContextBudget?) {
            self.parameters = parameters
            self.settings = settings
            self.threshold = threshold
            self.budget = budget
        }

        /// The payload to send with RSV1 set, or nil to send `message` uncompressed (under the threshold,
        /// or zlib could not allocate its state: compression is optional per message, RFC 7692 6).
        func compress(_ message: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer? {
            guard message.readableBytes >= threshold else { return nil }
            let deflater: ZlibDeflater
            if let existing = self.deflater {
                deflater = existing
            } else {
                do {
                    deflater = try ZlibDeflater(
                        windowBits: parameters.serverWindowBits,
                        memLevel: settings.memLevel,
                        level: settings.level,
                        budget: budget
                    )
                } catch {
                    return nil
                }
            }
            let compressed = deflater.compress(message, allocator: allocator)
            guard !parameters.serverNoContextTakeover else {
                // Without context takeover the stream is dropped (and freed) after each message, and a
                // message that did not shrink goes out as it is. (With takeover it cannot: the
                // compressor's history already holds it, so the peer's must too.)
                self.deflater = nil
                return compressed.readableBytes < message.readableBytes ? compressed : nil
            }
            self.deflater = deflater
            return compressed
        }

        /// The connection ended: free the stream.
        func release() {
            deflater = nil
        }
    }

    /// Inflates the compressed messages one connection receives, frame by frame: the frames of a message
    /// are one DEFLATE stream, ended by the `00 00 ff ff` RFC 7692 7.2.2 appends at the message end.
    /// A class for the same reason as ``Compressor``.
    final class Decompressor {
        let parameters: PerMessageDeflate
        let budget: DeflateContextBudget?
        private var inflater: ZlibInflater?
        private static let tail = ByteBuffer(bytes: [0x00, 0x00, 0xFF, 0xFF])

        init(parameters: PerMessageDeflate, budget: DeflateContextBudget?) {
            self.parameters = parameters
            self.budget = budget
        }

        /// Inflates the data of one frame of a compressed message (`fin`: its last frame), appending at
        /// most `limit` bytes to `output`.
        func inflate(_ data: ByteBuffer, fin: Bool, into output: inout ByteBuffer, limit: Int) -> ZlibInflater.Outcome {
            let inflater: ZlibInflater
            if let existing = self.inflater {
                inflater = existing
            } else {
                do {
                    inflater = try ZlibInflater(windowBits: parameters.clientWindowBits, budget: budget)
                } catch {
                    return .outOfMemory
                }
                self.inflater = inflater
            }
            let before = output.readableBytes
            var outcome = inflater.inflate(data, into: &output, limit: limit)
            if outcome == .inflated, fin {
                outcome = inflater.inflate(Self.tail, into: &output, limit: limit - (output.readableBytes - before))
            }
            if fin || outcome != .inflated { endMessage() }
            return outcome
        }

        /// The message ended (or failed): without context takeover the stream is freed.
        private func endMessage() {
            inflater?.endMessage()
            if parameters.clientNoContextTakeover { inflater = nil }
        }

        /// The connection ended: free the stream.
        func release() {
            inflater = nil
        }
    }
}

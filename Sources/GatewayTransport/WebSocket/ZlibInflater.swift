import CZlib
import NIOCore

/// One raw-DEFLATE decompression stream of the system zlib. Input comes in pieces (the frames of a
/// message, then the `00 00 ff ff` tail RFC 7692 7.2.2 appends); output is bounded: inflating stops as
/// soon as it would pass the caller's limit, so a small compressed message that expands to gigabytes
/// (a decompression bomb) costs at most the limit plus one byte of work and memory.
///
/// The `z_stream` is allocated once and never moves: zlib's state points back at it.
final class ZlibInflater {
    /// zlib could not allocate its state.
    struct InitializationFailed: Error {
        var code: Int32
    }

    /// How a piece of input went.
    enum Outcome: Equatable {
        /// Consumed; the output is appended.
        case inflated
        /// The output would pass the limit: inflating stopped there.
        case tooLarge
        /// Not valid DEFLATE data.
        case corrupt
        /// zlib ran out of memory.
        case outOfMemory
    }

    private let stream: UnsafeMutablePointer<z_stream>
    private let budget: DeflateContextBudget?
    /// The sender ended its DEFLATE stream (a block with BFINAL set): the rest of this message's input
    /// is ignored, and the next message starts a new stream (RFC 7692 7.2.3.3).
    private var streamEnded = false

    /// - Parameters:
    ///   - windowBits: the sender's LZ77 window, 8-15 (larger is always safe).
    ///   - budget: counts the context while it lives.
    init(windowBits: Int, budget: DeflateContextBudget?) throws(InitializationFailed) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let code = czlib_inflate_init_raw(stream, Int32(windowBits))
        guard code == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            throw InitializationFailed(code: code)
        }
        self.budget = budget
        budget?.contextAllocated()
    }

    deinit {
        inflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
        budget?.contextFreed()
    }

    /// Inflates `input`, appending to `output` at most `limit` bytes.
    ///
    /// Output space is handed to zlib in steps that never reach past `limit + 1` bytes; the one byte
    /// more is how a bomb is told from a message of exactly `limit` bytes.
    func inflate(_ input: ByteBuffer, into output: inout ByteBuffer, limit: Int) -> Outcome {
        if streamEnded { return .inflated }
        return input.withUnsafeReadableBytes { input in
            stream.pointee.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.pointee.avail_in = uInt(input.count)
            defer {
                stream.pointee.next_in = nil
                stream.pointee.next_out = nil
            }
            var produced = 0
            while true {
                // Grow geometrically, but never past one byte over the limit.
                let step = min(max(4096, output.readableBytes, input.count * 2), limit - produced + 1)
                var code: Int32 = Z_OK
                var filled = false
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: step) { space in
                    stream.pointee.next_out = space.bindMemory(to: Bytef.self).baseAddress
                    stream.pointee.avail_out = uInt(step)
                    code = CZlib.inflate(stream, Z_SYNC_FLUSH)
                    filled = stream.pointee.avail_out == 0
                    return step - Int(stream.pointee.avail_out)
                }
                produced += step - Int(stream.pointee.avail_out)
                if produced > limit { return .tooLarge }
                switch code {
                case Z_OK:
                    // Space left over: zlib has nothing more to give for this input.
                    if !filled { return .inflated }
                case Z_BUF_ERROR:
                    // No progress possible: the input is used up (more comes with the next frame).
                    return .inflated
                case Z_STREAM_END:
                    streamEnded = true
                    return .inflated
                case Z_MEM_ERROR:
                    return .outOfMemory
                default:
                    // Z_DATA_ERROR, Z_NEED_DICT (a raw stream has no dictionary), Z_STREAM_ERROR.
                    return .corrupt
                }
            }
        }
    }

    /// Bytes inflated over the stream's life (since the last BFINAL reset): how much work a bomb cost.
    var totalOut: Int { Int(stream.pointee.total_out) }

    /// The message ended: with context takeover the window stays; a stream the sender ended with BFINAL
    /// starts over.
    func endMessage() {
        if streamEnded {
            inflateReset(stream)
            streamEnded = false
        }
    }
}

@available(*, unavailable)
extension ZlibInflater: Sendable {}

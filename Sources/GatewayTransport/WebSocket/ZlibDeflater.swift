import CZlib
import NIOCore

/// One raw-DEFLATE compression stream of the system zlib, as permessage-deflate uses it: each message is
/// compressed and flushed with `Z_SYNC_FLUSH`, and the empty stored block that ends the flush
/// (`00 00 ff ff`) is removed (RFC 7692 7.2.1). Keeping one deflater for many messages is context
/// takeover; a deflater per message is `server_no_context_takeover`.
///
/// The `z_stream` is allocated once and never moves: zlib's state points back at it.
final class ZlibDeflater {
    /// zlib could not allocate its state.
    struct InitializationFailed: Error {
        var code: Int32
    }

    private let stream: UnsafeMutablePointer<z_stream>
    private let budget: DeflateContextBudget?

    /// - Parameters:
    ///   - windowBits: the LZ77 window, 9-15 (zlib cannot make raw DEFLATE with 8).
    ///   - memLevel: zlib's hash memory, 1-9; memory is about `2^(windowBits+2) + 2^(memLevel+9)` bytes.
    ///   - level: compression level, 0-9.
    ///   - budget: counts the context while it lives.
    init(windowBits: Int, memLevel: Int, level: Int, budget: DeflateContextBudget?) throws(InitializationFailed) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let code = czlib_deflate_init_raw(stream, Int32(level), Int32(windowBits), Int32(memLevel))
        guard code == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            throw InitializationFailed(code: code)
        }
        self.budget = budget
        budget?.contextAllocated()
    }

    deinit {
        deflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
        budget?.contextFreed()
    }

    /// Compresses one whole message: the DEFLATE blocks, ended by a sync flush whose `00 00 ff ff`
    /// tail is removed.
    func compress(_ message: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        // deflateBound covers the blocks; the sync flush adds at most a few bytes more.
        let bound = Int(deflateBound(stream, uLong(message.readableBytes))) + 16
        var output = allocator.buffer(capacity: bound)
        message.withUnsafeReadableBytes { input in
            stream.pointee.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.pointee.avail_in = uInt(input.count)
            // Z_SYNC_FLUSH is complete once a call leaves output space unused.
            var outputFull = true
            while outputFull {
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: 64) { space in
                    stream.pointee.next_out = space.bindMemory(to: Bytef.self).baseAddress
                    stream.pointee.avail_out = uInt(space.count)
                    let code = deflate(stream, Z_SYNC_FLUSH)
                    // Z_BUF_ERROR only says no progress was possible; nothing else can fail on a valid stream.
                    precondition(code == Z_OK || code == Z_BUF_ERROR, "deflate failed with \(code)")
                    outputFull = stream.pointee.avail_out == 0
                    return space.count - Int(stream.pointee.avail_out)
                }
            }
            stream.pointee.next_in = nil
            stream.pointee.next_out = nil
        }
        let tail = output.writerIndex - 4
        if tail >= output.readerIndex, output.getBytes(at: tail, length: 4) == [0x00, 0x00, 0xFF, 0xFF] {
            output.moveWriterIndex(to: tail)
        }
        return output
    }
}

@available(*, unavailable)
extension ZlibDeflater: Sendable {}

import NIOCore

/// The start of a packet or frame whose rest has not arrived, kept between reads by a handler that
/// decodes the byte stream itself (``ConnectionInbound``, ``WebSocketProtocolHandler``). Nothing is held
/// between whole packets or frames, so an idle connection keeps no bytes.
struct UnfinishedBytes {
    private var bytes: ByteBuffer?

    /// The storage held, in bytes (0: none).
    var capacity: Int { bytes?.storageCapacity ?? 0 }

    /// `read` with the held bytes in front of it; nothing is held afterwards.
    mutating func prepend(to read: ByteBuffer) -> ByteBuffer {
        // Taken out first, so that the held buffer is ours alone and is appended to in place.
        guard var held = bytes.take() else { return read }
        var read = read
        held.writeBuffer(&read)
        return held
    }

    /// Keeps what the decoder left unread in `buffer` (nothing, when it read everything).
    mutating func keep(_ buffer: ByteBuffer, allocator: ByteBufferAllocator) {
        guard buffer.readableBytes > 0 else { return }
        if buffer.readerIndex == 0 {
            // Only the start of one unit so far: keep it as it is.
            bytes = buffer
        } else {
            // Whole units were taken from the front: keep only the rest, in storage of its own. Kept in
            // place, a buffer appended to at the back and read at the front would never shrink, and a
            // slice would hold the whole read buffer.
            var rest = allocator.buffer(capacity: buffer.readableBytes)
            rest.writeImmutableBuffer(buffer)
            bytes = rest
        }
    }

    mutating func drop() {
        bytes = nil
    }
}

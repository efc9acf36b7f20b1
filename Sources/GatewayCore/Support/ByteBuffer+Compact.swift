import NIOCore

extension ByteBuffer {
    /// This buffer's bytes in storage of their own size, when it is a small slice of a large buffer.
    ///
    /// A decoded payload is a slice of the socket's read buffer. Queued for a slow subscriber or for
    /// storage, a 100-byte slice would keep the whole (up to 64 KiB) read buffer alive, and the queues'
    /// byte caps, which count readable bytes, would no longer bound memory. One copy at receipt
    /// prevents that.
    func compacted() -> ByteBuffer {
        guard storageCapacity > 2 * readableBytes + 256 else { return self }
        var copy = ByteBufferAllocator().buffer(capacity: readableBytes)
        copy.writeImmutableBuffer(self)
        return copy
    }
}

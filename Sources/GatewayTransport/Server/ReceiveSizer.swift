import NIOCore

/// How much a connection's socket reads at a time: doubles after a read that filled the buffer (up to
/// ``maximum``), halves after two reads in a row that used at most half of it (down to ``minimum``).
///
/// NIO's `AdaptiveRecvByteBufferAllocator` does the same with more state than fits in an existential's
/// inline storage, so each channel's first read boxed its own copy on the heap (about 64 bytes per
/// connection, for its life). This one is 13 bytes and stays inline.
struct ReceiveSizer: RecvByteBufferAllocator {
    private var next: UInt32
    private let minimum: UInt32
    private let maximum: UInt32
    private var decreaseNow = false

    /// - Parameters: sizes in bytes, powers of two with `minimum <= initial <= maximum`.
    init(minimum: Int, initial: Int, maximum: Int) {
        precondition(minimum > 0 && minimum <= initial && initial <= maximum && maximum <= Int(UInt32.max) / 2)
        self.minimum = UInt32(minimum)
        self.next = UInt32(initial)
        self.maximum = UInt32(maximum)
    }

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(capacity: Int(next))
    }

    func nextBufferSize() -> Int? {
        Int(next)
    }

    mutating func record(actualReadBytes: Int) -> Bool {
        let half = next / 2
        if actualReadBytes <= Int(half) && half >= minimum {
            if decreaseNow {
                next = half
                decreaseNow = false
            } else {
                decreaseNow = true
            }
            return false
        }
        decreaseNow = false
        if actualReadBytes >= Int(next) && next * 2 <= maximum {
            next *= 2
            return true
        }
        return false
    }
}

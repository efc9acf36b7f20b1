import NIOCore
import Testing

@testable import GatewayTransport

@Suite("Receive sizes")
struct ReceiveSizerTests {
    /// Whether the next buffer may be larger (`#expect` cannot call a mutating method itself).
    private func record(_ sizer: inout ReceiveSizer, _ bytes: Int) -> Bool {
        sizer.record(actualReadBytes: bytes)
    }

    @Test func growsAfterFullReadsUpToTheMaximum() {
        var sizer = ReceiveSizer(minimum: 64, initial: 128, maximum: 1024)
        #expect(sizer.nextBufferSize() == 128)
        #expect(record(&sizer, 128))
        #expect(sizer.nextBufferSize() == 256)
        #expect(record(&sizer, 256))
        #expect(record(&sizer, 512))
        #expect(sizer.nextBufferSize() == 1024)
        #expect(!record(&sizer, 1024))
        #expect(sizer.nextBufferSize() == 1024)
        #expect(sizer.buffer(allocator: ByteBufferAllocator()).capacity >= 1024)
    }

    @Test func shrinksAfterTwoSmallReadsInARowDownToTheMinimum() {
        var sizer = ReceiveSizer(minimum: 64, initial: 256, maximum: 1024)
        #expect(!record(&sizer, 10))
        #expect(sizer.nextBufferSize() == 256)
        // A read between the two resets the count.
        #expect(!record(&sizer, 200))
        #expect(!record(&sizer, 10))
        #expect(sizer.nextBufferSize() == 256)
        #expect(!record(&sizer, 10))
        #expect(sizer.nextBufferSize() == 128)
        for _ in 0..<6 { _ = sizer.record(actualReadBytes: 0) }
        #expect(sizer.nextBufferSize() == 64)
    }

    /// Small enough to sit in an existential's inline storage: NIO would otherwise box a copy per channel.
    @Test func fitsInline() {
        #expect(MemoryLayout<ReceiveSizer>.size <= 3 * MemoryLayout<Int>.size)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What every fuzz target shares: the libFuzzer driver entry, a replay entry for builds without
/// libFuzzer, and a deterministic way to cut an input into chunks.

/// The signature libFuzzer calls once per input.
public typealias FuzzTestOneInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: FuzzTestOneInput
) -> CInt
#endif

public enum FuzzDriver {
    #if FUZZING
    /// Hands the process to libFuzzer (only linked in with `-sanitize=fuzzer`).
    public static func run(
        argc: CInt,
        argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>,
        _ callback: FuzzTestOneInput
    ) -> CInt {
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv, callback)
    }
    #endif

    /// Runs `callback` on each file named on the command line: a build without libFuzzer can still
    /// reproduce a crash under a debugger.
    public static func replay(_ callback: FuzzTestOneInput) -> CInt {
        for path in CommandLine.arguments.dropFirst() {
            guard let bytes = readFile(path) else {
                print("cannot read \(path)")
                return 1
            }
            _ = bytes.withUnsafeBufferPointer { callback($0.baseAddress, $0.count) }
            print("ran \(path) (\(bytes.count) bytes)")
        }
        return 0
    }

    private static func readFile(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }
}

/// Cuts a byte stream into chunks whose sizes follow from a seed, so one input explores both a packet
/// split across reads and several packets in one read, reproducibly.
public struct Chunker {
    private var state: UInt32

    public init(seed: UInt8) {
        state = UInt32(seed) &* 2_654_435_761 | 1
    }

    /// The chunks of `bytes`, in order, covering every byte once.
    public mutating func chunks(of bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var start = bytes.startIndex
        while start < bytes.endIndex {
            // xorshift32: sizes 1...64 mostly, sometimes the whole rest.
            state ^= state << 13
            state ^= state >> 17
            state ^= state << 5
            let size = state % 8 == 0 ? bytes.endIndex - start : Int(state % 64) + 1
            let end = min(bytes.endIndex, start + size)
            result.append(bytes[start..<end])
            start = end
        }
        return result
    }
}

/// A property every input must keep. Unlike `precondition`, the message survives `-O`, so a crash
/// found by a release-built fuzzer says what broke.
public func check(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition { fatalError(message(), file: file, line: line) }
}

/// A property broken unconditionally (see ``check(_:_:file:line:)``).
public func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    fatalError(message, file: file, line: line)
}

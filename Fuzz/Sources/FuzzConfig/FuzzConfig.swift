import FuzzSupport
import GatewayConfig
import Glibc

/// The configuration loader, YAML and JSON: whatever the file holds, loading either succeeds or throws
/// a ``ConfigError`` that names the file; it never crashes.
///
/// Input: byte 0 chooses the syntax (even: YAML, odd: JSON), the rest is the file's text.
enum FuzzConfig {
    static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 1 else { return }
        let path = input[0] & 1 == 0 ? "/etc/iotgw/fuzz.yaml" : "/etc/iotgw/fuzz.json"
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: input.dropFirst()), as: UTF8.self)
        do {
            let config = try ConfigLoader.decode(text, path: path)
            check(config.validationErrors().isEmpty, "a loaded configuration has validation errors")
        } catch {
            check(error.file == path, "the error names \(error.file), not \(path)")
            check(!error.message.isEmpty, "an error without a message")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzConfig.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

#if FUZZING
@_cdecl("FuzzConfig_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    FuzzDriver.run(argc: argc, argv: argv, fuzzTestOneInput)
}
#else
@main
enum Replay {
    static func main() { exit(FuzzDriver.replay(fuzzTestOneInput)) }
}
#endif

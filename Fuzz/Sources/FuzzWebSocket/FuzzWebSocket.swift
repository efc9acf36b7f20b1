@testable import GatewayTransport
import FuzzSupport
import Glibc
import NIOCore
import NIOEmbedded

/// The WebSocket listener's pipeline (HTTP/1.1 request parsing, the upgrade decision, the frame decoder
/// and ``WebSocketStateMachine`` behind each endpoint), exactly as a listener configures it, on an
/// `EmbeddedChannel`.
///
/// Input: byte 0 chooses what comes first (nothing: the fuzzer writes the HTTP request itself; or a
/// valid upgrade request to the MQTT, JSON or echo endpoint, with or without a permessage-deflate offer,
/// so the rest exercises frames, compressed ones included), byte 1 seeds
/// how the rest is cut into reads. Afterwards the clock moves on past the ping and connect timers.
enum FuzzWebSocket {
    static let configuration = WebSocketConfiguration(
        echoPath: "/echo",
        maxMessageSize: 4096,
        pingInterval: 1,
        // permessage-deflate on every endpoint, every message compressed, contexts kept: the inflate
        // path (and its bound at maxMessageSize) sees everything the fuzzer sends with RSV1 set.
        compression: .init(mqtt: true, json: true, echo: true, threshold: 0, maxContexts: 1000)
    )

    static let peer = try! SocketAddress(ipAddress: "127.0.0.1", port: 40000)

    static let prefixes: [[UInt8]] = [
        [],
        upgrade(path: "/mqtt", extra: "Sec-WebSocket-Protocol: mqtt\r\n"),
        upgrade(path: "/ws?client_id=fuzz", extra: "Authorization: Basic dXNlcjpwYXNz\r\n"),
        upgrade(path: "/echo", extra: ""),
        upgrade(path: "/mqtt", extra: "Sec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
        upgrade(path: "/ws", extra: "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover, permessage-deflate\r\n"),
        upgrade(path: "/echo", extra: "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10; server_max_window_bits=12\r\n"),
    ]

    static func upgrade(path: String, extra: String) -> [UInt8] {
        Array((
            "GET \(path) HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\(extra)\r\n"
        ).utf8)
    }

    static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return }
        let bytes = prefixes[Int(input[0]) % prefixes.count] + Array(input)[2...]
        let channel = EmbeddedChannel()
        // An accepted connection is active before its first read.
        _ = channel.connect(to: peer)
        let pipeline = WebSocketPipeline(webSocket: configuration, connectTimeout: .seconds(5), maxPacketSize: 4096)
        do {
            _ = try pipeline.configure(channel)
        } catch {
            fail("the pipeline cannot be configured: \(error)")
        }
        var chunker = Chunker(seed: input[1])
        for chunk in chunker.chunks(of: bytes[...]) {
            guard channel.isActive else { break }
            // Errors reaching the end of the pipeline are what a listener logs and closes on.
            _ = try? channel.writeInbound(ByteBuffer(bytes: chunk))
            channel.embeddedEventLoop.run()
        }
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzWebSocket.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

#if FUZZING
@_cdecl("FuzzWebSocket_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    FuzzDriver.run(argc: argc, argv: argv, fuzzTestOneInput)
}
#else
@main
enum Replay {
    static func main() { exit(FuzzDriver.replay(fuzzTestOneInput)) }
}
#endif

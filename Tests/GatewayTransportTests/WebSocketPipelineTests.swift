import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import GatewayTransport

/// The WebSocket listener's pipeline on an `EmbeddedChannel`, fed what a hostile or careless client
/// sends before (or instead of) a clean upgrade: none of it may reach a handler of the wrong type (a
/// type mismatch in a pipeline is a process-wide fatal error), and each ends in an HTTP answer or a close.
@Suite("WebSocket handshake pipeline")
struct WebSocketPipelineTests {
    static let configuration = WebSocketConfiguration(echoPath: "/echo", maxMessageSize: 4096, pingInterval: 0)

    /// Feeds `request` to a fresh pipeline in one read (or byte by byte) and returns what the server wrote.
    private func exchange(_ request: String, byteByByte: Bool = false) throws -> (written: String, open: Bool, bytes: [UInt8]) {
        let channel = EmbeddedChannel()
        _ = channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40000))
        let pipeline = WebSocketPipeline(webSocket: Self.configuration, connectTimeout: .seconds(5), maxPacketSize: 4096)
        _ = try pipeline.configure(channel)
        let bytes = Array(request.utf8)
        let chunks = byteByByte ? bytes.map { [$0] } : [bytes]
        for chunk in chunks where channel.isActive {
            _ = try? channel.writeInbound(ByteBuffer(bytes: chunk))
            channel.embeddedEventLoop.run()
        }
        // A close waits (lingers) so the peer can read the answer: let that time pass.
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        let open = channel.isActive
        var written = ByteBuffer()
        while let part = try channel.readOutbound(as: ByteBuffer.self) { written.writeImmutableBuffer(part) }
        channel.close(promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        _ = try? channel.finish(acceptAlreadyClosed: true)
        return (String(decoding: written.readableBytesView, as: UTF8.self), open, Array(written.readableBytesView))
    }

    private static func upgradeRequest(connection: String?, extra: String = "") -> String {
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + (connection.map { "Connection: \($0)\r\n" } ?? "")
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
    }

    /// Fuzz/Regressions/websocket/websocket-crash-dc3e451...: Upgrade headers without `Connection:
    /// Upgrade`, a body and a second request. NIO's upgrader accepted it while its HTTP decoder went on
    /// parsing, and the parts it buffered reached the frame decoder (fatal error). Now: 400, closed.
    @Test(arguments: [false, true])
    func upgradeWithoutConnectionUpgradeIsRefused(byteByByte: Bool) throws {
        let request = Self.upgradeRequest(connection: nil, extra: "Content-Length: 3\r\n") + "abcGET / HTTP/1.1\r\nHost: x\r\n\r\n"
        let (written, open, _) = try exchange(request, byteByByte: byteByByte)
        #expect(written.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(written.contains("needs Connection: Upgrade"))
        #expect(!open)
    }

    @Test(arguments: ["keep-alive", "upgrade-ish", "keep-alive, upgradex"])
    func connectionWithoutTheUpgradeTokenIsRefused(connection: String) throws {
        let (written, _, _) = try exchange(Self.upgradeRequest(connection: connection))
        #expect(written.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
    }

    @Test(arguments: ["Upgrade", "keep-alive, Upgrade", "keep-alive,upgrade", "UPGRADE"])
    func connectionWithTheUpgradeTokenUpgrades(connection: String) throws {
        let (written, open, _) = try exchange(Self.upgradeRequest(connection: connection))
        #expect(written.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        #expect(open)
    }

    /// A body on an upgrade request that does ask for it, then a pipelined request: the HTTP decoder stops
    /// after the body, so what follows reaches the frame decoder as bytes (a protocol error, 1002 and
    /// close), never as HTTP parts.
    @Test(arguments: [false, true])
    func pipelinedRequestAfterAnUpgradeIsAFrameError(byteByByte: Bool) throws {
        // "GE" reads as a frame header announcing 69 bytes (RSV1 set, a reserved opcode): pad to complete it.
        let second = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + String(repeating: "a", count: 80) + "\r\n\r\n"
        let request = Self.upgradeRequest(connection: "Upgrade", extra: "Content-Length: 3\r\n") + "abc" + second
        let (written, open, bytes) = try exchange(request, byteByByte: byteByByte)
        #expect(written.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        // After the 101: a close frame with status 1002 (protocol error).
        let afterHead = bytes.firstRange(of: Array("\r\n\r\n".utf8)).map { bytes[$0.upperBound...] } ?? []
        #expect(afterHead.count > 4 && afterHead.starts(with: [0x88]) && afterHead.dropFirst(2).starts(with: [0x03, 0xEA]))
        #expect(!open)
    }

    /// The guard itself: HTTP parts replayed after an upgrade close the connection and go no further;
    /// bytes pass; with no upgrade handler left it leaves at the end of a read.
    @Test func leftoverGuardDropsHTTPPartsAndLeaves() throws {
        let reached = ByteCollector()
        let channel = EmbeddedChannel(handlers: [UpgradeLeftoverGuard(), reached])
        _ = channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40000))
        #expect(throws: WebSocketHandshakeError.self) {
            try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")))
        }
        #expect(!channel.isActive)
        #expect(reached.bytes.isEmpty)
        // No upgrade handler in this pipeline: the guard left at the end of that read.
        #expect((try? channel.pipeline.syncOperations.handler(type: UpgradeLeftoverGuard.self)) == nil)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test func leftoverGuardPassesBytes() throws {
        let reached = ByteCollector()
        let channel = EmbeddedChannel(handlers: [UpgradeLeftoverGuard(), reached])
        try channel.writeInbound(ByteBuffer(string: "frame"))
        #expect(reached.bytes == Array("frame".utf8))
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}

/// The bytes that reached the end of a pipeline.
private final class ByteCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var bytes: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytes += Self.unwrapInboundIn(data).readableBytesView
    }
}

import NIOCore
import NIOHTTP1

/// The WebSocket endpoints of the `ws` and `wss` listeners.
public struct WebSocketConfiguration: Sendable, Hashable {
    /// The MQTT-over-WebSocket path (subprotocol `mqtt` or `mqttv3.1`). Default `/mqtt`.
    public var mqttPath: String
    /// The JSON API path. Default `/ws`.
    public var jsonPath: String
    /// The echo endpoint's path, for RFC 6455 conformance tools; nil (the default) disables it.
    public var echoPath: String?
    /// The largest WebSocket message (after reassembling fragments), in bytes; larger ones are
    /// refused with close code 1009. Default 1 MiB.
    public var maxMessageSize: Int
    /// Seconds of silence after which the server pings a client; a client silent for a second
    /// interval is disconnected. 0 disables pings. Default 30.
    public var pingInterval: Double
    /// `Origin` values allowed to upgrade; empty (the default) allows any. Requests without an
    /// `Origin` header (non-browser clients) are always allowed.
    public var allowedOrigins: [String]
    /// permessage-deflate (RFC 7692): where it is offered, the threshold and the memory bound.
    public var compression: Compression

    public init(
        mqttPath: String = "/mqtt",
        jsonPath: String = "/ws",
        echoPath: String? = nil,
        maxMessageSize: Int = 1_048_576,
        pingInterval: Double = 30,
        allowedOrigins: [String] = [],
        compression: Compression = Compression()
    ) {
        self.mqttPath = mqttPath
        self.jsonPath = jsonPath
        self.echoPath = echoPath
        self.maxMessageSize = maxMessageSize
        self.pingInterval = pingInterval
        self.allowedOrigins = allowedOrigins
        self.compression = compression
    }

    /// permessage-deflate per endpoint, and its bounds.
    public struct Compression: Sendable, Hashable {
        /// Accept permessage-deflate on the MQTT endpoint. Default false: MQTT payloads are mostly
        /// small or binary, and devices are many (each compressing connection may hold zlib contexts).
        public var mqtt: Bool
        /// Accept it on the JSON API. Default true: JSON text shrinks several times, and browsers offer it.
        public var json: Bool
        /// Accept it on the echo endpoint (for conformance tools). Default true.
        public var echo: Bool
        /// Messages sent of at least this many bytes are compressed; smaller ones go out as they are.
        /// Default 64. With context takeover even a 250-byte JSON message shrinks about tenfold (the
        /// history holds its keys), so the threshold is low; below 64 bytes the saving is a few bytes.
        public var threshold: Int
        /// How many connections may keep zlib contexts between messages (context takeover); past it, new
        /// connections get no context takeover either way. Shared by the ws and wss listeners.
        public let budget: DeflateContextBudget
        /// The compressor's and decompressor's windows, memLevel and level.
        var settings = PerMessageDeflate.Settings()

        /// - Parameters:
        ///   - mqtt: offer it on MQTT over WebSocket. Default false.
        ///   - json: on the JSON API. Default true.
        ///   - echo: on the echo endpoint. Default true.
        ///   - threshold: smallest message compressed, in bytes. Default 64.
        ///   - maxContexts: connections that may use context takeover at once. Default 1000 (at
        ///     most about 110 KiB each: roughly 110 MiB in all).
        public init(mqtt: Bool = false, json: Bool = true, echo: Bool = true, threshold: Int = 64, maxContexts: Int = 1000) {
            self.mqtt = mqtt
            self.json = json
            self.echo = echo
            self.threshold = threshold
            self.budget = DeflateContextBudget(limit: maxContexts)
        }

        /// The same switches, compression off on every endpoint.
        public static var disabled: Compression { Compression(mqtt: false, json: false, echo: false) }

        func isEnabled(for endpoint: Endpoint) -> Bool {
            switch endpoint {
            case .mqtt: mqtt
            case .json: json
            case .echo: echo
            }
        }
    }

    /// Which endpoint an upgrade request reached.
    enum Endpoint: Sendable {
        case mqtt
        case json
        case echo
    }

    /// What to do with an HTTP request to the WebSocket listener.
    enum Decision: Equatable {
        /// Upgrade, answering with `subprotocol` when one was chosen.
        case upgrade(subprotocol: String?)
        /// Refuse with this status.
        case refuse(HTTPResponseStatus, String)
    }

    /// Whether the request's Connection header carries the `upgrade` token (RFC 6455 4.2.1 item 4).
    /// NIO's upgrade handler does not check it, while its HTTP decoder stops parsing at a request only
    /// when it is there: an upgrade without it would leave the decoder parsing what follows as HTTP.
    static func asksForUpgrade(_ head: HTTPRequestHead) -> Bool {
        head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    /// The endpoint for a request path (the query string is ignored).
    func endpoint(forURI uri: String) -> Endpoint? {
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? uri
        if path == mqttPath { return .mqtt }
        if path == jsonPath { return .json }
        if let echoPath, path == echoPath { return .echo }
        return nil
    }

    /// Decides whether an upgrade request may proceed: known path, allowed origin, acceptable
    /// subprotocol (MQTT requires `mqtt` or `mqttv3.1`).
    func decide(_ head: HTTPRequestHead) -> Decision {
        guard let endpoint = endpoint(forURI: head.uri) else {
            return .refuse(.notFound, "no WebSocket endpoint at this path")
        }
        if !allowedOrigins.isEmpty, let origin = head.headers.first(name: "origin"), !allowedOrigins.contains(origin) {
            return .refuse(.forbidden, "origin not allowed")
        }
        guard case .mqtt = endpoint else { return .upgrade(subprotocol: nil) }
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.lowercased() }
        if offered.contains("mqtt") { return .upgrade(subprotocol: "mqtt") }
        if offered.contains("mqttv3.1") { return .upgrade(subprotocol: "mqttv3.1") }
        return .refuse(.badRequest, "MQTT over WebSocket requires the subprotocol mqtt (or mqttv3.1)")
    }
}

/// What the JSON API takes from the upgrade request: the client id (`client_id` query parameter) and
/// HTTP Basic credentials.
struct JSONAPIRequest: Sendable {
    var clientID: String?
    var username: String?
    var password: [UInt8]?

    init(head: HTTPRequestHead) {
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if kv.count == 2, Self.percentDecode(kv[0]) == "client_id", let value = Self.percentDecode(kv[1]), !value.isEmpty {
                    clientID = value
                }
            }
        }
        if let authorization = head.headers.first(name: "authorization") {
            let fields = authorization.split(separator: " ", maxSplits: 1)
            if fields.count == 2, fields[0].lowercased() == "basic",
                let decoded = Base64.decode(Array(fields[1].trimmingPrefix(" ").utf8))
            {
                if let colon = decoded.firstIndex(of: UInt8(ascii: ":")) {
                    username = String(decoding: decoded[..<colon], as: UTF8.self)
                    password = Array(decoded[(colon + 1)...])
                } else {
                    username = String(decoding: decoded, as: UTF8.self)
                }
            }
        }
    }

    /// Decodes `%XX` escapes and `+` (as a space); nil when an escape is malformed or the result is
    /// not UTF-8.
    static func percentDecode(_ text: Substring) -> String? {
        var out: [UInt8] = []
        var bytes = text.utf8.makeIterator()
        while let b = bytes.next() {
            switch b {
            case UInt8(ascii: "%"):
                guard let h = bytes.next(), let l = bytes.next(), let hi = hexValue(h), let lo = hexValue(l) else { return nil }
                out.append(hi << 4 | lo)
            case UInt8(ascii: "+"):
                out.append(UInt8(ascii: " "))
            default:
                out.append(b)
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Answers an HTTP request that was not upgraded (wrong path, refused origin or subprotocol, or no
/// upgrade asked for) with a short plain-text error, then closes the connection.
final class HTTPRefusalHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let configuration: WebSocketConfiguration
    private var status = HTTPResponseStatus.badRequest
    private var message = "bad request"
    private var answered = false

    /// - Parameter refusal: the decision of a refused upgrade. The upgrade handler consumes the
    ///   request head of a refused upgrade, so this handler sees only the end of that request.
    init(configuration: WebSocketConfiguration, refusal: WebSocketConfiguration.Decision?) {
        self.configuration = configuration
        if case .refuse(let status, let message) = refusal {
            self.status = status
            self.message = message
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            switch configuration.decide(head) {
            case .refuse(let status, let message):
                self.status = status
                self.message = message
            case .upgrade:
                // A known endpoint, but the request did not ask for (or failed) the upgrade.
                status = .upgradeRequired
                message = "this endpoint speaks WebSocket only"
            }
        case .body:
            break
        case .end:
            respond(context: context)
        }
    }

    private func respond(context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        var headers = HTTPHeaders()
        let body = ByteBuffer(string: message + "\n")
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: "connection", value: "close")
        if status == .upgradeRequired {
            headers.add(name: "upgrade", value: "websocket")
        }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension HTTPRefusalHandler: Sendable {}

/// The echo endpoint: every message goes back with its own opcode (``WebSocketProtocolHandler`` picks
/// the opcode of the message being answered).
final class WebSocketEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

@available(*, unavailable)
extension WebSocketEchoHandler: Sendable {}

/// The permessage-deflate extension (RFC 7692) agreed for one connection, and how it is agreed.
///
/// Negotiation (RFC 7692 5 and 7.1): the client lists offers in order of preference; the server accepts
/// the first `permessage-deflate` offer it can honour and answers with one element naming the agreed
/// parameters. An offer is declined (the next one is tried) when it has a parameter RFC 7692 does not
/// define for offers, a parameter twice, a value where none belongs or a bad one (window bits are `8`
/// to `15`, written without leading zeros, bare or quoted), or asks for what this server cannot do:
/// `server_max_window_bits=8`, since zlib makes no raw DEFLATE with a 256-byte window.
///
/// What the server answers, parameter by parameter:
/// - `server_no_context_takeover`: answered when offered (it MUST be, 7.1.1.1), and added on the
///   server's own account when the ``DeflateContextBudget`` is spent (MAY, same section).
/// - `client_no_context_takeover`: offered, it is the client's hint that it will not use context
///   takeover anyway, and it is echoed so the inflater is freed after each message; added on the
///   server's own account when the budget is spent (MAY, 7.1.1.2).
/// - `server_max_window_bits=N`: offered, the server compresses with the smaller of N and its own
///   window and answers that value (it must answer one no larger, 7.1.2.1). Not offered, the server
///   compresses with its own, smaller window without saying so: any window up to 15 bits is decodable.
/// - `client_max_window_bits`: offered (bare, or with N), the server answers
///   ``Settings/clientWindowBits`` or N if smaller, and inflates with that window; not offered, the
///   answer MUST NOT name it (7.1.2.2) and the server inflates with the full 15-bit window.
struct PerMessageDeflate: Sendable, Equatable {
    /// The server's compression and window choices. The defaults trade a little ratio for memory: zlib's
    /// defaults (window 15, memLevel 8) cost 256 KiB per compressor, these about 64 KiB.
    struct Settings: Sendable, Hashable {
        /// The window the server compresses with, 9-15. Default 13 (8 KiB: a few dozen JSON telemetry
        /// messages of history for context takeover).
        var serverWindowBits = 13
        /// The window the server asks clients that allow it to compress with, 8-15; it is the size of
        /// the inflater's window. Default 13.
        var clientWindowBits = 13
        /// zlib's memLevel for the compressor, 1-9. Default 6 (32 KiB of hash tables instead of 128 KiB
        /// at 8; JSON compresses nearly as well).
        var memLevel = 6
        /// zlib's compression level, 1-9. Default 6, zlib's own default.
        var level = 6
    }

    /// The server resets its compressor after every message (its context is freed between messages).
    var serverNoContextTakeover = false
    /// The client resets its compressor after every message, so the server's inflater is freed too.
    var clientNoContextTakeover = false
    /// The window the server compresses with.
    var serverWindowBits: Int
    /// The window of the client's compressor: the server's inflater window.
    var clientWindowBits: Int
    /// `server_max_window_bits` in the answer (nil: not named).
    var answeredServerMaxWindowBits: Int?
    /// `client_max_window_bits` in the answer (nil: not named).
    var answeredClientMaxWindowBits: Int?

    /// Whether any zlib context outlives a message on this connection.
    var usesContextTakeover: Bool { !serverNoContextTakeover || !clientNoContextTakeover }

    /// The `Sec-WebSocket-Extensions` response value.
    var responseHeaderValue: String {
        var value = "permessage-deflate"
        if serverNoContextTakeover { value += "; server_no_context_takeover" }
        if clientNoContextTakeover { value += "; client_no_context_takeover" }
        if let bits = answeredServerMaxWindowBits { value += "; server_max_window_bits=\(bits)" }
        if let bits = answeredClientMaxWindowBits { value += "; client_max_window_bits=\(bits)" }
        return value
    }

    /// Neither side keeps a context between messages (the server may impose both, RFC 7692 7.1.1).
    mutating func dropContextTakeover() {
        serverNoContextTakeover = true
        clientNoContextTakeover = true
    }

    /// The first acceptable permessage-deflate offer among the `Sec-WebSocket-Extensions` header values,
    /// as agreed; nil when there is none (or the header is malformed).
    static func negotiate(offers headerValues: [String], settings: Settings = Settings()) -> PerMessageDeflate? {
        guard !headerValues.isEmpty, let header = WebSocketExtensionHeader(headerValues) else { return nil }
        for element in header.elements where element.name == "permessage-deflate" {
            if let agreed = accept(element.parameters, settings: settings) { return agreed }
        }
        return nil
    }

    /// The answer to one offer, or nil to decline it.
    static func accept(_ parameters: [(name: String, value: String?)], settings: Settings) -> PerMessageDeflate? {
        var seen = Set<String>()
        var agreed = PerMessageDeflate(serverWindowBits: settings.serverWindowBits, clientWindowBits: 15)
        for (name, value) in parameters {
            guard seen.insert(name).inserted else { return nil }
            switch name {
            case "server_no_context_takeover":
                guard value == nil else { return nil }
                agreed.serverNoContextTakeover = true
            case "client_no_context_takeover":
                guard value == nil else { return nil }
                agreed.clientNoContextTakeover = true
            case "server_max_window_bits":
                guard let value, let bits = windowBits(value) else { return nil }
                // zlib's raw deflate has no 8-bit window: this offer cannot be honoured.
                guard bits >= 9 else { return nil }
                agreed.serverWindowBits = min(bits, settings.serverWindowBits)
                agreed.answeredServerMaxWindowBits = agreed.serverWindowBits
            case "client_max_window_bits":
                var limit = 15
                if let value {
                    guard let bits = windowBits(value) else { return nil }
                    limit = bits
                }
                agreed.clientWindowBits = min(limit, settings.clientWindowBits)
                agreed.answeredClientMaxWindowBits = agreed.clientWindowBits
            default:
                return nil
            }
        }
        return agreed
    }

    /// `8` to `15` exactly as RFC 7692 7.1.2 writes them (no sign, no leading zero).
    static func windowBits(_ text: String) -> Int? {
        guard let first = text.utf8.first, first != UInt8(ascii: "0"), text.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
            let bits = Int(text), (8...15).contains(bits)
        else { return nil }
        return bits
    }
}

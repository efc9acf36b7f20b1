/// The `Sec-WebSocket-Extensions` request header (RFC 6455 9.1), parsed:
///
///     extension-list = 1#extension
///     extension      = extension-token *( ";" extension-param )
///     extension-param = token [ "=" (token | quoted-string) ]
///
/// with optional whitespace around the separators, empty list elements ignored (the `#` rule of RFC
/// 7230 7), several header lines read as one comma-separated list, and a quoted value unescaped and then
/// required to be a token (RFC 6455 9.1). Names are compared in lower case.
struct WebSocketExtensionHeader: Equatable {
    /// One offered extension: its name and parameters, in order (duplicates kept: the extension
    /// decides whether they are an error).
    struct Element: Equatable {
        var name: String
        var parameters: [(name: String, value: String?)]

        static func == (lhs: Element, rhs: Element) -> Bool {
            lhs.name == rhs.name && lhs.parameters.elementsEqual(rhs.parameters) { $0.name == $1.name && $0.value == $1.value }
        }
    }

    var elements: [Element]

    /// Parses the values of every `Sec-WebSocket-Extensions` line; nil when the syntax is broken
    /// (the request then gets no extension at all).
    init?(_ values: [String]) {
        var parser = Parser(Array(values.joined(separator: ",").utf8))
        guard let elements = parser.parseList() else { return nil }
        self.elements = elements
    }

    private struct Parser {
        let bytes: [UInt8]
        var index = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipWhitespace() {
            while let byte = current, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { index += 1 }
        }

        mutating func parseList() -> [Element]? {
            var elements: [Element] = []
            while true {
                skipWhitespace()
                guard let byte = current else { return elements }
                if byte == UInt8(ascii: ",") {
                    index += 1  // an empty element
                    continue
                }
                guard let element = parseElement() else { return nil }
                elements.append(element)
                skipWhitespace()
                guard let next = current else { return elements }
                guard next == UInt8(ascii: ",") else { return nil }
                index += 1
            }
        }

        mutating func parseElement() -> Element? {
            guard let name = parseToken() else { return nil }
            var element = Element(name: name.lowercased(), parameters: [])
            while true {
                skipWhitespace()
                guard current == UInt8(ascii: ";") else { return element }
                index += 1
                skipWhitespace()
                guard let parameter = parseToken() else { return nil }
                skipWhitespace()
                var value: String?
                if current == UInt8(ascii: "=") {
                    index += 1
                    skipWhitespace()
                    if current == UInt8(ascii: "\"") {
                        guard let quoted = parseQuotedString(), Self.isToken(quoted) else { return nil }
                        value = quoted
                    } else {
                        guard let token = parseToken() else { return nil }
                        value = token
                    }
                }
                element.parameters.append((parameter.lowercased(), value))
            }
        }

        mutating func parseToken() -> String? {
            let start = index
            while let byte = current, Self.isTokenByte(byte) { index += 1 }
            guard index > start else { return nil }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }

        /// A quoted-string, unescaped; nil when unterminated.
        mutating func parseQuotedString() -> String? {
            index += 1  // the opening quote
            var out: [UInt8] = []
            while let byte = current {
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard let escaped = current else { return nil }
                    index += 1
                    out.append(escaped)
                default:
                    out.append(byte)
                }
            }
            return nil
        }

        static func isToken(_ text: String) -> Bool {
            !text.isEmpty && text.utf8.allSatisfy(isTokenByte)
        }

        /// tchar (RFC 7230 3.2.6): visible ASCII except the separators.
        static func isTokenByte(_ byte: UInt8) -> Bool {
            guard byte > 0x20, byte < 0x7F else { return false }
            return !"()<>@,;:\\\"/[]?={}".utf8.contains(byte)
        }
    }
}

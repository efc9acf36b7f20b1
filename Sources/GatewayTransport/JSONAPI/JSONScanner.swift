/// A strict JSON (RFC 8259) scanner for the JSON WebSocket API: it validates a whole document and
/// reports where each member of the top-level object starts and ends, without building a tree.
///
/// Keeping a value's raw bytes is the point: a `payload` that is JSON is forwarded to MQTT subscribers
/// byte for byte, and an `id` is echoed exactly as the client wrote it.
struct JSONScanner {
    /// Why a document is not JSON.
    struct SyntaxError: Error, Equatable {
        var message: String
        var offset: Int
    }

    /// One member of the top-level object: its name and the byte range of its value.
    struct Member {
        var name: String
        var value: Range<Int>
    }

    /// The deepest nesting accepted; deeper documents are refused rather than risking the stack.
    static let maxDepth = 64

    let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    // MARK: Entry points

    /// Whether `bytes` is exactly one JSON value, surrounded by optional whitespace.
    static func isJSON(_ bytes: [UInt8]) -> Bool {
        var scanner = JSONScanner(bytes)
        do {
            scanner.skipWhitespace()
            try scanner.skipValue(depth: 0)
            scanner.skipWhitespace()
            return scanner.index == bytes.count
        } catch {
            return false
        }
    }

    /// Parses a document that must be one object; returns its members in order.
    static func objectMembers(_ bytes: [UInt8]) throws(SyntaxError) -> [Member] {
        var scanner = JSONScanner(bytes)
        scanner.skipWhitespace()
        guard scanner.peek() == UInt8(ascii: "{") else {
            throw SyntaxError(message: "expected an object", offset: scanner.index)
        }
        scanner.index += 1
        var members: [Member] = []
        scanner.skipWhitespace()
        if scanner.peek() == UInt8(ascii: "}") {
            scanner.index += 1
        } else {
            while true {
                scanner.skipWhitespace()
                let name = try scanner.readString()
                scanner.skipWhitespace()
                try scanner.expect(UInt8(ascii: ":"))
                scanner.skipWhitespace()
                let start = scanner.index
                try scanner.skipValue(depth: 1)
                members.append(Member(name: name, value: start..<scanner.index))
                scanner.skipWhitespace()
                if scanner.peek() == UInt8(ascii: ",") {
                    scanner.index += 1
                    continue
                }
                try scanner.expect(UInt8(ascii: "}"))
                break
            }
        }
        scanner.skipWhitespace()
        guard scanner.index == bytes.count else {
            throw SyntaxError(message: "unexpected data after the object", offset: scanner.index)
        }
        return members
    }

    /// Decodes the string value at `range` (which must be a JSON string), or nil if it is not one.
    func string(at range: Range<Int>) -> String? {
        var scanner = self
        scanner.index = range.lowerBound
        guard let value = try? scanner.readString(), scanner.index == range.upperBound else { return nil }
        return value
    }

    /// The integer value at `range`, or nil if it is not an integer literal.
    func integer(at range: Range<Int>) -> Int? {
        guard range.count <= 18 else { return nil }
        var value = 0
        var negative = false
        var i = range.lowerBound
        if bytes[i] == UInt8(ascii: "-") {
            negative = true
            i += 1
        }
        guard i < range.upperBound else { return nil }
        while i < range.upperBound {
            let b = bytes[i]
            guard b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(b - UInt8(ascii: "0"))
            i += 1
        }
        return negative ? -value : value
    }

    /// The boolean value at `range`, or nil if it is not `true` or `false`.
    func bool(at range: Range<Int>) -> Bool? {
        let text = bytes[range]
        if text.elementsEqual("true".utf8) { return true }
        if text.elementsEqual("false".utf8) { return false }
        return nil
    }

    /// Whether the value at `range` is `null`.
    func isNull(at range: Range<Int>) -> Bool {
        bytes[range].elementsEqual("null".utf8)
    }

    // MARK: Grammar

    private func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private mutating func expect(_ byte: UInt8) throws(SyntaxError) {
        guard peek() == byte else {
            throw SyntaxError(message: "expected '\(Character(Unicode.Scalar(byte)))'", offset: index)
        }
        index += 1
    }

    private mutating func skipWhitespace() {
        while let b = peek(), b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 {
            index += 1
        }
    }

    private mutating func skipValue(depth: Int) throws(SyntaxError) {
        guard depth <= Self.maxDepth else {
            throw SyntaxError(message: "nested deeper than \(Self.maxDepth) levels", offset: index)
        }
        guard let b = peek() else { throw SyntaxError(message: "unexpected end of input", offset: index) }
        switch b {
        case UInt8(ascii: "{"):
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "}") {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                try skipString()
                skipWhitespace()
                try expect(UInt8(ascii: ":"))
                skipWhitespace()
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                try expect(UInt8(ascii: "}"))
                return
            }
        case UInt8(ascii: "["):
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                try expect(UInt8(ascii: "]"))
                return
            }
        case UInt8(ascii: "\""):
            try skipString()
        case UInt8(ascii: "t"):
            try literal("true")
        case UInt8(ascii: "f"):
            try literal("false")
        case UInt8(ascii: "n"):
            try literal("null")
        default:
            try skipNumber()
        }
    }

    private mutating func literal(_ word: String) throws(SyntaxError) {
        let end = index + word.utf8.count
        guard end <= bytes.count, bytes[index..<end].elementsEqual(word.utf8) else {
            throw SyntaxError(message: "invalid literal", offset: index)
        }
        index = end
    }

    private mutating func skipNumber() throws(SyntaxError) {
        let start = index
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), isDigit(first) else {
            throw SyntaxError(message: "unexpected character", offset: start)
        }
        index += 1
        if first != UInt8(ascii: "0") {
            while let b = peek(), isDigit(b) { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            index += 1
            guard let b = peek(), isDigit(b) else { throw SyntaxError(message: "invalid number", offset: start) }
            while let b = peek(), isDigit(b) { index += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let b = peek(), isDigit(b) else { throw SyntaxError(message: "invalid number", offset: start) }
            while let b = peek(), isDigit(b) { index += 1 }
        }
    }

    private func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    /// Skips a string, checking escapes, control characters and UTF-8.
    private mutating func skipString() throws(SyntaxError) {
        _ = try scanString(decode: false)
    }

    private mutating func readString() throws(SyntaxError) -> String {
        try scanString(decode: true)
    }

    private mutating func scanString(decode: Bool) throws(SyntaxError) -> String {
        let start = index
        try expect(UInt8(ascii: "\""))
        var scalars = String.UnicodeScalarView()
        var runStart = index
        var plain = true  // no escapes so far: the value is the raw bytes
        while true {
            guard let b = peek() else { throw SyntaxError(message: "unterminated string", offset: start) }
            if b == UInt8(ascii: "\"") { break }
            if b < 0x20 { throw SyntaxError(message: "control character in string", offset: index) }
            if b != UInt8(ascii: "\\") {
                index += 1
                continue
            }
            if decode {
                if plain {
                    plain = false
                }
                try appendRun(runStart..<index, to: &scalars)
            }
            index += 1
            guard let e = peek() else { throw SyntaxError(message: "unterminated escape", offset: index) }
            index += 1
            let scalar: Unicode.Scalar
            switch e {
            case UInt8(ascii: "\""): scalar = "\""
            case UInt8(ascii: "\\"): scalar = "\\"
            case UInt8(ascii: "/"): scalar = "/"
            case UInt8(ascii: "b"): scalar = "\u{08}"
            case UInt8(ascii: "f"): scalar = "\u{0C}"
            case UInt8(ascii: "n"): scalar = "\n"
            case UInt8(ascii: "r"): scalar = "\r"
            case UInt8(ascii: "t"): scalar = "\t"
            case UInt8(ascii: "u"):
                let unit = try hex4()
                if (0xD800...0xDBFF).contains(unit) {
                    guard peek() == UInt8(ascii: "\\") else { throw SyntaxError(message: "lone surrogate", offset: index) }
                    index += 1
                    guard peek() == UInt8(ascii: "u") else { throw SyntaxError(message: "lone surrogate", offset: index) }
                    index += 1
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw SyntaxError(message: "lone surrogate", offset: index) }
                    scalar = Unicode.Scalar(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))!
                } else if let s = Unicode.Scalar(unit) {
                    scalar = s
                } else {
                    throw SyntaxError(message: "lone surrogate", offset: index)
                }
            default:
                throw SyntaxError(message: "invalid escape", offset: index - 1)
            }
            if decode { scalars.append(scalar) }
            runStart = index
        }
        let end = index
        index += 1  // closing quote
        if decode && !plain {
            try appendRun(runStart..<end, to: &scalars)
            return String(scalars)
        }
        // No escapes: validate (and for `decode`, build) from the raw bytes in one go.
        guard let text = String(validating: bytes[(start + 1)..<end], as: UTF8.self) else {
            throw SyntaxError(message: "string is not valid UTF-8", offset: start)
        }
        return decode ? text : ""
    }

    private func appendRun(_ range: Range<Int>, to scalars: inout String.UnicodeScalarView) throws(SyntaxError) {
        guard !range.isEmpty else { return }
        guard let text = String(validating: bytes[range], as: UTF8.self) else {
            throw SyntaxError(message: "string is not valid UTF-8", offset: range.lowerBound)
        }
        scalars.append(contentsOf: text.unicodeScalars)
    }

    private mutating func hex4() throws(SyntaxError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw SyntaxError(message: "short \\u escape", offset: index) }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[index]
            let digit: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
            default: throw SyntaxError(message: "invalid \\u escape", offset: index)
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }
}

/// Writing JSON text: the one JSON string escaper for the JSON API, the admin API and JSON logs.
package enum JSONText {
    /// Appends `value` as a JSON string literal (quoted; quotes, backslashes and control characters escaped).
    package static func appendString(_ value: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in value.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xF)])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// Standard base64 (RFC 4648 section 4, with padding), for JSON API payloads that are not JSON and
/// for HTTP Basic credentials.
enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private static let reverse: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    /// Appends the base64 encoding of `bytes` to `out`.
    static func encode<Bytes: Collection<UInt8>>(_ bytes: Bytes, into out: inout [UInt8]) {
        out.reserveCapacity(out.count + (bytes.count + 2) / 3 * 4)
        var iterator = bytes.makeIterator()
        while let b0 = iterator.next() {
            let b1 = iterator.next()
            let b2 = iterator.next()
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | (b1 ?? 0) >> 4)])
            out.append(b1.map { alphabet[Int(($0 & 0x0F) << 2 | (b2 ?? 0) >> 6)] } ?? UInt8(ascii: "="))
            out.append(b2.map { alphabet[Int($0 & 0x3F)] } ?? UInt8(ascii: "="))
        }
    }

    /// Decodes padded base64; nil when `text` is not valid base64.
    static func decode<Text: Collection<UInt8>>(_ text: Text) -> [UInt8]? {
        guard text.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 4 * 3)
        var quad: [UInt8] = [0, 0, 0, 0]
        var n = 0
        var padding = 0
        for c in text {
            if c == UInt8(ascii: "=") {
                padding += 1
                quad[n] = 0
            } else {
                guard padding == 0 else { return nil }  // data after padding
                let v = reverse[Int(c)]
                guard v != 0xFF else { return nil }
                quad[n] = v
            }
            n += 1
            if n == 4 {
                guard padding <= 2 else { return nil }
                out.append(quad[0] << 2 | quad[1] >> 4)
                if padding < 2 { out.append(quad[1] << 4 | quad[2] >> 2) }
                if padding < 1 { out.append(quad[2] << 6 | quad[3]) }
                n = 0
                if padding > 0 { break }
            }
        }
        // Padding may only appear in the last quad.
        return out.count == text.count / 4 * 3 - padding ? out : nil
    }
}

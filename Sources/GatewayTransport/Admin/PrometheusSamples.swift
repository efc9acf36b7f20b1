/// The samples of a Prometheus text exposition (format 0.0.4) whose names the dashboard reads.
///
/// The dashboard takes its storage, drop and event-loop figures from the same registry `/metrics`
/// renders, so both always agree and no component keeps a second set of counters. Only lines whose
/// metric name is in `names` are parsed; comments and other metrics are skipped at their first bytes.
struct PrometheusSamples: Sendable {
    /// One sample: the metric name (with its `_sum`/`_count` suffix), its labels and its value.
    struct Sample: Sendable, Hashable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    private(set) var samples: [Sample] = []

    /// - Parameters:
    ///   - text: the exposition, as `registry.emitToBuffer()` returns it.
    ///   - names: the metric names to keep (exact, including any `_sum`/`_count` suffix).
    init(text: [UInt8], names: Set<String>) {
        var lineStart = 0
        while lineStart < text.count {
            var lineEnd = lineStart
            while lineEnd < text.count && text[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
            if lineEnd > lineStart && text[lineStart] != UInt8(ascii: "#"), let sample = Self.parse(text[lineStart..<lineEnd], names: names) {
                samples.append(sample)
            }
            lineStart = lineEnd + 1
        }
    }

    /// The value of `name` with exactly these labels (none: the unlabelled sample), if present.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    /// Every sample of `name`.
    func all(_ name: String) -> [Sample] {
        samples.filter { $0.name == name }
    }

    private static func parse(_ line: ArraySlice<UInt8>, names: Set<String>) -> Sample? {
        guard let nameEnd = line.firstIndex(where: { $0 == UInt8(ascii: "{") || $0 == UInt8(ascii: " ") }) else { return nil }
        let name = String(decoding: line[line.startIndex..<nameEnd], as: UTF8.self)
        guard names.contains(name) else { return nil }
        var labels: [String: String] = [:]
        var rest = line[nameEnd...]
        if rest.first == UInt8(ascii: "{") {
            rest = rest.dropFirst()
            // name="value" pairs separated by commas; values escape \\, \" and \n.
            while let first = rest.first, first != UInt8(ascii: "}") {
                if first == UInt8(ascii: ",") || first == UInt8(ascii: " ") {
                    rest = rest.dropFirst()
                    continue
                }
                guard let equals = rest.firstIndex(of: UInt8(ascii: "=")) else { return nil }
                let key = String(decoding: rest[rest.startIndex..<equals], as: UTF8.self)
                rest = rest[(equals + 1)...]
                guard rest.first == UInt8(ascii: "\"") else { return nil }
                rest = rest.dropFirst()
                var value: [UInt8] = []
                var closed = false
                while let byte = rest.popFirst() {
                    if byte == UInt8(ascii: "\\"), let escaped = rest.popFirst() {
                        value.append(escaped == UInt8(ascii: "n") ? UInt8(ascii: "\n") : escaped)
                    } else if byte == UInt8(ascii: "\"") {
                        closed = true
                        break
                    } else {
                        value.append(byte)
                    }
                }
                guard closed else { return nil }
                labels[key] = String(decoding: value, as: UTF8.self)
            }
            guard rest.first == UInt8(ascii: "}") else { return nil }
            rest = rest.dropFirst()
        }
        let fields = rest.split(separator: UInt8(ascii: " "))
        guard let valueText = fields.first else { return nil }
        let text = String(decoding: valueText, as: UTF8.self)
        let value: Double? =
            switch text {
            case "+Inf": .infinity
            case "-Inf": -.infinity
            case "NaN": .nan
            default: Double(text)
            }
        guard let value else { return nil }
        return Sample(name: name, labels: labels, value: value)
    }
}

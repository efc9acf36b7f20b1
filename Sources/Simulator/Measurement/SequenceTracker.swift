/// Counts the distinct sequence numbers one receiver got from one publisher, and the duplicates.
///
/// A bit per sequence number: publishers number their messages from 0 without gaps, so a stream of
/// n messages costs n/8 bytes, whatever order the messages arrive in.
struct SequenceTracker: Sendable {
    private var words: [UInt64] = []
    /// Distinct sequence numbers seen.
    private(set) var unique: UInt64 = 0
    /// Messages whose sequence number had been seen before.
    private(set) var duplicates: UInt64 = 0

    init() {}

    /// Records one delivery and returns whether it was new.
    @discardableResult
    mutating func record(_ sequence: UInt64) -> Bool {
        let word = Int(sequence >> 6)
        let bit = UInt64(1) << (sequence & 63)
        if word >= words.count {
            words.append(contentsOf: repeatElement(0, count: Swift.max(word + 1 - words.count, words.count)))
        }
        if words[word] & bit != 0 {
            duplicates += 1
            return false
        }
        words[word] |= bit
        unique += 1
        return true
    }
}

extension GatewayConfigFile {
    /// The bounds of a store-and-forward queue, in messages and bytes: `storage.queue` (the ingest
    /// queue) and `bridges[i].queue` (a bridge's queue).
    public struct QueueBounds: Codable, Sendable, Equatable {
        /// `max_messages`: messages queued at most. Default 10000.
        public var maxMessages = 10_000
        /// `max_bytes`: bytes queued at most. Default 16777216 (16 MiB).
        public var maxBytes = 16 * 1_048_576

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case maxMessages = "max_messages"
            case maxBytes = "max_bytes"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = QueueBounds()
            maxMessages = try c.value(.maxMessages, default: d.maxMessages)
            maxBytes = try c.value(.maxBytes, default: d.maxBytes)
        }
    }
}

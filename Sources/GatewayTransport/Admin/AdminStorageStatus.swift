/// Telemetry storage's footprint for `/api/v1/stats` (`storage`): what the storage maintenance service
/// sampled last.
public struct AdminStorageStatus: Sendable, Hashable {
    /// `sqlite` or `postgres`.
    public var backend: String
    /// The SQLite database file and its WAL, in bytes; nil for PostgreSQL.
    public var databaseBytes: Int64?
    /// Free bytes of the database's file system; nil when unknown (PostgreSQL).
    public var freeBytes: Int64?
    /// `storage.min_free_bytes`.
    public var minFreeBytes: Int64
    /// Whether storing is paused for lack of disk space.
    public var intakePaused: Bool

    public init(backend: String, databaseBytes: Int64?, freeBytes: Int64?, minFreeBytes: Int64, intakePaused: Bool) {
        self.backend = backend
        self.databaseBytes = databaseBytes
        self.freeBytes = freeBytes
        self.minFreeBytes = minFreeBytes
        self.intakePaused = intakePaused
    }
}

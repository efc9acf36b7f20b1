#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Metrics
import Synchronization

/// The embedded database's footprint on disk and the free space beside it: the SQLite file's size (with
/// its WAL) and the free bytes of the file system that holds it, sampled by the storage maintenance
/// service and reported in `/metrics` (`iotgw_storage_file_bytes`, `iotgw_storage_free_bytes`) and
/// `/api/v1/stats`.
public final class StorageDiskStatus: Sendable {
    /// The SQLite database file; nil for PostgreSQL (its disk is the server's).
    public let databasePath: String?
    /// Below this many free bytes, intake pauses (`storage.min_free_bytes`); 0 never pauses.
    public let minFreeBytes: Int64

    private let fileBytes = Atomic<Int64>(0)
    private let freeBytes = Atomic<Int64>(-1)
    private let low = Atomic<Bool>(false)
    private let fileGauge = Gauge(label: "iotgw_storage_file_bytes")
    private let freeGauge = Gauge(label: "iotgw_storage_free_bytes")
    private let lowGauge = Gauge(label: "iotgw_storage_disk_low")

    public init(databasePath: String?, minFreeBytes: Int64) {
        self.databasePath = databasePath
        self.minFreeBytes = minFreeBytes
    }

    /// The database file and its WAL, in bytes, at the last sample.
    public var databaseBytes: Int64 { fileBytes.load(ordering: .relaxed) }
    /// Free bytes (for unprivileged users) of the database's file system at the last sample; -1 when
    /// unknown (PostgreSQL, or not sampled yet).
    public var availableBytes: Int64 { freeBytes.load(ordering: .relaxed) }
    /// Whether free space was under ``minFreeBytes`` at the last sample.
    public var isLow: Bool { low.load(ordering: .relaxed) }

    /// Samples the file sizes and free space (two `stat` calls and one `statvfs`: call it off the event
    /// loops). Returns whether free space is under the minimum now.
    @discardableResult
    public func sample() -> Bool {
        guard let databasePath else { return false }
        let size = Self.fileSize(databasePath) + Self.fileSize(databasePath + "-wal")
        fileBytes.store(size, ordering: .relaxed)
        fileGauge.record(size)
        let directory = Self.directory(of: databasePath)
        var stats = statvfs()
        guard statvfs(directory, &stats) == 0 else { return isLow }
        let available = Int64(stats.f_bavail) * Int64(stats.f_frsize)
        freeBytes.store(available, ordering: .relaxed)
        freeGauge.record(available)
        let isLow = minFreeBytes > 0 && available < minFreeBytes
        low.store(isLow, ordering: .relaxed)
        lowGauge.record(isLow ? 1 : 0)
        return isLow
    }

    static func fileSize(_ path: String) -> Int64 {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return Int64(info.st_size)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// What the process uses from the kernel: the open-file limit, resident memory and open descriptors.
/// Reads `/proc/self` (procfs answers from memory; it does not touch a disk).
enum ProcessResources {
    /// The soft and hard `RLIMIT_NOFILE` after raising the soft limit to the hard one.
    struct FileLimit: Sendable {
        var soft: UInt64
        var hard: UInt64
        /// Whether the soft limit was raised.
        var raised: Bool
        var error: Int32?
    }

    /// Descriptors kept aside from the connection capacity: standard streams, listeners, the event
    /// loops' epoll and eventfds, log and config files.
    static let reservedDescriptors: UInt64 = 64

    /// Raises the soft open-file limit to the hard limit (systemd and most shells start services at a
    /// soft limit of 1,024, which would cap the gateway near a thousand connections).
    static func raiseOpenFileLimit() -> FileLimit {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else {
            return FileLimit(soft: 0, hard: 0, raised: false, error: errno)
        }
        let before = limit.rlim_cur
        guard limit.rlim_cur < limit.rlim_max else {
            return FileLimit(soft: UInt64(limit.rlim_cur), hard: UInt64(limit.rlim_max), raised: false, error: nil)
        }
        limit.rlim_cur = limit.rlim_max
        if setrlimit(resource, &limit) != 0 {
            return FileLimit(soft: UInt64(before), hard: UInt64(limit.rlim_max), raised: false, error: errno)
        }
        return FileLimit(soft: UInt64(limit.rlim_cur), hard: UInt64(limit.rlim_max), raised: true, error: nil)
    }

    /// The current soft open-file limit, or 0 if unreadable.
    static func currentOpenFileLimit() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        return UInt64(limit.rlim_cur)
    }

    /// Resident set size in bytes (`/proc/self/statm`), or nil if unreadable.
    static func residentBytes() -> Int? {
        guard let text = readSmallFile("/proc/self/statm") else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// The number of open file descriptors (`/proc/self/fd`), or nil if unreadable.
    static func openDescriptors() -> Int? {
        guard let directory = opendir("/proc/self/fd") else { return nil }
        defer { closedir(directory) }
        var count = 0
        // The name is read in place: `entry.pointee` would copy a whole `dirent` (280 bytes), but
        // readdir packs entries by their real length (d_reclen), so for the last entry of its buffer
        // that copy reads past the end — a crash with thousands of descriptors open.
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while let entry = readdir(directory) {
            let name = UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: UInt8.self)
            let isDot = name[0] == UInt8(ascii: ".") && (name[1] == 0 || (name[1] == UInt8(ascii: ".") && name[2] == 0))
            if !isDot { count += 1 }
        }
        return count - 1  // the descriptor opendir itself holds
    }

    private static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Wall-clock time for timestamps that leave the process (stored rows, JSON API pushes).
package enum WallClock {
    /// Milliseconds since the Unix epoch.
    package static func millisecondsSinceEpoch() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

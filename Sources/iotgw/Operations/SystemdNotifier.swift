#if canImport(Glibc)
import Glibc
#endif

/// `sd_notify(3)` without libsystemd: datagrams to the unix socket named by `$NOTIFY_SOCKET`.
///
/// A path starting with `@` is in the abstract namespace (the `@` becomes a NUL byte). Without
/// `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every call does nothing. Sends never
/// block (`MSG_DONTWAIT`): a full socket drops the notification, and systemd's own timeouts apply.
struct SystemdNotifier: Sendable {
    /// The socket address bytes (`@` already turned into NUL), or nil when not under systemd.
    private let address: [UInt8]?

    /// Reads `$NOTIFY_SOCKET`.
    init(environment: [String: String]) {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty, path.hasPrefix("/") || path.hasPrefix("@") else {
            address = nil
            return
        }
        var bytes = Array(path.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }
        address = bytes
    }

    /// Whether `$NOTIFY_SOCKET` was set.
    var isEnabled: Bool { address != nil }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g. `READY=1\nSTATUS=listening`).
    /// - Returns: whether the datagram was sent.
    @discardableResult
    func notify(_ state: String) -> Bool {
        guard let address else { return false }
        var storage = sockaddr_un()
        storage.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard address.count < capacity else { return false }
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: address)
        }
        // Abstract addresses are exactly as long as their name; paths include the terminating NUL.
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + address.count + (address[0] == 0 ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let payload = Array(state.utf8)
        let sent = payload.withUnsafeBytes { bytes in
            withUnsafePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT), socketAddress, length)
                }
            }
        }
        return sent == payload.count
    }

    /// `CLOCK_MONOTONIC` in microseconds, for `MONOTONIC_USEC=` with `RELOADING=1`.
    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
    }

    /// The watchdog interval systemd expects pings within (`$WATCHDOG_USEC`), when it is meant for
    /// this process (`$WATCHDOG_PID` absent or ours).
    static func watchdogInterval(environment: [String: String]) -> Duration? {
        guard let text = environment["WATCHDOG_USEC"], let usec = UInt64(text), usec > 0 else { return nil }
        if let pid = environment["WATCHDOG_PID"], !pid.isEmpty, pid != String(getpid()) { return nil }
        return .microseconds(Int64(clamping: usec))
    }
}

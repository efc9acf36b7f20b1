public import Logging
import Synchronization

/// Keeps floods of per-connection errors from filling the journal: of each kind, the first ``burst`` in
/// every ``interval`` are logged in full; the rest are counted, and once the interval is over one line
/// says how many more there were and from how many addresses (`N more like this from M addresses in the
/// last 10 s`). Metrics still count every one (they are recorded where the error is handled).
///
/// The per-window address set is bounded (``maxTrackedAddresses``); past it the count is reported as
/// "at least".
public final class LogRateLimiter: Sendable {
    /// The errors limited, each with its own window.
    public enum Kind: String, Sendable, CaseIterable {
        case badPacket = "closing connection after bad packet"
        case protocolViolation = "closing connection after protocol violation"
        case refusedConnect = "connection refused"
        case handshakeFailure = "handshake failed"
    }

    /// Lines of one kind logged in full per interval.
    public let burst: Int
    /// The window.
    public let interval: Duration
    /// Distinct client addresses remembered per window for the summary.
    public let maxTrackedAddresses: Int

    private struct Window {
        var started: ContinuousClock.Instant
        var logged = 0
        var suppressed = 0
        var addresses: Set<String> = []
        var addressesOverflowed = false
    }

    private let windows = Mutex<[Kind: Window]>([:])

    /// - Parameters:
    ///   - burst: lines per kind logged in full per interval. Default 10.
    ///   - interval: the window. Default 10 s.
    ///   - maxTrackedAddresses: distinct addresses counted per window. Default 1,024.
    public init(burst: Int = 10, interval: Duration = .seconds(10), maxTrackedAddresses: Int = 1_024) {
        self.burst = burst
        self.interval = interval
        self.maxTrackedAddresses = maxTrackedAddresses
    }

    /// What a window that ended had suppressed.
    public struct Summary: Sendable, Equatable {
        public var kind: Kind
        public var suppressed: Int
        public var addresses: Int
        /// True when more addresses were seen than ``LogRateLimiter/maxTrackedAddresses``.
        public var addressesAtLeast: Bool
        public var seconds: Int
    }

    /// Counts one occurrence of `kind` from `address` (the peer, port included or not) and says whether to
    /// log it in full; a summary of the previous window is returned when this occurrence starts a new one.
    public func admit(_ kind: Kind, address: String?, now: ContinuousClock.Instant = .now) -> (log: Bool, summary: Summary?) {
        windows.withLock { windows in
            var summary: Summary?
            var window = windows[kind] ?? Window(started: now)
            if window.started.advanced(by: interval) <= now {
                summary = Self.summary(kind, window, interval: interval)
                window = Window(started: now)
            }
            let log = window.logged < burst
            if log {
                window.logged += 1
            } else {
                window.suppressed += 1
                if let host = address.map(PeerAddress.host(of:)) {
                    if window.addresses.count < maxTrackedAddresses {
                        window.addresses.insert(host)
                    } else if !window.addresses.contains(host) {
                        window.addressesOverflowed = true
                    }
                }
            }
            windows[kind] = window
            return (log, summary)
        }
    }

    /// Ends the windows whose interval is over and returns what they suppressed (housekeeping calls this
    /// every second, so a summary does not wait for the next error).
    public func flush(now: ContinuousClock.Instant = .now) -> [Summary] {
        windows.withLock { windows in
            var summaries: [Summary] = []
            for (kind, window) in windows where window.started.advanced(by: interval) <= now {
                if let summary = Self.summary(kind, window, interval: interval) { summaries.append(summary) }
                windows[kind] = nil
            }
            return summaries
        }
    }

    /// Logs `summary` as one notice.
    public static func log(_ summary: Summary, to logger: Logger) {
        let addresses = summary.addressesAtLeast ? "at least \(summary.addresses)" : "\(summary.addresses)"
        logger.notice(
            "\(summary.suppressed) more like this from \(addresses) address\(summary.addresses == 1 && !summary.addressesAtLeast ? "" : "es") in the last \(summary.seconds) s: \(summary.kind.rawValue)",
            metadata: ["iotgw.log.suppressed": "\(summary.suppressed)", "iotgw.log.kind": "\(summary.kind)"]
        )
    }

    private static func summary(_ kind: Kind, _ window: Window, interval: Duration) -> Summary? {
        guard window.suppressed > 0 else { return nil }
        return Summary(
            kind: kind,
            suppressed: window.suppressed,
            addresses: window.addresses.count,
            addressesAtLeast: window.addressesOverflowed,
            seconds: Int(interval.components.seconds)
        )
    }
}

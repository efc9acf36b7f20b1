import Synchronization

/// Limits against connection floods from one address: how many connections it may hold open
/// (`limits.max_connections_per_address`) and how fast it may CONNECT (`limits.connect_rate_per_address`
/// with `limits.connect_burst_per_address`, a token bucket). Addresses are hosts without the port
/// (``PeerAddress/host(of:)``), so many sockets from one machine count together.
///
/// Memory is bounded by what is live: an address is remembered while it has open connections, and its
/// bucket until it has refilled (``prune(now:rate:burst:)``, every second from housekeeping).
final class AddressLimits: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private struct State {
        var open: [String: Int] = [:]
        var buckets: [String: Bucket] = [:]
    }

    private let state = Mutex(State())

    init() {}

    /// Counts a new connection from `host` unless it already holds `limit` (0: no limit). Returns whether
    /// it was counted; a connection that was must be ``closed(host:)`` once.
    func open(host: String, limit: Int) -> Bool {
        state.withLock { state in
            let current = state.open[host, default: 0]
            guard limit == 0 || current < limit else { return false }
            state.open[host] = current + 1
            return true
        }
    }

    func closed(host: String) {
        state.withLock { state in
            let remaining = state.open[host, default: 1] - 1
            state.open[host] = remaining > 0 ? remaining : nil
        }
    }

    /// Takes one CONNECT token of `host`'s bucket (`rate` per second, up to `burst`; rate 0: no limit).
    func takeConnectToken(host: String, rate: Double, burst: Int, now: ContinuousClock.Instant) -> Bool {
        guard rate > 0 else { return true }
        return state.withLock { state in
            var bucket = state.buckets[host] ?? Bucket(tokens: Double(burst), updated: now)
            bucket.tokens = min(Double(burst), bucket.tokens + Self.seconds(bucket.updated.duration(to: now)) * rate)
            bucket.updated = now
            let taken = bucket.tokens >= 1
            if taken { bucket.tokens -= 1 }
            state.buckets[host] = bucket
            return taken
        }
    }

    /// Forgets the buckets that have refilled (they behave as new ones).
    func prune(now: ContinuousClock.Instant, rate: Double, burst: Int) {
        state.withLock { state in
            guard !state.buckets.isEmpty else { return }
            guard rate > 0 else {
                state.buckets.removeAll()
                return
            }
            state.buckets = state.buckets.filter { _, bucket in
                bucket.tokens + Self.seconds(bucket.updated.duration(to: now)) * rate < Double(burst)
            }
        }
    }

    /// Addresses with open connections, and buckets remembered (for tests).
    var counts: (open: Int, buckets: Int) { state.withLock { ($0.open.count, $0.buckets.count) } }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// Peer addresses as NIO prints them.
public enum PeerAddress {
    /// The host of a peer address as NIO prints it (`[IPv4]127.0.0.1/127.0.0.1:5000` → `127.0.0.1`,
    /// `[IPv6]::1/::1:5000` → `::1`). Anything else is taken as it is.
    public static func host(of address: String) -> String {
        guard address.hasPrefix("["), let slash = address.lastIndex(of: "/") else { return address }
        var rest = address[address.index(after: slash)...]
        if let colon = rest.lastIndex(of: ":") { rest = rest[..<colon] }
        return String(rest)
    }
}

public import Logging
import Metrics
import Synchronization

/// Refuses CONNECTs from a network address that failed to log in too often: a defence against password
/// guessing, and against wrong guesses queueing up the password-hashing threads ahead of real devices.
///
/// An address with ``Configuration/maxFailures`` bad-credential verdicts within ``Configuration/window``
/// seconds is blocked for ``Configuration/block`` seconds: its CONNECTs are refused without a password
/// check (MQTT 5 reason 0x9F, connection rate exceeded; 3.1.1 return code 5, not authorized). A
/// successful login does not clear the count, so a valid account cannot be used to reset it between
/// guesses. The table is bounded (``Configuration/maxAddresses``): expired entries go first, then the
/// least recently failing address.
public final class LoginThrottle: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// Failed logins within `window` that block an address; 0 turns the throttle off.
        public var maxFailures: Int = 10
        /// Seconds over which failures are counted.
        public var window: Double = 60
        /// Seconds an address stays blocked.
        public var block: Double = 300
        /// Addresses tracked at most.
        public var maxAddresses: Int = 10_000

        public init() {}
    }

    private struct Entry {
        var windowStart: ContinuousClock.Instant
        var failures: Int
        var lastFailure: ContinuousClock.Instant
        var blockedUntil: ContinuousClock.Instant?
    }

    private struct State {
        var configuration: Configuration
        var entries: [String: Entry] = [:]
    }

    private let state: Mutex<State>
    private let logger: Logger
    private let blocks = Counter(label: "iotgw_auth_login_blocks_total")
    private let refused = Counter(label: "iotgw_auth_throttled_connects_total")

    public init(configuration: Configuration, logger: Logger) {
        self.state = Mutex(State(configuration: configuration))
        self.logger = logger
    }

    /// Applies new settings (SIGHUP); addresses blocked stay blocked until their time is up.
    public func reconfigure(_ configuration: Configuration) {
        state.withLock { state in
            state.configuration = configuration
            if configuration.maxFailures == 0 { state.entries.removeAll() }
        }
    }

    /// Whether CONNECTs from `address` are refused now (and counts the refusal).
    public func isBlocked(_ address: String, now: ContinuousClock.Instant = .now) -> Bool {
        let blocked = state.withLock { state -> Bool in
            guard let until = state.entries[address]?.blockedUntil else { return false }
            if until > now { return true }
            state.entries[address] = nil
            return false
        }
        if blocked { refused.increment() }
        return blocked
    }

    /// Records a failed login from `address`; returns true when this failure blocks it.
    @discardableResult
    public func recordFailure(_ address: String, now: ContinuousClock.Instant = .now) -> Bool {
        let blockedFor = state.withLock { state -> (failures: Int, seconds: Double)? in
            let configuration = state.configuration
            guard configuration.maxFailures > 0 else { return nil }
            let window = Duration.seconds(configuration.window)
            var entry = state.entries[address] ?? Entry(windowStart: now, failures: 0, lastFailure: now)
            if entry.blockedUntil != nil { return nil }
            if now - entry.windowStart > window {
                entry.windowStart = now
                entry.failures = 0
            }
            entry.failures += 1
            entry.lastFailure = now
            var blocked: (Int, Double)?
            if entry.failures >= configuration.maxFailures {
                entry.blockedUntil = now + .seconds(configuration.block)
                blocked = (entry.failures, configuration.block)
            }
            if state.entries[address] == nil && state.entries.count >= configuration.maxAddresses {
                Self.makeRoom(&state.entries, now: now, window: window)
            }
            state.entries[address] = entry
            return blocked
        }
        guard let blockedFor else { return false }
        blocks.increment()
        logger.notice(
            "login throttled: too many failed logins from one address",
            metadata: [
                "net.peer.address": "\(address)",
                "iotgw.auth.failures": "\(blockedFor.failures)",
                "iotgw.auth.blocked_seconds": "\(blockedFor.seconds)",
            ]
        )
        return true
    }

    /// Addresses blocked now.
    public func blockedCount(now: ContinuousClock.Instant = .now) -> Int {
        state.withLock { $0.entries.values.count(where: { ($0.blockedUntil ?? now) > now }) }
    }

    /// Drops entries whose window and block are over; if none, the least recently failing address that
    /// is not blocked, and only when every address is blocked, the block that ends first.
    private static func makeRoom(_ entries: inout [String: Entry], now: ContinuousClock.Instant, window: Duration) {
        let before = entries.count
        entries = entries.filter { _, entry in
            if let until = entry.blockedUntil { return until > now }
            return now - entry.windowStart <= window
        }
        guard entries.count == before else { return }
        let counting = entries.filter { $0.value.blockedUntil == nil }
        if let oldest = counting.min(by: { $0.value.lastFailure < $1.value.lastFailure }) {
            entries[oldest.key] = nil
        } else if let soonest = entries.min(by: { ($0.value.blockedUntil ?? now) < ($1.value.blockedUntil ?? now) }) {
            entries[soonest.key] = nil
        }
    }

    /// The part of a peer address that identifies the host: NIO's `SocketAddress` description without
    /// its port (`[IPv4]10.0.0.7/10.0.0.7:50123` → `[IPv4]10.0.0.7/10.0.0.7`).
    public static func hostKey(_ remoteAddress: String) -> String {
        guard let colon = remoteAddress.lastIndex(of: ":"),
            remoteAddress[remoteAddress.index(after: colon)...].allSatisfy(\.isNumber)
        else { return remoteAddress }
        return String(remoteAddress[..<colon])
    }
}

/// An ``Authenticator`` behind a ``LoginThrottle``: blocked addresses are refused before the inner
/// authenticator (and its password hashing) is asked; bad credentials count against the address.
public struct ThrottledAuthenticator: Authenticator {
    public let inner: any Authenticator
    public let throttle: LoginThrottle

    public init(inner: any Authenticator, throttle: LoginThrottle) {
        self.inner = inner
        self.throttle = throttle
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationResult {
        guard let remoteAddress = credentials.remoteAddress else { return await inner.authenticate(credentials) }
        let host = LoginThrottle.hostKey(remoteAddress)
        if throttle.isBlocked(host) { return .throttled }
        let verdict = await inner.authenticate(credentials)
        if verdict == .badCredentials { throttle.recordFailure(host) }
        return verdict
    }
}

import Crypto
public import GatewayCore
public import Logging
import Metrics
import NIOCore
import Synchronization

/// Checks CONNECT credentials against the users table (`auth.backend: database`).
///
/// A client without a username is accepted when `allowAnonymous` is set (return code 5 / 0x87
/// otherwise); a client with one must present that user's password (return code 4 / 0x86 for an
/// unknown user, a missing or a wrong password), unless its username is the CN of a client
/// certificate the TLS layer verified (``ConnectCredentials/certificateIdentity``): the certificate
/// authenticates it.
///
/// A burst of CONNECTs stays cheap:
/// - look-ups are cached per username for `cacheTTL` (unknown users for `negativeCacheTTL`), and
///   concurrent look-ups of one username share one query (single flight); at most
///   `maxConcurrentLookups` queries run at once, each on a pooled connection, so auth never takes the
///   whole pool from the batch writer;
/// - a successful verification is remembered for `cacheTTL` under (username, HMAC-SHA256 of the
///   password with a per-process random key) together with the stored hash it matched, so a device
///   reconnecting with the same password skips scrypt; concurrent verifications of the same
///   (username, password) share one computation;
/// - scrypt runs on the ``PasswordHasher``'s own bounded threads.
///
/// A password change (`iotgw user passwd`) takes effect for new CONNECTs once the cached entry expires
/// (at most `cacheTTL`), or at once after SIGHUP (``reconfigure(_:)`` flushes the cache). If the store
/// cannot be read, or too many verifications are queued, the CONNECT gets "server unavailable" (3 /
/// 0x88) and nothing is cached.
public final class DatabaseAuthenticator: Authenticator {
    public struct Configuration: Sendable, Hashable {
        /// Whether clients without a username are accepted. Default true.
        public var allowAnonymous = true
        /// Seconds a looked-up user and a successful verification are remembered. 0 disables caching.
        /// Default 30.
        public var cacheTTL: Double = 30
        /// Seconds an unknown username is remembered. Default 5.
        public var negativeCacheTTL: Double = 5
        /// The most usernames (and, separately, verified passwords) remembered. Default 10,000.
        public var cacheSize = 10_000
        /// Look-up queries running at once. Default 2 (half the default pool of 4).
        public var maxConcurrentLookups = 2
        /// Look-ups that may wait for one of those; more get "server unavailable". Default 10,000.
        public var maxPendingLookups = 10_000

        public init() {}

        var cacheSettings: AuthCache.Settings {
            AuthCache.Settings(
                ttl: .milliseconds(Int64(cacheTTL * 1000)),
                negativeTTL: .milliseconds(Int64(negativeCacheTTL * 1000)),
                maxEntries: cacheSize
            )
        }
    }

    private struct State {
        var configuration: Configuration
        var cache: AuthCache
        /// Bumped by every flush: a look-up that started before a flush does not fill the new cache.
        var epoch: UInt64 = 0
        /// Whether the last look-up failed: failures are logged once per episode, not per CONNECT.
        var lookupsFailing = false
    }

    private let users: any UserLookup
    private let hasher: PasswordHasher
    private let state: Mutex<State>
    private let lookups: SingleFlight<String, String?>
    private let verifications: SingleFlight<VerificationKey, Bool>
    private let lookupLimiter: AsyncLimiter
    /// The key of the password digests in the verified cache: random per process, so the cache holds
    /// nothing an attacker could test passwords against offline.
    private let digestKey: [UInt8] = SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
    private let logger: Logger
    private let clock = ContinuousClock()
    private let metrics = Metrics()

    /// - Parameters:
    ///   - users: where stored hashes come from (``UserStore``).
    ///   - hasher: runs scrypt off the event loops.
    ///   - configuration: anonymous access, cache and concurrency limits. `maxConcurrentLookups` and
    ///     `maxPendingLookups` are fixed here; the rest may change with ``reconfigure(_:)``.
    public init(users: any UserLookup, hasher: PasswordHasher, configuration: Configuration = Configuration(), logger: Logger) {
        self.users = users
        self.hasher = hasher
        self.logger = logger
        self.state = Mutex(State(configuration: configuration, cache: AuthCache(settings: configuration.cacheSettings)))
        self.lookups = SingleFlight()
        self.verifications = SingleFlight()
        self.lookupLimiter = AsyncLimiter(permits: configuration.maxConcurrentLookups, maxWaiting: configuration.maxPendingLookups)
    }

    /// The configuration in effect.
    public var configuration: Configuration { state.withLock { $0.configuration } }

    /// Applies new settings (anonymous access, cache TTLs and size) and forgets every cached user and
    /// verification.
    public func reconfigure(_ configuration: Configuration) {
        state.withLock { state in
            state.configuration = configuration
            state.cache = AuthCache(settings: configuration.cacheSettings)
            state.epoch += 1
        }
    }

    /// Forgets every cached user and verification.
    public func flushCache() {
        state.withLock { state in
            state.cache.removeAll()
            state.epoch += 1
        }
    }

    /// The most look-up queries that ran at once.
    var peakConcurrentLookups: Int { lookupLimiter.peakInside }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationResult {
        let result = await decide(credentials)
        metrics.record(result)
        return result
    }

    private func decide(_ credentials: ConnectCredentials) async -> AuthenticationResult {
        guard let username = credentials.username else {
            return configuration.allowAnonymous ? .accepted(username: nil) : .notAuthorized
        }
        // Authenticated by a client certificate verified against tls.ca_file (tls.use_cn_as_username).
        if credentials.certificateIdentity == username { return .accepted(username: username) }
        guard let password = credentials.password, password.readableBytes > 0 else { return .badCredentials }
        let secret = Array(password.readableBytesView)
        let stored: String?
        do {
            stored = try await storedHash(of: username)
        } catch {
            let first = state.withLock { state in
                defer { state.lookupsFailing = true }
                return !state.lookupsFailing
            }
            if first {
                logger.error(
                    "user look-ups fail; CONNECTs with a username get 'server unavailable' until they work again",
                    metadata: ["mqtt.username": "\(username)", "error": "\(String(reflecting: error))"]
                )
            } else {
                logger.debug("user look-up failed", metadata: ["mqtt.username": "\(username)", "error": "\(error)"])
            }
            return .unavailable
        }
        guard let stored else { return .badCredentials }
        let key = AuthCache.VerifiedKey(username: username, digest: Array(HMAC<SHA256>.authenticationCode(for: secret, using: SymmetricKey(data: digestKey))))
        let (hit, epoch) = state.withLock { state in
            (state.cache.isVerified(key, storedHash: stored, now: clock.now), state.epoch)
        }
        if hit {
            metrics.verifiedHits.increment()
            return .accepted(username: username)
        }
        do {
            let matches = try await verifications.run(VerificationKey(key: key, storedHash: stored)) {
                // A flight that ended between our cache miss and now has filled the cache: look again
                // before paying for scrypt. The result is cached before the flight ends, so no caller
                // can miss both the flight and the cache.
                let cached = state.withLock { state in state.cache.isVerified(key, storedHash: stored, now: clock.now) }
                if cached { return true }
                metrics.verifications.increment()
                let matches = try await hasher.verify(secret, against: stored)
                if matches {
                    state.withLock { state in
                        if state.epoch == epoch { state.cache.storeVerified(key, storedHash: stored, now: clock.now) }
                    }
                }
                return matches
            }
            return matches ? .accepted(username: username) : .badCredentials
        } catch is PasswordHash.FormatError {
            logger.error("stored password hash is not usable; reset it with `iotgw user passwd`", metadata: ["mqtt.username": "\(username)"])
            return .badCredentials
        } catch {
            logger.debug("password verification not run", metadata: ["mqtt.username": "\(username)", "error": "\(error)"])
            return .unavailable
        }
    }

    /// The stored hash of `username` (nil: no such user), from the cache or one shared query.
    private func storedHash(of username: String) async throws -> String? {
        let (cached, epoch) = state.withLock { state in (state.cache.user(username, now: clock.now), state.epoch) }
        if let cached {
            metrics.userHits.increment()
            return cached
        }
        return try await lookups.run(username) {
            // As for verifications: a flight that ended after our miss has filled the cache already.
            let refreshed = state.withLock { state in state.epoch == epoch ? state.cache.user(username, now: clock.now) : nil }
            if let refreshed { return refreshed }
            let hash = try await lookupLimiter.run {
                metrics.lookups.increment()
                return try await users.passwordHash(for: username)
            }
            let recovered = state.withLock { state in
                if state.epoch == epoch { state.cache.storeUser(username, hash: hash, now: clock.now) }
                defer { state.lookupsFailing = false }
                return state.lookupsFailing
            }
            if recovered { logger.notice("user look-ups work again") }
            return hash
        }
    }

    /// One verification in flight: this password against this stored hash.
    private struct VerificationKey: Hashable, Sendable {
        var key: AuthCache.VerifiedKey
        var storedHash: String
    }

    /// Counters, created once.
    private struct Metrics: Sendable {
        let accepted = Counter(label: "iotgw_auth_total", dimensions: [("result", "accepted")])
        let badCredentials = Counter(label: "iotgw_auth_total", dimensions: [("result", "bad_credentials")])
        let notAuthorized = Counter(label: "iotgw_auth_total", dimensions: [("result", "not_authorized")])
        let unavailable = Counter(label: "iotgw_auth_total", dimensions: [("result", "unavailable")])
        let lookups = Counter(label: "iotgw_auth_lookups_total")
        let verifications = Counter(label: "iotgw_auth_verifications_total")
        let userHits = Counter(label: "iotgw_auth_cache_hits_total", dimensions: [("cache", "user")])
        let verifiedHits = Counter(label: "iotgw_auth_cache_hits_total", dimensions: [("cache", "verified")])

        func record(_ result: AuthenticationResult) {
            switch result {
            case .accepted: accepted.increment()
            case .badCredentials: badCredentials.increment()
            case .notAuthorized: notAuthorized.increment()
            case .unavailable: unavailable.increment()
            case .throttled: break  // decided (and counted) by the LoginThrottle in front of this
            }
        }
    }
}

import GatewayConfig
import GatewayCore
import GatewayStorage
import Logging
import ServiceLifecycle

/// The gateway's `auth` settings in effect: which authenticator and ACL the broker uses, applied at
/// start-up and again on every SIGHUP.
///
/// The database authenticator exists whenever a database is open (storage enabled, or
/// `auth.backend: database`), so a reload may switch `auth.backend` between `none` and `database`
/// without a restart; without a database, switching to `database` needs one.
final class AccessControl: Sendable {
    let broker: Broker
    /// Checks passwords against the users table; nil when no database is open.
    let databaseAuthenticator: DatabaseAuthenticator?
    /// Blocks addresses that fail to log in too often; in front of the database authenticator.
    let loginThrottle: LoginThrottle

    init(broker: Broker, databaseAuthenticator: DatabaseAuthenticator?, logger: Logger) {
        self.broker = broker
        self.databaseAuthenticator = databaseAuthenticator
        self.loginThrottle = LoginThrottle(configuration: .init(), logger: logger)
    }

    /// Whether `auth` can take effect without a restart.
    func canApply(_ auth: GatewayConfigFile.Auth) -> Bool {
        auth.backend != "database" || databaseAuthenticator != nil
    }

    /// Puts `file.auth` into effect and forgets every cached user and password check. Existing
    /// subscriptions the new ACL no longer allows are revoked (``Broker/replaceAccessControl(authenticator:authorizer:)``).
    /// - Returns: the number of subscriptions revoked.
    @discardableResult
    func apply(_ file: GatewayConfigFile) -> Int {
        var authenticator: (any Authenticator)?
        loginThrottle.reconfigure(file.auth.loginThrottle.configuration)
        if let databaseAuthenticator {
            databaseAuthenticator.reconfigure(file.databaseAuthenticatorConfiguration)
            if file.auth.backend == "database" {
                authenticator = ThrottledAuthenticator(inner: databaseAuthenticator, throttle: loginThrottle)
            }
        }
        return broker.replaceAccessControl(authenticator: authenticator, authorizer: file.authorizer)
    }
}

/// Waits for graceful shutdown, then closes what it was given (the database and the hashing threads
/// when no ingest service owns them).
struct ClosingService: Service, CustomStringConvertible {
    let close: @Sendable () async -> Void
    var description: String { "ClosingService" }

    func run() async throws {
        // Ends (by throwing) when graceful shutdown starts or the task is cancelled; close either way.
        do {
            try await gracefulShutdown()
        } catch {}
        await close()
    }
}

extension GatewayConfigFile {
    /// The database authenticator's settings (`auth.*`, and the pool size for its look-up concurrency).
    var databaseAuthenticatorConfiguration: DatabaseAuthenticator.Configuration {
        var c = DatabaseAuthenticator.Configuration()
        c.allowAnonymous = auth.anonymous
        c.cacheTTL = auth.cacheTTL
        c.negativeCacheTTL = auth.negativeCacheTTL
        c.cacheSize = auth.cacheSize
        // Half the pool at most: a burst of CONNECTs with cold caches leaves the batch writer room.
        c.maxConcurrentLookups = max(1, storage.pool.size / 2)
        return c
    }

    /// The password hasher's settings.
    var passwordHasherConfiguration: PasswordHasher.Configuration {
        var c = PasswordHasher.Configuration()
        c.threads = auth.hashThreads
        c.maxPending = auth.maxPendingHashes
        return c
    }
}

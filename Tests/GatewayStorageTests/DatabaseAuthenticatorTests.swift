import Foundation
import GatewayCore
@testable import GatewayStorage
import NIOCore
import Synchronization
import Testing

/// A user store in memory that counts look-ups and the most running at once; each look-up takes a
/// little while, as a query would, so concurrent callers really overlap.
final class CountingUserStore: UserLookup {
    private struct State {
        var hashes: [String: String]
        var lookups: [String: Int] = [:]
        var running = 0
        var peakRunning = 0
        var failing = false
    }
    private let state: Mutex<State>
    let delay: Duration

    init(hashes: [String: String], delay: Duration = .milliseconds(5)) {
        self.state = Mutex(State(hashes: hashes))
        self.delay = delay
    }

    func passwordHash(for username: String) async throws -> String? {
        let failing = state.withLock { state in
            state.lookups[username, default: 0] += 1
            state.running += 1
            state.peakRunning = max(state.peakRunning, state.running)
            return state.failing
        }
        try? await Task.sleep(for: delay)
        return try state.withLock { state in
            state.running -= 1
            if failing { throw StoreDown() }
            return state.hashes[username]
        }
    }

    struct StoreDown: Error {}

    var totalLookups: Int { state.withLock { $0.lookups.values.reduce(0, +) } }
    var lookupsPerUser: [String: Int] { state.withLock { $0.lookups } }
    var peakRunning: Int { state.withLock { $0.peakRunning } }
    func set(_ username: String, hash: String?) { state.withLock { $0.hashes[username] = hash } }
    func setFailing(_ failing: Bool) { state.withLock { $0.failing = failing } }
}

@Suite("DatabaseAuthenticator", .timeLimit(.minutes(2)))
struct DatabaseAuthenticatorTests {
    static let fast = PasswordHash.Parameters(logN: 10, blockSize: 8, parallelism: 1)

    static func hash(_ password: String) throws -> String {
        try PasswordHash.make(password: Array(password.utf8), parameters: fast).encoded
    }

    static func credentials(_ username: String?, _ password: String?, clientID: String = "c") -> ConnectCredentials {
        ConnectCredentials(clientID: clientID, username: username, password: password.map { ByteBuffer(string: $0) }, remoteAddress: nil)
    }

    func withAuthenticator(
        _ store: CountingUserStore,
        configure: (inout DatabaseAuthenticator.Configuration) -> Void = { _ in },
        _ body: (DatabaseAuthenticator) async throws -> Void
    ) async throws {
        var hasherConfiguration = PasswordHasher.Configuration()
        hasherConfiguration.parameters = Self.fast
        let hasher = PasswordHasher(configuration: hasherConfiguration)
        var configuration = DatabaseAuthenticator.Configuration()
        configure(&configuration)
        let authenticator = DatabaseAuthenticator(users: store, hasher: hasher, configuration: configuration, logger: silentLogger)
        do {
            try await body(authenticator)
        } catch {
            await hasher.shutdown()
            throw error
        }
        await hasher.shutdown()
    }

    @Test("right password accepted, wrong password / unknown user / no password: bad credentials")
    func verdicts() async throws {
        let store = CountingUserStore(hashes: ["alice": try Self.hash("wonderland")])
        try await withAuthenticator(store) { auth in
            #expect(await auth.authenticate(Self.credentials("alice", "wonderland")) == .accepted(username: "alice"))
            #expect(await auth.authenticate(Self.credentials("alice", "Wonderland")) == .badCredentials)
            #expect(await auth.authenticate(Self.credentials("alice", nil)) == .badCredentials)
            #expect(await auth.authenticate(Self.credentials("alice", "")) == .badCredentials)
            #expect(await auth.authenticate(Self.credentials("mallory", "wonderland")) == .badCredentials)
            #expect(await auth.authenticate(Self.credentials(nil, nil)) == .accepted(username: nil))
        }
    }

    @Test("a verified certificate identity that is the username authenticates without a password or look-up")
    func certificateIdentity() async throws {
        let store = CountingUserStore(hashes: [:])
        try await withAuthenticator(store, configure: { $0.allowAnonymous = false }) { auth in
            var credentials = Self.credentials("device-42", nil)
            credentials.certificateIdentity = "device-42"
            #expect(await auth.authenticate(credentials) == .accepted(username: "device-42"))
            credentials.username = "someone-else"
            #expect(await auth.authenticate(credentials) == .badCredentials)
            #expect(store.totalLookups == 0)
        }
    }

    @Test("without anonymous access a client without a username is not authorized")
    func anonymousOff() async throws {
        let store = CountingUserStore(hashes: [:])
        try await withAuthenticator(store, configure: { $0.allowAnonymous = false }) { auth in
            #expect(await auth.authenticate(Self.credentials(nil, nil)) == .notAuthorized)
            #expect(await auth.authenticate(Self.credentials(nil, "pw")) == .notAuthorized)
            #expect(store.totalLookups == 0)
        }
    }

    @Test("5,000 concurrent CONNECTs of 20 users: exactly 20 look-ups, at most maxConcurrentLookups at once")
    func singleFlight() async throws {
        var hashes: [String: String] = [:]
        for index in 0..<20 { hashes["user\(index)"] = try Self.hash("pw\(index)") }
        let store = CountingUserStore(hashes: hashes, delay: .milliseconds(20))
        try await withAuthenticator(store, configure: { $0.maxConcurrentLookups = 4 }) { auth in
            let accepted = await withTaskGroup(of: Bool.self) { group in
                for attempt in 0..<5_000 {
                    let user = attempt % 20
                    group.addTask {
                        await auth.authenticate(Self.credentials("user\(user)", "pw\(user)", clientID: "d\(attempt)"))
                            == .accepted(username: "user\(user)")
                    }
                }
                var count = 0
                for await ok in group where ok { count += 1 }
                return count
            }
            #expect(accepted == 5_000)
            #expect(store.totalLookups == 20)
            #expect(store.lookupsPerUser.values.allSatisfy { $0 == 1 })
            #expect(store.peakRunning <= 4)
            #expect(auth.peakConcurrentLookups <= 4)
            // Everything is cached now: another round makes no look-up at all.
            for user in 0..<20 {
                #expect(await auth.authenticate(Self.credentials("user\(user)", "pw\(user)")) == .accepted(username: "user\(user)"))
            }
            #expect(store.totalLookups == 20)
        }
    }

    @Test("negative results are cached for negative_cache_ttl; failures are not cached")
    func negativeAndFailures() async throws {
        let store = CountingUserStore(hashes: [:], delay: .zero)
        try await withAuthenticator(store, configure: { $0.negativeCacheTTL = 60 }) { auth in
            for _ in 0..<5 { #expect(await auth.authenticate(Self.credentials("ghost", "pw")) == .badCredentials) }
            #expect(store.totalLookups == 1)
            store.setFailing(true)
            #expect(await auth.authenticate(Self.credentials("down", "pw")) == .unavailable)
            #expect(await auth.authenticate(Self.credentials("down", "pw")) == .unavailable)
            #expect(store.lookupsPerUser["down"] == 2)
            store.setFailing(false)
            store.set("down", hash: try Self.hash("pw"))
            #expect(await auth.authenticate(Self.credentials("down", "pw")) == .accepted(username: "down"))
        }
    }

    @Test("a password change takes effect once the cache is flushed (reload) or expires")
    func passwordChange() async throws {
        let store = CountingUserStore(hashes: ["dev": try Self.hash("old")], delay: .zero)
        try await withAuthenticator(store, configure: { $0.cacheTTL = 3600 }) { auth in
            #expect(await auth.authenticate(Self.credentials("dev", "old")) == .accepted(username: "dev"))
            store.set("dev", hash: try Self.hash("new"))
            // Still cached: the old password works until the entry goes.
            #expect(await auth.authenticate(Self.credentials("dev", "old")) == .accepted(username: "dev"))
            auth.flushCache()
            #expect(await auth.authenticate(Self.credentials("dev", "old")) == .badCredentials)
            #expect(await auth.authenticate(Self.credentials("dev", "new")) == .accepted(username: "dev"))
        }
        let expiring = CountingUserStore(hashes: ["dev": try Self.hash("old")], delay: .zero)
        try await withAuthenticator(expiring, configure: { $0.cacheTTL = 0.2 }) { auth in
            #expect(await auth.authenticate(Self.credentials("dev", "old")) == .accepted(username: "dev"))
            expiring.set("dev", hash: try Self.hash("new"))
            let deadline = ContinuousClock.now.advanced(by: .seconds(10))
            var refused = false
            while !refused && ContinuousClock.now < deadline {
                refused = await auth.authenticate(Self.credentials("dev", "old")) == .badCredentials
                if !refused { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(refused)
        }
    }

    @Test("a burst for one user with the right password runs scrypt once")
    func verificationSingleFlight() async throws {
        let store = CountingUserStore(hashes: ["one": try PasswordHash.make(password: Array("pw".utf8)).encoded], delay: .zero)
        try await withAuthenticator(store) { auth in
            let results = await withTaskGroup(of: AuthenticationResult.self) { group in
                for _ in 0..<200 { group.addTask { await auth.authenticate(Self.credentials("one", "pw")) } }
                var all: [AuthenticationResult] = []
                for await result in group { all.append(result) }
                return all
            }
            #expect(results.allSatisfy { $0 == .accepted(username: "one") })
            #expect(store.totalLookups == 1)
        }
    }
}

@Suite("AuthCache")
struct AuthCacheTests {
    @Test("entries expire after their TTL; the map never holds more than maxEntries")
    func expiryAndBound() {
        var cache = AuthCache(settings: .init(ttl: .seconds(30), negativeTTL: .seconds(5), maxEntries: 3))
        let start = ContinuousClock.now
        func user(_ name: String, after seconds: Int = 0) -> String?? {
            cache.user(name, now: start.advanced(by: .seconds(seconds)))
        }
        cache.storeUser("a", hash: "h", now: start)
        cache.storeUser("ghost", hash: nil, now: start)
        let fresh = user("a", after: 29)
        let negative = user("ghost", after: 4)
        let negativeExpired = user("ghost", after: 6)
        let expired = user("a", after: 31)
        #expect(fresh == .some("h"))
        #expect(negative == .some(nil))
        #expect(negativeExpired == nil)
        #expect(expired == nil)
        for index in 0..<10 { cache.storeUser("u\(index)", hash: "h", now: start) }
        #expect(cache.userCount == 3)
        let newest = user("u9")
        let oldest = user("u0")
        #expect(newest == .some("h"))
        #expect(oldest == nil)
        // Re-storing one key many times keeps the order queue bounded and the key alive.
        for _ in 0..<1_000 { cache.storeUser("u9", hash: "h2", now: start) }
        let restored = user("u9")
        #expect(restored == .some("h2"))
        #expect(cache.userCount <= 3)
    }

    @Test("a verification counts only against the same stored hash")
    func verifiedNeedsSameHash() {
        var cache = AuthCache(settings: .init(ttl: .seconds(30), negativeTTL: .seconds(5), maxEntries: 10))
        let now = ContinuousClock.now
        let key = AuthCache.VerifiedKey(username: "a", digest: [1, 2, 3])
        cache.storeVerified(key, storedHash: "old", now: now)
        let same = cache.isVerified(key, storedHash: "old", now: now)
        let changed = cache.isVerified(key, storedHash: "new", now: now)
        let otherPassword = cache.isVerified(AuthCache.VerifiedKey(username: "a", digest: [1, 2, 4]), storedHash: "old", now: now)
        let later = cache.isVerified(key, storedHash: "old", now: now.advanced(by: .seconds(31)))
        #expect(same)
        #expect(!changed)
        #expect(!otherPassword)
        #expect(!later)
        cache.storeVerified(key, storedHash: "old", now: now)
        cache.removeAll()
        let flushed = cache.isVerified(key, storedHash: "old", now: now)
        #expect(!flushed)
    }
}

@Suite("UserStore on SQLite", .timeLimit(.minutes(1)))
struct UserStoreTests {
    @Test("add, look up, list, set password, remove; duplicates and missing users are errors")
    func lifecycle() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("iotgw-users-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = SQLiteBackend.Configuration(path: directory + "/iotgw.db")
        configuration.poolSize = 2
        let database = try await SQLiteBackend.open(configuration, logger: silentLogger)
        do {
            let store = UserStore(database: database)
            #expect(try await store.list().isEmpty)
            #expect(try await store.passwordHash(for: "alice") == nil)
            try await store.add(username: "alice", passwordHash: "$scrypt$a")
            try await store.add(username: "bob", passwordHash: "$scrypt$b")
            await #expect(throws: UserStore.Error(code: .userExists, username: "alice")) {
                try await store.add(username: "alice", passwordHash: "x")
            }
            #expect(try await store.passwordHash(for: "alice") == "$scrypt$a")
            #expect(try await store.passwordHash(for: "Alice") == nil)
            let listed = try await store.list()
            #expect(listed.map(\.username) == ["alice", "bob"])
            let created = try #require(listed.first).createdAt
            #expect(abs(created - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000)
            #expect(listed.first?.updatedAt == created)
            try await Task.sleep(for: .milliseconds(5))
            try await store.setPasswordHash(username: "alice", passwordHash: "$scrypt$a2")
            let alice = try #require(try await store.user("alice"))
            #expect(alice.passwordHash == "$scrypt$a2")
            #expect(alice.createdAt == created && alice.updatedAt > created)
            await #expect(throws: UserStore.Error(code: .noSuchUser, username: "carol")) {
                try await store.setPasswordHash(username: "carol", passwordHash: "x")
            }
            try await store.remove(username: "bob")
            await #expect(throws: UserStore.Error(code: .noSuchUser, username: "bob")) {
                try await store.remove(username: "bob")
            }
            #expect(try await store.list().map(\.username) == ["alice"])
            // The table as migration v2 made it.
            let columns = try await database.query("PRAGMA table_info(users)").compactMap { $0["name"].text }
            #expect(columns == ["username", "password_hash", "created_at", "updated_at"])
        } catch {
            await database.close()
            throw error
        }
        await database.close()
    }

    @Test("DatabaseAuthenticator over a real SQLite users table")
    func endToEnd() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("iotgw-users-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = SQLiteBackend.Configuration(path: directory + "/iotgw.db")
        configuration.poolSize = 4
        let database = try await SQLiteBackend.open(configuration, logger: silentLogger)
        var hasherConfiguration = PasswordHasher.Configuration()
        hasherConfiguration.parameters = DatabaseAuthenticatorTests.fast
        let hasher = PasswordHasher(configuration: hasherConfiguration)
        let store = UserStore(database: database)
        for index in 0..<5 {
            try await store.add(username: "dev\(index)", passwordHash: try await hasher.hash(Array("secret\(index)".utf8)))
        }
        let auth = DatabaseAuthenticator(users: store, hasher: hasher, logger: silentLogger)
        let accepted = await withTaskGroup(of: Bool.self) { group in
            for attempt in 0..<500 {
                let user = attempt % 5
                group.addTask {
                    await auth.authenticate(DatabaseAuthenticatorTests.credentials("dev\(user)", "secret\(user)"))
                        == .accepted(username: "dev\(user)")
                }
            }
            var count = 0
            for await ok in group where ok { count += 1 }
            return count
        }
        #expect(accepted == 500)
        #expect(database.peakConnectionsInUse <= 4)
        #expect(await auth.authenticate(DatabaseAuthenticatorTests.credentials("dev1", "secret2")) == .badCredentials)
        await hasher.shutdown()
        await database.close()
    }
}

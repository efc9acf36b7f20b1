import Foundation
import GatewayCore
@testable import GatewayStorage
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization
import Testing

/// What only PostgreSQL has: the server's own view of our sessions, gateways sharing a database,
/// refusing to start without a server.
@Suite("PostgresBackend", .timeLimit(.minutes(1)))
struct PostgresBackendTests {
    /// Sessions the server has open for `applicationName` (pg_stat_activity), seen from an admin
    /// connection of another application name.
    static func sessions(_ applicationName: String, on admin: PostgresConnection) async throws -> Int {
        let rows = try await admin.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = \(applicationName)",
            logger: silentLogger
        )
        var count = 0
        for try await row in rows { count = Int(try row.decode(Int64.self)) }
        return count
    }

    @Test(
        "pg_stat_activity never shows more than pool.size sessions during 50 concurrent inserts",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func serverSeesAtMostPoolSize() async throws {
        try await PostgresTestServer.withFreshDatabase { configuration in
            let poolSize = 3
            // A long acquire timeout, as in the SQLite pool test: what is under test is how many sessions the
            // server sees, and 50 inserts through 3 connections on a loaded machine can queue past 5 s.
            try await TestDatabase.postgres(configuration).withStore(poolSize: poolSize, acquireTimeout: 120) { store in
                try await PostgresTestServer.withAdminConnection { admin in
                    let finished = Flag()
                    let inserts = Task {
                        let errors = await insertConcurrently(store, clients: 50)
                        finished.set()
                        return errors
                    }
                    // Sample the server's view for as long as the inserts run (one round trip each).
                    var samples: [Int] = []
                    do {
                        while !finished.isSet {
                            samples.append(try await Self.sessions(configuration.applicationName, on: admin))
                        }
                    } catch {
                        _ = await inserts.value
                        throw error
                    }
                    let errors = await inserts.value
                    let after = try await Self.sessions(configuration.applicationName, on: admin)
                    print("pg_stat_activity (pool.size \(poolSize)): at most \(samples.max() ?? -1) sessions in \(samples.count) samples during 50 concurrent inserts; \(after) after")
                    #expect(errors.isEmpty, "\(errors)")
                    #expect(!samples.isEmpty)
                    #expect(samples.allSatisfy { $0 <= poolSize }, "sessions seen: \(samples)")
                    #expect(after >= 1 && after <= poolSize, "the pool keeps its connections: \(after)")
                    #expect(store.database.peakConnectionsInUse <= poolSize)
                }
            }
            // close() ends the sessions.
            try await PostgresTestServer.withAdminConnection { admin in
                let deadline = ContinuousClock.now + .seconds(10)
                var left = try await Self.sessions(configuration.applicationName, on: admin)
                while left > 0 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(50))
                    left = try await Self.sessions(configuration.applicationName, on: admin)
                }
                #expect(left == 0, "sessions left after close(): \(left)")
            }
        }
    }

    @Test(
        "Two gateways opening one empty database at once: migrations applied once, both work",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func concurrentOpen() async throws {
        try await PostgresTestServer.withFreshDatabase { configuration in
            async let first = TestDatabase.postgres(configuration).open(poolSize: 2)
            async let second = TestDatabase.postgres(configuration).open(poolSize: 2)
            let stores = try await [first, second]
            do {
                try await stores[0].insert([record(1)])
                try await stores[1].insert([record(2)])
                let versions = try await stores[1].database.query("SELECT version FROM schema_migrations ORDER BY version")
                #expect(versions.compactMap { $0["version"].int } == SQLMigrations.all.map(\.version))
                let count = try await stores[0].database.query("SELECT COUNT(*) AS n FROM messages")
                #expect(count.first?["n"].int == 2)
            } catch {
                for store in stores { await store.database.close() }
                throw error
            }
            for store in stores { await store.database.close() }
        }
    }

    @Test(
        "A wrong password refuses to open at once, naming host:port and the server's reason",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func wrongPassword() async throws {
        var configuration = try #require(PostgresTestServer.base)
        configuration.password = "not-the-password"
        configuration.connectTimeout = 10
        let started = ContinuousClock.now
        do {
            let database = try await PostgresBackend.open(configuration, logger: silentLogger)
            await database.close()
            Issue.record("opened with a wrong password")
        } catch let error as PostgresBackend.Unavailable {
            #expect(error.description.contains(configuration.endpoint))
            #expect(error.description.contains("28P01"), "SQLSTATE invalid_password: \(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(5), "authentication failures are not retried")
    }

    @Test(
        "tls: require against a server without TLS refuses to open at once",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func tlsRequiredButNotOffered() async throws {
        // The test server runs without ssl (postgres.sh), so `require` must fail rather than fall back.
        var configuration = try #require(PostgresTestServer.base)
        configuration.tls = .require
        configuration.connectTimeout = 10
        let started = ContinuousClock.now
        do {
            let database = try await PostgresBackend.open(configuration, logger: silentLogger)
            await database.close()
            Issue.record("opened with tls: require against a server without TLS")
        } catch let error as PostgresBackend.Unavailable {
            #expect(error.description.contains(configuration.endpoint))
            #expect(error.description.contains("sslUnsupported"), "\(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(5), "a server without TLS is not retried")
    }

    @Test("No server at host:port: open gives up after connect_timeout with an error naming host:port")
    func unreachable() async throws {
        // A port nothing listens on: bound, then closed.
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(channel.localAddress?.port)
        try await channel.close()
        var configuration = PostgresBackend.Configuration(user: "iotgw", password: "x", database: "iotgw")
        configuration.port = port
        configuration.connectTimeout = 1.5
        let started = ContinuousClock.now
        do {
            let database = try await PostgresBackend.open(configuration, logger: silentLogger)
            await database.close()
            Issue.record("opened without a server")
        } catch let error as PostgresBackend.Unavailable {
            #expect(error.description.contains("127.0.0.1:\(port)"), "\(error)")
            #expect(error.description.contains("connect_timeout"), "\(error)")
        }
        let waited = ContinuousClock.now - started
        #expect(waited >= .seconds(1) && waited < .seconds(5), "waited \(waited)")
    }

    @Test(
        "A query on a connection that has closed fails at once instead of waiting forever",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func queryOnClosedConnectionFails() async throws {
        try await PostgresTestServer.withAdminConnection { connection in
            let pooled = PooledPostgresConnection(connection: connection, logger: silentLogger)
            #expect(try await pooled.query("SELECT 1", []).first?.values == [.integer(1)])
            try await connection.close()
            await #expect(throws: ClosedConnectionGuard.ConnectionClosed.self) {
                _ = try await pooled.query("SELECT 1", [])
            }
        }
    }

    @Test(
        "A query whose connection closes while it waits ends with ConnectionClosed (postgres-nio drops such queries)",
        .enabled(if: PostgresTestServer.base != nil, PostgresTestServer.skipReason)
    )
    func queryLostWithItsConnectionEnds() async throws {
        try await PostgresTestServer.withAdminConnection { connection in
            // Stands in for a query postgres-nio lost: it only ends when the test lets it.
            let (release, releaseContinuation) = AsyncStream<Void>.makeStream()
            let started = Flag()
            let waiter = Task {
                try await ClosedConnectionGuard.run(on: connection) {
                    started.set()
                    for await _ in release {}
                    return 1
                }
            }
            while !started.isSet { await Task.yield() }
            try await connection.close()
            await #expect(throws: ClosedConnectionGuard.ConnectionClosed.self) { _ = try await waiter.value }
            releaseContinuation.finish()
        }
    }
}

/// A one-way flag shared between tasks.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

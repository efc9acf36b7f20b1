import Foundation
@testable import GatewayStorage
import Logging
import PostgresNIO
import Testing

/// The backends the storage tests run on. PostgreSQL needs a server: `make test` starts one
/// (Tests/Support/postgres.sh) and sets `IOTGW_TEST_POSTGRES_URL`; without it only SQLite runs.
enum StorageBackend: String, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { rawValue }

    /// The backends available to this run: SQLite always, PostgreSQL when the server is configured.
    static var available: [StorageBackend] { PostgresTestServer.base == nil ? [.sqlite] : [.sqlite, .postgres] }
}

/// The test PostgreSQL server named by `IOTGW_TEST_POSTGRES_URL`
/// (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`).
enum PostgresTestServer {
    static let variable = "IOTGW_TEST_POSTGRES_URL"
    static let skipReason: Comment = "IOTGW_TEST_POSTGRES_URL is not set: PostgreSQL cases are skipped (`make test` starts a server and sets it)"

    /// The server's connection settings, or nil when the variable is unset.
    static let base: PostgresBackend.Configuration? = {
        guard let text = ProcessInfo.processInfo.environment[variable], !text.isEmpty else { return nil }
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql",
            let host = url.host, let user = url.user
        else {
            fatalError("\(variable) is not postgres://USER:PASSWORD@HOST:PORT/DATABASE: \(text)")
        }
        var configuration = PostgresBackend.Configuration(
            user: user,
            password: url.password,
            database: String(url.path.drop(while: { $0 == "/" }))
        )
        configuration.host = host
        configuration.port = url.port ?? 5432
        configuration.connectTimeout = 5
        return configuration
    }()

    /// One plain connection to `database` (the server's own test database by default), outside any
    /// pool, for setting up and inspecting.
    static func withAdminConnection<T>(
        database: String? = nil,
        applicationName: String = "iotgw-tests-admin",
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let base = try #require(base)
        var configuration = PostgresConnection.Configuration(
            host: base.host,
            port: base.port,
            username: base.user,
            password: base.password,
            database: database ?? base.database,
            tls: .disable
        )
        configuration.options.additionalStartupParameters = [("application_name", applicationName)]
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: silentLogger)
        do {
            let result = try await body(connection)
            try await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// A new, empty database for one test, dropped afterwards (also when the test throws).
    static func withFreshDatabase<T>(_ body: (PostgresBackend.Configuration) async throws -> T) async throws -> T {
        var configuration = try #require(base)
        let name = "iotgw_t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await withAdminConnection { connection in
            _ = try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: silentLogger)
        }
        configuration.database = name
        configuration.applicationName = name
        do {
            let result = try await body(configuration)
            try await drop(name)
            return result
        } catch {
            try? await drop(name)
            throw error
        }
    }

    private static func drop(_ name: String) async throws {
        try await withAdminConnection { connection in
            _ = try await connection.query(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"), logger: silentLogger)
        }
    }
}

/// Where one test's database lives: a fresh SQLite file in a temporary directory or a fresh
/// PostgreSQL database; both removed after the test.
enum TestDatabase {
    case sqlite(path: String)
    case postgres(PostgresBackend.Configuration)

    /// Creates an empty database on `backend`, runs `body`, removes the database.
    static func withFresh<T>(_ backend: StorageBackend, _ body: (TestDatabase) async throws -> T) async throws -> T {
        switch backend {
        case .sqlite:
            let directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("iotgw-storage-tests-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            return try await body(.sqlite(path: directory + "/iotgw.db"))
        case .postgres:
            return try await PostgresTestServer.withFreshDatabase { configuration in
                try await body(.postgres(configuration))
            }
        }
    }

    /// Opens the database (applying migrations).
    func openDatabase(poolSize: Int = 4, acquireTimeout: Double = 5) async throws -> any SQLDatabase {
        switch self {
        case .sqlite(let path):
            var configuration = SQLiteBackend.Configuration(path: path)
            configuration.poolSize = poolSize
            configuration.acquireTimeout = acquireTimeout
            return try await SQLiteBackend.open(configuration, logger: silentLogger)
        case .postgres(var configuration):
            configuration.poolSize = poolSize
            configuration.acquireTimeout = acquireTimeout
            return try await PostgresBackend.open(configuration, logger: silentLogger)
        }
    }

    /// Opens the database (applying migrations) behind a telemetry store.
    func open(poolSize: Int = 4, acquireTimeout: Double = 5) async throws -> SQLTelemetryStore {
        SQLTelemetryStore(database: try await openDatabase(poolSize: poolSize, acquireTimeout: acquireTimeout))
    }

    /// Opens a store, runs `body`, and closes the store whether `body` threw or not.
    func withStore<T>(poolSize: Int = 4, acquireTimeout: Double = 5, _ body: (SQLTelemetryStore) async throws -> T) async throws -> T {
        let store = try await open(poolSize: poolSize, acquireTimeout: acquireTimeout)
        do {
            let result = try await body(store)
            await store.database.close()
            return result
        } catch {
            await store.database.close()
            throw error
        }
    }
}

import GatewayCore

/// Where ``DatabaseAuthenticator`` finds a user's stored password hash. ``UserStore`` in production;
/// tests put a counting fake behind it.
public protocol UserLookup: Sendable {
    /// The stored hash string of `username`, or nil when there is no such user.
    func passwordHash(for username: String) async throws -> String?
}

/// The `users` table (migration v2) over any ``SQLDatabase``: portable SQL only, `$N` placeholders,
/// every use through the database's pool.
public struct UserStore: UserLookup {
    /// One row of `users`.
    public struct User: Sendable, Hashable {
        public var username: String
        public var passwordHash: String
        /// Milliseconds since the Unix epoch.
        public var createdAt: Int64
        /// Milliseconds since the Unix epoch.
        public var updatedAt: Int64
    }

    /// Why a change was refused.
    public struct Error: Swift.Error, CustomStringConvertible, Equatable {
        public enum Code: Sendable, Equatable {
            case userExists
            case noSuchUser
        }
        public var code: Code
        public var username: String

        public init(code: Code, username: String) {
            self.code = code
            self.username = username
        }

        public var description: String {
            switch code {
            case .userExists: "user '\(username)' already exists"
            case .noSuchUser: "no user '\(username)'"
            }
        }
    }

    let database: any SQLDatabase

    public init(database: any SQLDatabase) {
        self.database = database
    }

    public func passwordHash(for username: String) async throws -> String? {
        try await database.query("SELECT password_hash FROM users WHERE username = $1", [.text(username)]).first?["password_hash"].text
    }

    /// The user `username`, or nil.
    public func user(_ username: String) async throws -> User? {
        try await database.query(
            "SELECT username, password_hash, created_at, updated_at FROM users WHERE username = $1",
            [.text(username)]
        ).first.flatMap(Self.user)
    }

    /// Every user, by username.
    public func list() async throws -> [User] {
        try await database.query("SELECT username, password_hash, created_at, updated_at FROM users ORDER BY username")
            .compactMap(Self.user)
    }

    /// Adds a user.
    /// - Parameter passwordHash: the encoded hash (``PasswordHasher/hash(_:)``).
    /// - Throws: ``Error`` `.userExists` when the username is taken.
    public func add(username: String, passwordHash: String) async throws {
        let now = WallClock.millisecondsSinceEpoch()
        try await database.transaction { connection in
            let existing = try await connection.query("SELECT username FROM users WHERE username = $1", [.text(username)])
            guard existing.isEmpty else { throw Error(code: .userExists, username: username) }
            _ = try await connection.query(
                "INSERT INTO users (username, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4)",
                [.text(username), .text(passwordHash), .integer(now), .integer(now)]
            )
        }
    }

    /// Replaces a user's password hash.
    /// - Throws: ``Error`` `.noSuchUser`.
    public func setPasswordHash(username: String, passwordHash: String) async throws {
        let updated = try await database.query(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE username = $3 RETURNING username",
            [.text(passwordHash), .integer(WallClock.millisecondsSinceEpoch()), .text(username)]
        )
        guard !updated.isEmpty else { throw Error(code: .noSuchUser, username: username) }
    }

    /// Removes a user.
    /// - Throws: ``Error`` `.noSuchUser`.
    public func remove(username: String) async throws {
        let removed = try await database.query("DELETE FROM users WHERE username = $1 RETURNING username", [.text(username)])
        guard !removed.isEmpty else { throw Error(code: .noSuchUser, username: username) }
    }

    private static func user(_ row: SQLRow) -> User? {
        guard let username = row["username"].text, let hash = row["password_hash"].text,
            let created = row["created_at"].integer, let updated = row["updated_at"].integer
        else { return nil }
        return User(username: username, passwordHash: hash, createdAt: created, updatedAt: updated)
    }
}

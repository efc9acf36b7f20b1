import ArgumentParser
import Foundation
import GatewayConfig
import GatewayStorage
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `iotgw user add|passwd|remove|list`: the users table devices authenticate against
/// (`auth.backend: database`), in the database the configuration file names.
///
/// Works while the gateway runs (SQLite in WAL mode lets a second process write). A running gateway
/// sees a new or removed user, or a new password, once its cached entry expires (`auth.cache_ttl`,
/// unknown users `auth.negative_cache_ttl`), or at once after SIGHUP.
///
/// Exit status: 0 done, 1 refused or failed (the user exists, there is no such user, the database
/// cannot be opened), 2 bad usage or an invalid configuration file.
struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user",
        abstract: "Manage the users devices authenticate as (auth.backend: database).",
        discussion: """
            Passwords are read from the terminal without echo, or with --password-stdin from the first \
            line of standard input; never from the command line, where other users could see them.
            """,
        subcommands: [Add.self, Passwd.self, Remove.self, List.self]
    )

    struct Options: ParsableArguments {
        @Option(name: .long, help: "The configuration file (.yaml, .yml or .json) naming the database.")
        var config: String = "Configs/iotgw.yaml"
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a user.")
        @OptionGroup var options: Options
        @Argument(help: "The username (the MQTT CONNECT username).") var username: String
        @Flag(name: .customLong("password-stdin"), help: "Read the password from the first line of standard input.")
        var passwordStdin = false

        func run() async throws {
            try UserCommand.validate(username: username)
            try await UserCommand.withStore(options.config) { store, hasher in
                let password = try UserCommand.readPassword(fromStandardInput: passwordStdin, confirm: true)
                try await store.add(username: username, passwordHash: try await hasher.hash(password))
                print("user '\(username)' added")
            }
        }
    }

    struct Passwd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "passwd", abstract: "Set a user's password.")
        @OptionGroup var options: Options
        @Argument(help: "The username.") var username: String
        @Flag(name: .customLong("password-stdin"), help: "Read the password from the first line of standard input.")
        var passwordStdin = false

        func run() async throws {
            try await UserCommand.withStore(options.config) { store, hasher in
                guard try await store.user(username) != nil else {
                    throw UserStore.Error(code: .noSuchUser, username: username)
                }
                let password = try UserCommand.readPassword(fromStandardInput: passwordStdin, confirm: true)
                try await store.setPasswordHash(username: username, passwordHash: try await hasher.hash(password))
                print("password of '\(username)' changed (a running gateway uses it within auth.cache_ttl, or at once after SIGHUP)")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a user.")
        @OptionGroup var options: Options
        @Argument(help: "The username.") var username: String

        func run() async throws {
            try await UserCommand.withStore(options.config) { store, _ in
                try await store.remove(username: username)
                print("user '\(username)' removed (connected clients stay connected; new CONNECTs are refused once the cache entry expires)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List users with their creation and last-change times (UTC).")
        @OptionGroup var options: Options

        func run() async throws {
            try await UserCommand.withStore(options.config) { store, _ in
                let users = try await store.list()
                let width = max(8, users.map(\.username.count).max() ?? 0)
                func pad(_ text: String) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
                print("\(pad("USERNAME"))  CREATED               UPDATED")
                for user in users {
                    print("\(pad(user.username))  \(UserCommand.timestamp(user.createdAt))  \(UserCommand.timestamp(user.updatedAt))")
                }
            }
        }
    }

    // MARK: Shared

    /// What the user typed that cannot be a username.
    struct UsageError: Error, CustomStringConvertible {
        var description: String
    }

    /// Usernames go into MQTT strings and `%u` ACL patterns: no control characters, no `/`, `+`, `#`.
    /// Prints the problem and exits with status 2.
    static func validate(username: String) throws {
        var problem: String?
        if username.isEmpty || username.utf8.count > 65_535 {
            problem = "the username must be 1-65535 bytes"
        } else if username.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            problem = "the username must not contain control characters"
        } else if username.contains(where: { $0 == "/" || $0 == "+" || $0 == "#" }) {
            problem = "the username must not contain '/', '+' or '#' (they would break %u ACL patterns)"
        }
        if let problem {
            printError("iotgw: \(problem)")
            throw ExitCode(2)
        }
    }

    /// Loads the configuration, opens its database (applying migrations), and runs `body` with the
    /// users table and a password hasher; maps failures to exit statuses with one clear line.
    static func withStore(_ path: String, _ body: (UserStore, PasswordHasher) async throws -> Void) async throws {
        let file: GatewayConfigFile
        let databaseConfiguration: DatabaseConfiguration
        do {
            file = try ConfigLoader.load(path: path)
            databaseConfiguration = try file.databaseConfiguration(path: path)
        } catch {
            printError("iotgw: invalid configuration: \(error)")
            throw ExitCode(2)
        }
        if file.auth.backend != "database" {
            printError("note: \(path) has auth.backend '\(file.auth.backend)'; the gateway checks these users only with auth.backend: database")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let logger = Logger(label: "iotgw.user")
        let database: any SQLDatabase
        do {
            database = try await databaseConfiguration.open(logger: logger)
        } catch {
            printError("iotgw: cannot open the database at \(databaseConfiguration.location): \(error)")
            throw ExitCode(1)
        }
        let hasher = PasswordHasher(configuration: file.passwordHasherConfiguration)
        var failure: (any Error)?
        do {
            try await body(UserStore(database: database), hasher)
        } catch {
            failure = error
        }
        await hasher.shutdown()
        await database.close()
        switch failure {
        case nil:
            return
        case let error as UserStore.Error:
            printError("iotgw: \(error)")
            throw ExitCode(1)
        case let error as UsageError:
            printError("iotgw: \(error)")
            throw ExitCode(2)
        case let error?:
            printError("iotgw: \(error)")
            throw ExitCode(1)
        }
    }

    /// Reads a password: the first line of standard input, or from the terminal without echo (twice
    /// when `confirm`). Refuses an empty one.
    static func readPassword(fromStandardInput: Bool, confirm: Bool) throws -> [UInt8] {
        let password: String
        if fromStandardInput {
            guard let line = readLine(strippingNewline: true) else {
                throw UsageError(description: "no password on standard input")
            }
            password = line
        } else {
            guard isatty(STDIN_FILENO) == 1 else {
                throw UsageError(description: "standard input is not a terminal: pass --password-stdin and write the password to it")
            }
            password = try promptWithoutEcho("Password: ")
            if confirm {
                guard try promptWithoutEcho("Retype password: ") == password else {
                    throw UsageError(description: "the passwords do not match")
                }
            }
        }
        guard !password.isEmpty else { throw UsageError(description: "the password must not be empty") }
        return Array(password.utf8)
    }

    /// Prints `prompt` on standard error and reads a line from the terminal with echo off.
    private static func promptWithoutEcho(_ prompt: String) throws -> String {
        var saved = termios()
        guard tcgetattr(STDIN_FILENO, &saved) == 0 else {
            throw UsageError(description: "cannot read the terminal settings: \(String(cString: strerror(errno)))")
        }
        var silent = saved
        silent.c_lflag &= ~tcflag_t(ECHO)
        guard tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent) == 0 else {
            throw UsageError(description: "cannot turn off echo: \(String(cString: strerror(errno)))")
        }
        FileHandle.standardError.write(Data(prompt.utf8))
        let line = readLine(strippingNewline: true)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
        FileHandle.standardError.write(Data("\n".utf8))
        guard let line else { throw UsageError(description: "no password entered") }
        return line
    }

    /// Milliseconds since the epoch as `2026-11-25T18:00:00Z`.
    static func timestamp(_ milliseconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }
}

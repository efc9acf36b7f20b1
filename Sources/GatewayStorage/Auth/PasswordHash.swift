import Crypto
import Foundation
import _CryptoExtras

/// A salted scrypt password hash in a self-describing string, so the parameters can be raised later
/// without invalidating stored passwords:
///
///     $scrypt$ln=14,r=8,p=1$<salt, base64>$<hash, base64>
///
/// (`ln` is log2 of the cost N; the layout follows passlib's scrypt format.) Hashing and verifying are
/// slow on purpose (tens of milliseconds and 16 MiB with the defaults) and block their thread: call
/// them through ``PasswordHasher``, never on an event loop or the cooperative pool.
public struct PasswordHash: Sendable, Hashable {
    /// scrypt's cost parameters.
    public struct Parameters: Sendable, Hashable {
        /// log2 of the CPU/memory cost N. Default 14 (N = 16384).
        public var logN: Int
        /// The block size r. Default 8.
        public var blockSize: Int
        /// The parallelism p. Default 1.
        public var parallelism: Int

        /// The scrypt paper's interactive-login parameters (N = 2^14, r = 8, p = 1: 16 MiB per
        /// verification). Stronger settings multiply the memory every concurrent verification takes.
        public static let `default` = Parameters(logN: 14, blockSize: 8, parallelism: 1)

        public init(logN: Int, blockSize: Int, parallelism: Int) {
            self.logN = logN
            self.blockSize = blockSize
            self.parallelism = parallelism
        }

        /// Bounds on what a stored string may ask for, so a tampered row cannot make a verification
        /// take gigabytes or minutes: N ≤ 2^20, r ≤ 16, p ≤ 4 (at most 32 MiB × 4).
        var isWithinLimits: Bool {
            (10...20).contains(logN) && (1...16).contains(blockSize) && (1...4).contains(parallelism)
        }

        /// Bytes of memory one derivation needs (BoringSSL: 128 · r · (N + p + 1)), with a page to spare.
        var memoryBytes: Int { 128 * blockSize * ((1 << logN) + parallelism + 1) + 4096 }
    }

    /// A string that is not a hash this code can check.
    public struct FormatError: Error, CustomStringConvertible {
        public var description: String { "not a password hash this gateway understands (expected $scrypt$ln=..,r=..,p=..$salt$hash)" }
    }

    public static let algorithm = "scrypt"
    static let saltBytes = 16
    static let hashBytes = 32

    public var parameters: Parameters
    public var salt: [UInt8]
    public var hash: [UInt8]

    /// Parses an encoded hash.
    /// - Throws: ``FormatError`` when the string is malformed, names another algorithm, or asks for
    ///   parameters outside the bounds.
    public init(encoded: String) throws {
        let fields = encoded.split(separator: "$", omittingEmptySubsequences: false)
        guard fields.count == 5, fields[0].isEmpty, fields[1] == Self.algorithm else { throw FormatError() }
        var values: [Substring: Int] = [:]
        for pair in fields[2].split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let value = Int(parts[1]), values[parts[0]] == nil else { throw FormatError() }
            values[parts[0]] = value
        }
        guard values.count == 3, let logN = values["ln"], let r = values["r"], let p = values["p"] else { throw FormatError() }
        let parameters = Parameters(logN: logN, blockSize: r, parallelism: p)
        guard parameters.isWithinLimits,
            let salt = Data(base64Encoded: String(fields[3])), salt.count >= Self.saltBytes, salt.count <= 64,
            let hash = Data(base64Encoded: String(fields[4])), hash.count >= 16, hash.count <= 64
        else { throw FormatError() }
        self.parameters = parameters
        self.salt = Array(salt)
        self.hash = Array(hash)
    }

    init(parameters: Parameters, salt: [UInt8], hash: [UInt8]) {
        self.parameters = parameters
        self.salt = salt
        self.hash = hash
    }

    /// The string stored in `users.password_hash`.
    public var encoded: String {
        "$\(Self.algorithm)$ln=\(parameters.logN),r=\(parameters.blockSize),p=\(parameters.parallelism)$"
            + Data(salt).base64EncodedString() + "$" + Data(hash).base64EncodedString()
    }

    /// Hashes `password` with a fresh random salt. Blocks for the whole derivation.
    /// - Throws: when `password` is empty (an empty password is never accepted) or the derivation fails.
    public static func make(password: [UInt8], parameters: Parameters = .default) throws -> PasswordHash {
        guard !password.isEmpty else { throw EmptyPassword() }
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<saltBytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let hash = try derive(password, salt: salt, parameters: parameters, count: hashBytes)
        return PasswordHash(parameters: parameters, salt: salt, hash: hash)
    }

    /// Whether `password` is the one this hash was made from, compared in constant time. Blocks for
    /// the whole derivation. An empty password never matches.
    public func verify(_ password: [UInt8]) throws -> Bool {
        guard !password.isEmpty else { return false }
        let candidate = try Self.derive(password, salt: salt, parameters: parameters, count: hash.count)
        return Self.constantTimeEquals(candidate, hash)
    }

    /// An empty password: refused by ``make(password:parameters:)``.
    public struct EmptyPassword: Error, CustomStringConvertible {
        public var description: String { "the password must not be empty" }
    }

    private static func derive(_ password: [UInt8], salt: [UInt8], parameters: Parameters, count: Int) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(
            from: password,
            salt: salt,
            outputByteCount: count,
            rounds: 1 << parameters.logN,
            blockSize: parameters.blockSize,
            parallelism: parameters.parallelism,
            maxMemory: parameters.memoryBytes
        )
        return key.withUnsafeBytes { Array($0) }
    }

    /// Compares without an early exit, so the time taken says nothing about where the first
    /// difference is.
    static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}

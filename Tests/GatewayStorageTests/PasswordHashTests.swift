import Foundation
@testable import GatewayStorage
import Testing

@Suite("Password hashing", .timeLimit(.minutes(1)))
struct PasswordHashTests {
    /// Cheap parameters for the tests that are not about cost (2^10 instead of 2^14).
    static let fast = PasswordHash.Parameters(logN: 10, blockSize: 8, parallelism: 1)

    @Test("a hash verifies its own password and no other")
    func roundTrip() throws {
        let hash = try PasswordHash.make(password: Array("correct horse".utf8), parameters: Self.fast)
        #expect(try hash.verify(Array("correct horse".utf8)))
        #expect(try !hash.verify(Array("correct horsf".utf8)))
        #expect(try !hash.verify(Array("correct horse ".utf8)))
        #expect(try !hash.verify([]))
    }

    @Test("the encoded string names the algorithm and parameters and survives a parse")
    func encodedIsSelfDescribing() throws {
        let hash = try PasswordHash.make(password: Array("pw".utf8), parameters: Self.fast)
        let encoded = hash.encoded
        #expect(encoded.hasPrefix("$scrypt$ln=10,r=8,p=1$"))
        let fields = encoded.split(separator: "$")
        #expect(fields.count == 4)
        #expect(Data(base64Encoded: String(fields[2]))?.count == 16)
        #expect(Data(base64Encoded: String(fields[3]))?.count == 32)
        let parsed = try PasswordHash(encoded: encoded)
        #expect(parsed == hash)
        #expect(try parsed.verify(Array("pw".utf8)))
        // The default parameters are the ones the string records.
        let strong = try PasswordHash.make(password: Array("pw".utf8))
        #expect(strong.encoded.hasPrefix("$scrypt$ln=14,r=8,p=1$"))
    }

    @Test("two hashes of one password differ (random salt)")
    func salted() throws {
        let a = try PasswordHash.make(password: Array("same".utf8), parameters: Self.fast)
        let b = try PasswordHash.make(password: Array("same".utf8), parameters: Self.fast)
        #expect(a.salt != b.salt)
        #expect(a.hash != b.hash)
    }

    @Test("a tampered hash, salt or parameter no longer verifies")
    func tampered() throws {
        let hash = try PasswordHash.make(password: Array("secret".utf8), parameters: Self.fast)
        var flippedHash = hash
        flippedHash.hash[0] ^= 1
        #expect(try !PasswordHash(encoded: flippedHash.encoded).verify(Array("secret".utf8)))
        var flippedSalt = hash
        flippedSalt.salt[3] ^= 0x80
        #expect(try !PasswordHash(encoded: flippedSalt.encoded).verify(Array("secret".utf8)))
        let otherCost = hash.encoded.replacingOccurrences(of: "ln=10", with: "ln=11")
        #expect(try !PasswordHash(encoded: otherCost).verify(Array("secret".utf8)))
    }

    @Test(
        "malformed or out-of-bounds strings are refused before any work",
        arguments: [
            "",
            "plain",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
            "$scrypt$ln=14,r=8$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
            "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
            "$scrypt$ln=14,r=99,p=1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
            "$scrypt$ln=14,r=8,p=1$c2hvcnQ=$aGFzaGhhc2hoYXNoaGFzaA==",
            "$scrypt$ln=14,r=8,p=1$not base64!$aGFzaGhhc2hoYXNoaGFzaA==",
            "$scrypt$ln=14,r=8,p=1,p=2$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        ]
    )
    func malformed(_ encoded: String) {
        #expect(throws: PasswordHash.FormatError.self) { try PasswordHash(encoded: encoded) }
    }

    @Test("an empty password cannot be hashed")
    func emptyPassword() {
        #expect(throws: PasswordHash.EmptyPassword.self) { try PasswordHash.make(password: [], parameters: Self.fast) }
    }

    @Test("constant-time comparison")
    func comparison() {
        #expect(PasswordHash.constantTimeEquals([1, 2, 3], [1, 2, 3]))
        #expect(!PasswordHash.constantTimeEquals([1, 2, 3], [1, 2, 4]))
        #expect(!PasswordHash.constantTimeEquals([1, 2, 3], [1, 2]))
    }

    @Test("PasswordHasher: at most `threads` at once, and a full line is refused")
    func hasherBounds() async throws {
        var configuration = PasswordHasher.Configuration()
        configuration.threads = 2
        configuration.maxPending = 4
        configuration.parameters = Self.fast
        let hasher = PasswordHasher(configuration: configuration)
        let encoded = try await hasher.hash(Array("pw".utf8))
        #expect(try await hasher.verify(Array("pw".utf8), against: encoded))
        #expect(try await !hasher.verify(Array("px".utf8), against: encoded))
        // 40 at once against a slow (default-cost) hash: 2 run, 4 wait, the rest are turned away.
        let slow = try PasswordHash.make(password: Array("pw".utf8)).encoded
        let outcomes = await withTaskGroup(of: Bool?.self) { group in
            for _ in 0..<40 {
                group.addTask {
                    do {
                        return try await hasher.verify(Array("pw".utf8), against: slow)
                    } catch is AsyncLimiter.Full {
                        return nil
                    } catch {
                        return false
                    }
                }
            }
            var all: [Bool?] = []
            for await outcome in group { all.append(outcome) }
            return all
        }
        #expect(!outcomes.contains(false))
        #expect(outcomes.contains(nil))
        #expect(outcomes.contains(true))
        #expect(hasher.peakConcurrency <= 2)
        await hasher.shutdown()
    }

    @Test("cost of one verification with the default parameters (printed)")
    func defaultCost() async throws {
        let hasher = PasswordHasher()
        let encoded = try await hasher.hash(Array("measure".utf8))
        let clock = ContinuousClock()
        let rounds = 5
        let started = clock.now
        for _ in 0..<rounds {
            #expect(try await hasher.verify(Array("measure".utf8), against: encoded))
        }
        let each = started.duration(to: clock.now) / rounds
        print("scrypt ln=14 r=8 p=1: \(each) per verification (this build)")
        await hasher.shutdown()
    }
}

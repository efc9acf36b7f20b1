@testable import GatewayCore
import Logging
import NIOCore
import Synchronization
import Testing

@Suite("Login throttle")
struct LoginThrottleTests {
    static func throttle(maxFailures: Int = 3, window: Double = 60, block: Double = 300, maxAddresses: Int = 100) -> LoginThrottle {
        var configuration = LoginThrottle.Configuration()
        configuration.maxFailures = maxFailures
        configuration.window = window
        configuration.block = block
        configuration.maxAddresses = maxAddresses
        return LoginThrottle(configuration: configuration, logger: silentLogger)
    }

    @Test("max_failures failures within the window block the address for `block` seconds; others are not affected")
    func blocksAndExpires() {
        let throttle = Self.throttle()
        let t0 = ContinuousClock.now
        #expect(!throttle.recordFailure("a", now: t0))
        #expect(!throttle.recordFailure("a", now: t0 + .seconds(1)))
        #expect(!throttle.isBlocked("a", now: t0 + .seconds(1)))
        #expect(throttle.recordFailure("a", now: t0 + .seconds(2)))
        #expect(throttle.isBlocked("a", now: t0 + .seconds(3)))
        #expect(!throttle.isBlocked("b", now: t0 + .seconds(3)))
        #expect(throttle.blockedCount(now: t0 + .seconds(3)) == 1)
        #expect(throttle.isBlocked("a", now: t0 + .seconds(301)))
        #expect(!throttle.isBlocked("a", now: t0 + .seconds(303)))
        // A fresh start after the block: one failure does not block again.
        #expect(!throttle.recordFailure("a", now: t0 + .seconds(304)))
        #expect(!throttle.isBlocked("a", now: t0 + .seconds(304)))
    }

    @Test("Failures further apart than the window do not add up")
    func windowResets() {
        let throttle = Self.throttle(window: 10)
        let t0 = ContinuousClock.now
        #expect(!throttle.recordFailure("a", now: t0))
        #expect(!throttle.recordFailure("a", now: t0 + .seconds(5)))
        #expect(!throttle.recordFailure("a", now: t0 + .seconds(11)))
        #expect(!throttle.isBlocked("a", now: t0 + .seconds(11)))
    }

    @Test("max_failures 0 turns it off, also for addresses already counted")
    func off() {
        let throttle = Self.throttle(maxFailures: 2)
        let t0 = ContinuousClock.now
        #expect(!throttle.recordFailure("a", now: t0))
        var off = LoginThrottle.Configuration()
        off.maxFailures = 0
        throttle.reconfigure(off)
        for i in 0..<10 { #expect(!throttle.recordFailure("a", now: t0 + .seconds(i))) }
        #expect(!throttle.isBlocked("a", now: t0 + .seconds(10)))
    }

    @Test("The table stays within max_addresses: expired entries go first, then the least recently failing")
    func bounded() {
        let throttle = Self.throttle(maxFailures: 2, window: 10, maxAddresses: 3)
        let t0 = ContinuousClock.now
        // "a" is blocked, "b" and "c" have one failure each.
        throttle.recordFailure("a", now: t0)
        #expect(throttle.recordFailure("a", now: t0))
        throttle.recordFailure("b", now: t0 + .seconds(1))
        throttle.recordFailure("c", now: t0 + .seconds(2))
        // Full: "d" evicts the least recently failing entry whose window is still open ("b"); the block stays.
        throttle.recordFailure("d", now: t0 + .seconds(3))
        #expect(throttle.isBlocked("a", now: t0 + .seconds(3)))
        #expect(!throttle.recordFailure("b", now: t0 + .seconds(4)), "b starts counting again")
        // Later every window is over: "e" makes room by dropping the expired ones, "a" is still blocked.
        throttle.recordFailure("e", now: t0 + .seconds(30))
        #expect(throttle.isBlocked("a", now: t0 + .seconds(30)))
    }

    @Test("The host key drops the port of NIO's address descriptions")
    func hostKey() {
        #expect(LoginThrottle.hostKey("[IPv4]10.0.0.7/10.0.0.7:50123") == "[IPv4]10.0.0.7/10.0.0.7")
        #expect(LoginThrottle.hostKey("[IPv6]::1/::1:40000") == "[IPv6]::1/::1")
        #expect(LoginThrottle.hostKey("unix-socket") == "unix-socket")
    }

    /// Answers with a fixed verdict and counts the calls.
    final class Fixed: Authenticator {
        let verdict: AuthenticationResult
        let calls = Atomic<Int>(0)
        init(_ verdict: AuthenticationResult) { self.verdict = verdict }
        func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationResult {
            calls.add(1, ordering: .relaxed)
            return verdict
        }
    }

    @Test("ThrottledAuthenticator: bad credentials count per host (any port); a blocked host never reaches the inner authenticator")
    func authenticator() async {
        let wrong = Fixed(.badCredentials)
        let throttled = ThrottledAuthenticator(inner: wrong, throttle: Self.throttle(maxFailures: 3))
        func attempt(_ address: String) async -> AuthenticationResult {
            await throttled.authenticate(ConnectCredentials(clientID: "c", username: "u", password: ByteBuffer(string: "x"), remoteAddress: address))
        }
        for port in 1...3 { #expect(await attempt("[IPv4]10.0.0.7/10.0.0.7:\(port)") == .badCredentials) }
        #expect(await attempt("[IPv4]10.0.0.7/10.0.0.7:4") == .throttled)
        #expect(wrong.calls.load(ordering: .relaxed) == 3)
        #expect(await attempt("[IPv4]10.0.0.8/10.0.0.8:1") == .badCredentials)

        // Accepted and other verdicts do not count.
        let right = ThrottledAuthenticator(inner: Fixed(.accepted(username: "u")), throttle: Self.throttle(maxFailures: 1))
        for _ in 0..<3 {
            #expect(await right.authenticate(ConnectCredentials(clientID: "c", username: "u", password: nil, remoteAddress: "[IPv4]10.0.0.9/10.0.0.9:1")) == .accepted(username: "u"))
        }
    }
}

@testable import GatewayCore
import Testing

@Suite("Flood-limited logging")
struct LogRateLimiterTests {
    @Test("the first lines of a kind per interval are logged, the rest summarised once the window ends")
    func burstThenSummary() {
        let limiter = LogRateLimiter(burst: 3, interval: .seconds(10))
        let start = ContinuousClock.now
        var logged = 0
        for n in 0..<1_000 {
            let (log, summary) = limiter.admit(.badPacket, address: "[IPv4]127.0.0.\(n % 4 + 1)/127.0.0.\(n % 4 + 1):\(40_000 + n)", now: start)
            #expect(summary == nil)
            if log { logged += 1 }
        }
        #expect(logged == 3)
        // Other kinds have windows of their own.
        #expect(limiter.admit(.refusedConnect, address: nil, now: start).log)
        #expect(limiter.flush(now: start.advanced(by: .seconds(5))).isEmpty)
        let summaries = limiter.flush(now: start.advanced(by: .seconds(10)))
        #expect(summaries == [LogRateLimiter.Summary(kind: .badPacket, suppressed: 997, addresses: 4, addressesAtLeast: false, seconds: 10)])
        // A new window logs in full again.
        #expect(limiter.admit(.badPacket, address: nil, now: start.advanced(by: .seconds(11))).log)
    }

    @Test("an occurrence after the window ended returns the old window's summary")
    func summaryOnNextOccurrence() {
        let limiter = LogRateLimiter(burst: 1, interval: .seconds(10))
        let start = ContinuousClock.now
        _ = limiter.admit(.protocolViolation, address: "[IPv6]::1/::1:5000", now: start)
        _ = limiter.admit(.protocolViolation, address: "[IPv6]::1/::1:5001", now: start)
        let (log, summary) = limiter.admit(.protocolViolation, address: nil, now: start.advanced(by: .seconds(12)))
        #expect(log)
        #expect(summary?.suppressed == 1 && summary?.addresses == 1)
    }

    @Test("the address set is bounded; past it the count is 'at least'")
    func boundedAddresses() {
        let limiter = LogRateLimiter(burst: 0, interval: .seconds(1), maxTrackedAddresses: 2)
        let start = ContinuousClock.now
        for n in 1...5 { _ = limiter.admit(.badPacket, address: "[IPv4]10.0.0.\(n)/10.0.0.\(n):1", now: start) }
        let summary = limiter.flush(now: start.advanced(by: .seconds(1))).first
        #expect(summary?.suppressed == 5 && summary?.addresses == 2 && summary?.addressesAtLeast == true)
    }

    @Test("host of a NIO address description")
    func host() {
        #expect(PeerAddress.host(of: "[IPv4]127.0.0.1/127.0.0.1:5000") == "127.0.0.1")
        #expect(PeerAddress.host(of: "[IPv6]::1/::1:5000") == "::1")
        #expect(PeerAddress.host(of: "10.1.2.3") == "10.1.2.3")
    }
}

@testable import GatewayCore
import MQTTCodec
import Testing

@Suite("Per-address flood limits")
struct AddressLimitsTests {
    @Test("open connections per address are capped and given back")
    func perAddressCap() {
        let limits = AddressLimits()
        #expect(limits.open(host: "10.0.0.1", limit: 2))
        #expect(limits.open(host: "10.0.0.1", limit: 2))
        #expect(!limits.open(host: "10.0.0.1", limit: 2))
        #expect(limits.open(host: "10.0.0.2", limit: 2))
        limits.closed(host: "10.0.0.1")
        #expect(limits.open(host: "10.0.0.1", limit: 2))
        #expect(limits.open(host: "10.0.0.9", limit: 0))
        for host in ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.9"] { limits.closed(host: host) }
        #expect(limits.counts.open == 0)
    }

    @Test("the CONNECT bucket allows the burst, then the rate, and is forgotten once refilled")
    func tokenBucket() {
        let limits = AddressLimits()
        let start = ContinuousClock.now
        for _ in 0..<3 { #expect(limits.takeConnectToken(host: "a", rate: 1, burst: 3, now: start)) }
        #expect(!limits.takeConnectToken(host: "a", rate: 1, burst: 3, now: start))
        #expect(limits.takeConnectToken(host: "b", rate: 1, burst: 3, now: start))
        #expect(limits.takeConnectToken(host: "a", rate: 1, burst: 3, now: start.advanced(by: .seconds(1))))
        #expect(!limits.takeConnectToken(host: "a", rate: 1, burst: 3, now: start.advanced(by: .seconds(1))))
        #expect(limits.takeConnectToken(host: "a", rate: 0, burst: 1, now: start), "rate 0: no limit")
        limits.prune(now: start.advanced(by: .seconds(2)), rate: 1, burst: 3)
        #expect(limits.counts.buckets == 1, "b has refilled, a has not")
        limits.prune(now: start.advanced(by: .seconds(10)), rate: 1, burst: 3)
        #expect(limits.counts.buckets == 0)
    }

    @Test("a CONNECT over the per-address limit is refused with 3 (3.1.1) / 0x97 (5.0), over the rate with 0x9F")
    func connectRefusals() async {
        let broker = makeBroker {
            $0.connectRatePerAddress = 0.001
            $0.connectBurstPerAddress = 1
        }
        let over = TestClient(broker)
        over.connection.overAddressLimit = true
        guard case .connack(let refused)? = sentPackets(await over.connect("a")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(refused.reasonCode == MQTTReasonCode(3))
        let v5 = TestClient(broker, version: .v5)
        v5.connection.overAddressLimit = true
        guard case .connack(let quota)? = sentPackets(await v5.connect("b")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(quota.reasonCode == .quotaExceeded)
        // The rate: TestClient connections all come from 127.0.0.1:5000; the burst is 1.
        await TestClient(broker, version: .v5).connectAccepted("first")
        let second = TestClient(broker, version: .v5)
        guard case .connack(let rate)? = sentPackets(await second.connect("second")).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(rate.reasonCode == .connectionRateExceeded)
    }
}

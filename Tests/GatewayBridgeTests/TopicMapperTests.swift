@testable import GatewayBridge
import MQTTCodec
import Testing

@Suite("Bridge topic mapping")
struct TopicMapperTests {
    @Test("out rules replace the local prefix by the remote prefix")
    func outMapping() {
        let mapper = TopicMapper(rules: [
            BridgeRule(topic: "devices/#", direction: .out, qos: .atLeastOnce, remotePrefix: "site1/"),
            BridgeRule(topic: "+/status", direction: .both, qos: .atMostOnce, localPrefix: "local/", remotePrefix: "fleet/"),
        ])
        #expect(mapper.remoteTopic(forLocal: "devices/x/temp") == "site1/devices/x/temp")
        #expect(mapper.remoteTopic(forLocal: "devices") == "site1/devices")
        #expect(mapper.remoteTopic(forLocal: "local/gw1/status") == "fleet/gw1/status")
        #expect(mapper.remoteTopic(forLocal: "local/gw1/other") == nil)
        #expect(mapper.remoteTopic(forLocal: "commands/x") == nil)
    }

    @Test("in rules replace the remote prefix by the local prefix; out-only rules do not map inbound")
    func inMapping() {
        let mapper = TopicMapper(rules: [
            BridgeRule(topic: "devices/#", direction: .out, qos: .atLeastOnce),
            BridgeRule(topic: "commands/#", direction: .in, qos: .atLeastOnce, localPrefix: "down/", remotePrefix: "gw1/"),
            BridgeRule(topic: "+/status", direction: .both, qos: .atMostOnce, localPrefix: "local/", remotePrefix: "fleet/"),
        ])
        #expect(mapper.localTopic(forRemote: "gw1/commands/x") == "down/commands/x")
        #expect(mapper.localTopic(forRemote: "commands/x") == nil)
        #expect(mapper.localTopic(forRemote: "fleet/gw2/status") == "local/gw2/status")
        #expect(mapper.localTopic(forRemote: "devices/x") == nil)
    }

    @Test("subscriptions: one per distinct filter at the highest QoS, by direction")
    func subscriptions() {
        let mapper = TopicMapper(rules: [
            BridgeRule(topic: "devices/#", direction: .out, qos: .atMostOnce),
            BridgeRule(topic: "devices/#", direction: .both, qos: .exactlyOnce),
            BridgeRule(topic: "commands/#", direction: .in, qos: .atLeastOnce, remotePrefix: "gw1/"),
        ])
        #expect(mapper.localSubscriptions.map(\.filter) == ["devices/#"])
        #expect(mapper.localSubscriptions.map(\.qos) == [.exactlyOnce])
        #expect(mapper.remoteSubscriptions.map(\.filter) == ["devices/#", "gw1/commands/#"])
        #expect(mapper.remoteSubscriptions.map(\.qos) == [.exactlyOnce, .atLeastOnce])
    }

    @Test("wildcards follow MQTT matching, $ topics excepted")
    func matching() {
        #expect(TopicMapper.matches(filter: "a/+/c", topic: "a/b/c"))
        #expect(!TopicMapper.matches(filter: "a/+/c", topic: "a/b/d"))
        #expect(TopicMapper.matches(filter: "a/#", topic: "a"))
        #expect(!TopicMapper.matches(filter: "#", topic: "$SYS/x"))
        #expect(TopicMapper.matches(filter: "$SYS/#", topic: "$SYS/x"))
    }
}

@Suite("Bridge backoff and echo filter")
struct BridgeSupportTests {
    @Test("the reconnect delay doubles up to the cap, with jitter in its upper half")
    func backoff() {
        let configuration = BridgeConfiguration(name: "up", host: "h", rules: [], reconnectInitialDelay: 0.5, reconnectMaxDelay: 4)
        #expect(configuration.reconnectDelay(afterFailures: 1, random: 1) == 0.5)
        #expect(configuration.reconnectDelay(afterFailures: 1, random: 0) == 0.25)
        #expect(configuration.reconnectDelay(afterFailures: 2, random: 1) == 1)
        #expect(configuration.reconnectDelay(afterFailures: 4, random: 1) == 4)
        #expect(configuration.reconnectDelay(afterFailures: 60, random: 1) == 4)
        #expect(configuration.reconnectDelay(afterFailures: 60, random: 0) == 2)
        #expect(configuration.internalClientID == "$bridge/up")
        #expect(configuration.clientID == "iotgw-up")
    }

    @Test("the 3.1.1 echo filter drops one echo per publish, and forgets after its window")
    func echo() {
        var filter = EchoFilter(capacity: 2, window: .seconds(10))
        let now = ContinuousClock.now
        let payload: [UInt8] = [1, 2, 3]
        payload.withUnsafeBytes { bytes in
            filter.record(topic: "t", payload: bytes, now: now)
            let first = filter.isEcho(topic: "t", payload: bytes, now: now)
            let second = filter.isEcho(topic: "t", payload: bytes, now: now)
            let otherTopic = filter.isEcho(topic: "other", payload: bytes, now: now)
            #expect(first && !second && !otherTopic)
            filter.record(topic: "t", payload: bytes, now: now)
            let late = filter.isEcho(topic: "t", payload: bytes, now: now.advanced(by: .seconds(11)))
            #expect(!late)
            for topic in ["a", "b", "c"] { filter.record(topic: topic, payload: bytes, now: now) }
            #expect(filter.count == 2)
            let evicted = filter.isEcho(topic: "a", payload: bytes, now: now)
            let kept = filter.isEcho(topic: "c", payload: bytes, now: now)
            #expect(!evicted && kept)
        }
    }
}

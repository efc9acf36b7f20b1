import GatewayCore
import MQTTCodec
import Testing

/// The operations surface of the broker: live reconfiguration (SIGHUP) and the read-only client listing.
@Suite("Broker operations")
struct BrokerOperationsTests {
    @Test("only the live fields change on reconfigure")
    func liveFieldsOnly() {
        var current = BrokerConfiguration()
        current.maxPacketSize = 1000
        var new = BrokerConfiguration()
        new.maxConnections = 7
        new.allowAnonymous = false
        new.maxInflight = 3
        new.sysInterval = 0
        new.maxPacketSize = 5000  // fixed at bind time: not live
        new.maxQoS = 1  // advertised in CONNACK: not live
        let applied = current.applyingLiveChanges(from: new)
        #expect(applied.maxConnections == 7)
        #expect(applied.allowAnonymous == false)
        #expect(applied.maxInflight == 3)
        #expect(applied.sysInterval == 0)
        #expect(applied.maxPacketSize == 1000)
        #expect(applied.maxQoS == 2)
    }

    @Test("anonymous access follows a reconfigure at the next CONNECT; connected clients stay")
    func anonymousIsLive() async {
        let broker = makeBroker()
        let kept = TestClient(broker)
        await kept.connectAccepted("kept")
        var new = broker.configuration
        new.allowAnonymous = false
        broker.reconfigure(new)
        #expect(broker.configuration.allowAnonymous == false)
        let refused = TestClient(broker)
        let actions = await refused.connect("anonymous")
        guard case .connack(let connack)? = sentPackets(actions).first else {
            Issue.record("no CONNACK: \(describe(actions))")
            return
        }
        #expect(connack.reasonCode == MQTTReasonCode(5))  // 3.1.1 return code 5: not authorized
        #expect(broker.session(clientID: "kept")?.isConnected == true)
    }

    @Test("max_connections is checked against the live value")
    func maxConnectionsIsLive() {
        let broker = makeBroker()
        #expect(broker.admitConnection(transport: .tcp))
        var new = broker.configuration
        new.maxConnections = 1
        broker.reconfigure(new)
        #expect(!broker.admitConnection(transport: .tcp))
        #expect(broker.connectionsByTransport == [.tcp: 1])
        broker.releaseConnection(transport: .tcp)
        #expect(broker.connectionsByTransport.isEmpty)
    }

    @Test("clients are listed by prefix, in id order, a page at a time")
    func listing() async {
        let broker = makeBroker()
        var clients: [TestClient] = []
        for id in ["b-2", "a-1", "b-1", "b-3", "c"] {
            let client = TestClient(broker)
            await client.connectAccepted(id)
            clients.append(client)
        }
        let all = broker.clients(prefix: "", after: nil, limit: 10)
        #expect(all.total == 5)
        #expect(all.page.map(\.clientID) == ["a-1", "b-1", "b-2", "b-3", "c"])
        #expect(all.page.allSatisfy { $0.connected && !$0.persistent && $0.queuedMessages == 0 })
        let first = broker.clients(prefix: "b-", after: nil, limit: 2)
        #expect(first.total == 3 && first.page.map(\.clientID) == ["b-1", "b-2"])
        let second = broker.clients(prefix: "b-", after: "b-2", limit: 2)
        #expect(second.page.map(\.clientID) == ["b-3"])
        #expect(broker.clients(prefix: "z", after: nil, limit: 2).total == 0)
        #expect(broker.disconnect(clientID: "c"))
        #expect(clients[4].handle.closeReasons == [.administrativeAction])
        #expect(!broker.disconnect(clientID: "nobody"))
    }
}

@testable import GatewayCore
import MQTTCodec
import NIOCore
import Testing

@Suite("CONNECT handling")
struct ConnectTests {
    @Test("an accepted CONNECT answers CONNACK, then sets the keep-alive, then starts delivery")
    func accepted() async throws {
        let broker = makeBroker()
        let client = TestClient(broker)
        let actions = await client.connect("dev-1", keepAlive: 60)
        #expect(describe(actions) == ["send CONNACK", "keepAlive 60"])
        #expect(sentPackets(actions) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .success))])
        #expect(client.connection.isConnected)
        #expect(client.connection.clientID == "dev-1")
        #expect(broker.sessionCount == 1)
        #expect(client.handle.closeReasons == [])
    }

    @Test("an accepted MQTT 5 CONNECT advertises the server's limits")
    func acceptedV5() async throws {
        let broker = makeBroker { $0.maxQoS = 1 }
        let client = TestClient(broker, version: .v5)
        let actions = await client.connect("dev-5", keepAlive: 30)
        #expect(describe(actions) == ["send CONNACK", "keepAlive 30"])
        guard case .connack(let connack)? = sentPackets(actions).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(connack.reasonCode == .success)
        #expect(connack.properties.maximumQoS == 1)
        #expect(connack.properties.maximumPacketSize == UInt32(broker.configuration.maxPacketSize))
        #expect(connack.properties.assignedClientIdentifier == nil)
    }

    @Test("an empty client id with clean session 0 is refused with return code 2 (MQTT-3.1.3-8)")
    func emptyIDWithoutCleanSession() async {
        let broker = makeBroker()
        let client = TestClient(broker)
        let actions = await client.connect("", cleanStart: false)
        #expect(describe(actions) == ["send CONNACK", "close"])
        #expect(sentPackets(actions) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(2)))])
        #expect(!client.connection.isConnected)
        #expect(broker.sessionCount == 0)
    }

    @Test("an empty client id with clean session 1 gets a generated id (MQTT-3.1.3-6)")
    func emptyIDWithCleanSession() async throws {
        let broker = makeBroker()
        let client = TestClient(broker)
        let actions = await client.connect("", cleanStart: true)
        #expect(describe(actions) == ["send CONNACK", "keepAlive 60"])
        let assigned = try #require(client.connection.clientID)
        #expect(!assigned.isEmpty)
        #expect(broker.session(clientID: assigned) != nil)
    }

    @Test("MQTT 5: an empty client id is assigned and reported in CONNACK")
    func assignedClientIdentifier() async {
        let broker = makeBroker()
        let client = TestClient(broker, version: .v5)
        let actions = await client.connect("", cleanStart: true)
        guard case .connack(let connack)? = sentPackets(actions).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(connack.reasonCode == .success)
        #expect(connack.properties.assignedClientIdentifier != nil)
        #expect(connack.properties.assignedClientIdentifier == client.connection.clientID)
    }

    @Test(
        "without anonymous access: return code 5 without a username, 4 with one",
        arguments: [(nil, 5), ("alice", 4)] as [(String?, UInt8)]
    )
    func anonymousRefused(_ username: String?, _ code: UInt8) async {
        let broker = makeBroker { $0.allowAnonymous = false }
        let client = TestClient(broker)
        let actions = await client.connect("dev", username: username, password: username.map { _ in ByteBuffer(string: "pw") })
        #expect(describe(actions) == ["send CONNACK", "close"])
        #expect(sentPackets(actions) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(code)))])
        #expect(broker.sessionCount == 0)
    }

    @Test("MQTT 5 without anonymous access: 0x87 without a username, 0x86 with one")
    func anonymousRefusedV5() async {
        let broker = makeBroker { $0.allowAnonymous = false }
        let anonymous = TestClient(broker, version: .v5)
        #expect(sentPackets(await anonymous.connect("a")) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .notAuthorized))])
        let named = TestClient(broker, version: .v5)
        #expect(
            sentPackets(await named.connect("b", username: "bob"))
                == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: .badUserNameOrPassword))]
        )
    }

    @Test("a client id longer than the maximum is refused with return code 2")
    func longClientID() async {
        let broker = makeBroker { $0.maxClientIDLength = 8 }
        let client = TestClient(broker)
        let actions = await client.connect("123456789")
        #expect(sentPackets(actions) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(2)))])
        #expect(describe(actions).last == "close")
        #expect(sentPackets(await TestClient(broker).connect("12345678")).first.map { $0.type } == .connack)
        #expect(broker.sessionCount == 1)
    }

    @Test("a first packet other than CONNECT closes the connection")
    func firstPacketNotConnect() async {
        let broker = makeBroker()
        let client = TestClient(broker)
        #expect(describe(await client.send(.pingreq)) == ["close"])
        #expect(!client.connection.isConnected)
    }

    @Test("a second CONNECT closes the connection (MQTT-3.1.0-2)")
    func secondConnect() async {
        let broker = makeBroker()
        let client = TestClient(broker)
        await client.connectAccepted("dev")
        #expect(describe(await client.connect("dev")) == ["close"])
        let v5 = TestClient(broker, version: .v5)
        await v5.connectAccepted("dev5")
        let actions = await v5.connect("dev5")
        #expect(sentPackets(actions) == [.disconnect(MQTTReasonPacket(reasonCode: .protocolError))])
        #expect(describe(actions).last == "close")
    }

    @Test("PINGREQ is answered with PINGRESP")
    func ping() async {
        let client = TestClient(makeBroker())
        await client.connectAccepted("dev")
        #expect(sentPackets(await client.send(.pingreq)) == [.pingresp])
    }

    @Test("an unsupported protocol level is answered with return code 1 and closed")
    func unsupportedVersion() {
        let client = TestClient(makeBroker())
        let actions = client.connection.handleDecodeError(MQTTCodecError(.unsupportedProtocolVersion, "level 3"))
        #expect(describe(actions) == ["send CONNACK", "close"])
        #expect(sentPackets(actions) == [.connack(MQTTConnAckPacket(sessionPresent: false, reasonCode: MQTTReasonCode(1)))])
    }
}

@Suite("BrokerConfiguration")
struct BrokerConfigurationTests {
    @Test("defaults are the documented values")
    func defaults() {
        let c = BrokerConfiguration()
        #expect(c.maxConnections == 100_000)
        #expect(c.maxPacketSize == 1_048_576)
        #expect(c.connectTimeout == 10)
        #expect(c.maxInflight == 32)
        #expect(c.maxQueuedMessages == 1_000)
        #expect(c.maxQueuedBytes == 1_048_576)
        #expect(c.globalMaxQueuedBytes == 268_435_456)
        #expect(c.sessionExpiry == 86_400)
        #expect(c.maxQoS == 2)
        #expect(c.retainAvailable == true)
        #expect(c.allowAnonymous == true)
        #expect(c.maxClientIDLength == 256)
        #expect(c.maxKeepAlive == 0)
        #expect(c.shutdownTimeout == 10)
    }

    @Test("the broker keeps the configuration it was given")
    func kept() {
        let broker = makeBroker { $0.maxInflight = 3 }
        #expect(broker.configuration.maxInflight == 3)
        #expect(broker.configuration.maxQoS == 2)
    }
}

import CMosquitto
@testable import GatewayBridge
import MQTTCodec
import NIOCore
import Testing

@Suite("Bridge MQTT 5 properties")
struct BridgePropertiesTests {
    @Test("Every carried property survives a libmosquitto property list, user properties in order with repeats")
    func roundTrip() throws {
        var values = MQTTProperties.Values()
        values.payloadFormatIndicator = 1
        values.messageExpiryInterval = 120
        values.contentType = "application/json"
        values.responseTopic = "replies/é"
        values.correlationData = ByteBuffer(bytes: [0, 1, 2, 255])
        values.userProperties = [.init(name: "a", value: "1"), .init(name: "b", value: ""), .init(name: "a", value: "3")]
        var (list, failed) = BridgeProperties.mosquittoList(MQTTProperties(values))
        defer { mosquitto_property_free_all(&list) }
        #expect(!failed)
        // libmosquitto itself accepts the list for a PUBLISH.
        #expect(mosquitto_property_check_all(Int32(CMD_PUBLISH), list) == MOSQ_ERR_SUCCESS.rawValue)
        #expect(BridgeProperties.properties(from: list) == MQTTProperties(values))
    }

    @Test("Connection-bound properties are not carried; nothing to carry is no list at all")
    func notCarried() {
        var values = MQTTProperties.Values()
        values.topicAlias = 3
        values.subscriptionIdentifiers = [7]
        var (list, failed) = BridgeProperties.mosquittoList(MQTTProperties(values))
        defer { mosquitto_property_free_all(&list) }
        #expect(list == nil && !failed)
        #expect(BridgeProperties.mosquittoList(MQTTProperties()).list == nil)
        #expect(BridgeProperties.properties(from: nil).isEmpty)
    }
}

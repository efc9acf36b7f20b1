import CMosquitto
import MQTTCodec
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The MQTT 5 properties a bridge carries across with each message, in libmosquitto's property lists.
///
/// Both directions carry what a broker forwards to subscribers (MQTT 5.0 §3.3.2.3): Payload Format
/// Indicator, Message Expiry Interval (what is left of it), Content Type, Response Topic, Correlation
/// Data and User Properties (in order, repeats kept). Topic Alias and Subscription Identifiers belong to
/// one connection and are never carried. A 3.1.1 bridge has no properties to carry.
enum BridgeProperties {
    /// `properties` as a new libmosquitto property list for `mosquitto_publish_v5`, or nil when there is
    /// nothing to carry. The caller frees a non-nil list with `mosquitto_property_free_all`. Returns
    /// nil and `failed` true if libmosquitto refused a value (out of memory).
    static func mosquittoList(_ properties: MQTTProperties) -> (list: OpaquePointer?, failed: Bool) {
        guard !properties.isEmpty else { return (nil, false) }
        let values = properties.values
        var list: OpaquePointer?
        var rc = MOSQ_ERR_SUCCESS.rawValue
        func add(_ result: Int32) {
            if rc == MOSQ_ERR_SUCCESS.rawValue { rc = result }
        }
        if let indicator = values.payloadFormatIndicator {
            add(mosquitto_property_add_byte(&list, Int32(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR.rawValue), indicator))
        }
        if let expiry = values.messageExpiryInterval {
            add(mosquitto_property_add_int32(&list, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), expiry))
        }
        if let contentType = values.contentType {
            add(mosquitto_property_add_string(&list, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), contentType))
        }
        if let responseTopic = values.responseTopic {
            add(mosquitto_property_add_string(&list, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), responseTopic))
        }
        if let correlation = values.correlationData {
            correlation.withUnsafeReadableBytes { bytes in
                add(mosquitto_property_add_binary(
                    &list, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), bytes.baseAddress, UInt16(clamping: bytes.count)))
            }
        }
        for property in values.userProperties {
            add(mosquitto_property_add_string_pair(&list, Int32(MQTT_PROP_USER_PROPERTY.rawValue), property.name, property.value))
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            mosquitto_property_free_all(&list)
            return (nil, true)
        }
        return (list, false)
    }

    /// The carried properties of a message libmosquitto received (nil list: none, as on 3.1.1).
    static func properties(from list: OpaquePointer?) -> MQTTProperties {
        guard let list else { return MQTTProperties() }
        var values = MQTTProperties.Values()
        var byte: UInt8 = 0
        if mosquitto_property_read_byte(list, Int32(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR.rawValue), &byte, false) != nil {
            values.payloadFormatIndicator = byte
        }
        var int32: UInt32 = 0
        if mosquitto_property_read_int32(list, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), &int32, false) != nil {
            values.messageExpiryInterval = int32
        }
        values.contentType = readString(list, MQTT_PROP_CONTENT_TYPE)
        values.responseTopic = readString(list, MQTT_PROP_RESPONSE_TOPIC)
        var data: UnsafeMutableRawPointer?
        var length: UInt16 = 0
        if mosquitto_property_read_binary(list, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), &data, &length, false) != nil {
            var buffer = ByteBufferAllocator().buffer(capacity: Int(length))
            if let data { buffer.writeBytes(UnsafeRawBufferPointer(start: data, count: Int(length))) }
            values.correlationData = buffer
            free(data)
        }
        var name: UnsafeMutablePointer<CChar>?
        var value: UnsafeMutablePointer<CChar>?
        var cursor = mosquitto_property_read_string_pair(list, Int32(MQTT_PROP_USER_PROPERTY.rawValue), &name, &value, false)
        while cursor != nil {
            if let name, let value {
                values.userProperties.append(MQTTUserProperty(name: String(cString: name), value: String(cString: value)))
            }
            free(name)
            free(value)
            name = nil
            value = nil
            cursor = mosquitto_property_read_string_pair(cursor, Int32(MQTT_PROP_USER_PROPERTY.rawValue), &name, &value, true)
        }
        return MQTTProperties(values)
    }

    private static func readString(_ list: OpaquePointer, _ identifier: mqtt5_property) -> String? {
        var text: UnsafeMutablePointer<CChar>?
        guard mosquitto_property_read_string(list, Int32(identifier.rawValue), &text, false) != nil, let text else { return nil }
        defer { free(text) }
        return String(cString: text)
    }
}

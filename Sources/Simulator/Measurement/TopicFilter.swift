import CMosquitto

/// MQTT topic-filter checks, answered by libmosquitto rather than by our own code so the simulator's idea of
/// "who should receive what" is independent of the gateway's subscription index.
enum TopicFilter {
    /// Whether `filter` is a valid subscription filter.
    static func isValid(_ filter: String) -> Bool {
        mosquitto_sub_topic_check(filter) == Int32(MOSQ_ERR_SUCCESS.rawValue)
    }

    /// Whether a message on `topic` matches `filter`.
    static func matches(_ filter: String, topic: String) -> Bool {
        var result = false
        guard mosquitto_topic_matches_sub(filter, topic, &result) == Int32(MOSQ_ERR_SUCCESS.rawValue) else { return false }
        return result
    }
}

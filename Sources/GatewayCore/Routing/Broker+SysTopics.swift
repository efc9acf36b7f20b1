import MQTTCodec
import NIOCore

extension Broker {
    /// Publishes the gateway's statistics as retained messages under `$SYS/broker/` (the topics
    /// mosquitto uses, so existing dashboards work): clients/connected, messages/received,
    /// messages/sent, bytes/received, bytes/sent, uptime (seconds) and version.
    ///
    /// - Parameters:
    ///   - uptime: seconds since the gateway started.
    ///   - version: the gateway version string.
    public func publishSysTopics(uptime: Int, version: String) {
        let totals = metrics.snapshot
        let values: [(String, String)] = [
            ("clients/connected", String(connectedClientCount)),
            ("messages/received", String(totals.messagesReceived)),
            ("messages/sent", String(totals.messagesSent)),
            ("bytes/received", String(totals.bytesReceived)),
            ("bytes/sent", String(totals.bytesSent)),
            ("uptime", String(uptime)),
            ("version", "iotgw \(version)"),
        ]
        for (suffix, value) in values {
            publish(
                Message(
                    topic: "$SYS/broker/" + suffix,
                    payload: ByteBuffer(string: value),
                    qos: .atMostOnce,
                    retain: true
                )
            )
        }
    }
}

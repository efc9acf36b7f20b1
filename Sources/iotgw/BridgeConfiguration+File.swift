import GatewayBridge
import GatewayConfig
import GatewayCore
import MQTTCodec

extension GatewayConfigFile {
    /// The enabled bridges of `bridges`, as the bridge module takes them. Values were validated by
    /// ``ConfigLoader``; the TLS files are checked by ``checkBridgeTLSFiles(path:)``.
    var bridgeConfigurations: [BridgeConfiguration] {
        bridges.filter(\.enabled).map { bridge in
            BridgeConfiguration(
                name: bridge.name,
                host: bridge.host,
                port: bridge.port,
                clientID: bridge.effectiveClientID,
                protocolVersion: bridge.protocolVersion == "mqttv311" ? .v3_1_1 : .v5,
                keepAlive: bridge.keepAlive,
                cleanSession: bridge.cleanSession,
                sessionExpiry: UInt32(clamping: bridge.sessionExpiry),
                username: bridge.username.isEmpty ? nil : bridge.username,
                password: bridge.password.isEmpty ? nil : bridge.password,
                tls: bridge.tls.enabled
                    ? BridgeConfiguration.TLS(
                        caFile: bridge.tls.caFile.isEmpty ? nil : bridge.tls.caFile,
                        certificateFile: bridge.tls.certFile.isEmpty ? nil : bridge.tls.certFile,
                        keyFile: bridge.tls.keyFile.isEmpty ? nil : bridge.tls.keyFile,
                        insecure: bridge.tls.insecure
                    ) : nil,
                rules: bridge.rules.map { rule in
                    BridgeRule(
                        topic: rule.topic,
                        direction: BridgeRule.Direction(rawValue: rule.direction) ?? .out,
                        qos: MQTTQoS(rawValue: UInt8(clamping: rule.qos)) ?? .atLeastOnce,
                        localPrefix: rule.localPrefix,
                        remotePrefix: rule.remotePrefix
                    )
                },
                queue: InternalClient.Limits(
                    maxQueuedMessages: bridge.queue.maxMessages,
                    maxQueuedBytes: bridge.queue.maxBytes,
                    maxInflight: bridge.maxInflight
                ),
                reconnectInitialDelay: bridge.reconnect.initialDelay,
                reconnectMaxDelay: bridge.reconnect.maxDelay,
                requiredForReadiness: bridge.requiredForReadiness
            )
        }
    }
}

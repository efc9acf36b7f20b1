import Foundation
import GatewayConfig
import GatewayStorage
import GatewayTransport

extension GatewayConfigFile {
    /// The network side's configuration: listeners, TLS context and WebSocket endpoints.
    ///
    /// Loads the TLS certificate, key and CA files when a TLS listener is enabled (or a certificate is
    /// configured), so `check-config` and start-up fail the same way on a bad file. Reads files: call
    /// it before the event loops serve traffic.
    /// - Parameter path: the configuration file, for error messages.
    /// - Throws: ``ConfigError`` naming the `tls.*` key of the file at fault.
    func serverConfiguration(path: String) throws(ConfigError) -> GatewayServer.Configuration {
        func listener(_ entry: Listener) -> ListenerConfiguration? {
            entry.enabled ? ListenerConfiguration(host: entry.host, port: entry.port) : nil
        }
        var context: TLSContext?
        if listeners.mqtts.enabled || listeners.wss.enabled || !tls.certFile.isEmpty {
            let settings = TLSSettings(
                certificateFile: tls.certFile,
                keyFile: tls.keyFile,
                caFile: tls.caFile.isEmpty ? nil : tls.caFile,
                verifyClient: tls.verifyClient,
                useCommonNameAsUsername: tls.useCNAsUsername,
                maxConcurrentHandshakes: tls.maxConcurrentHandshakes,
                handshakeTimeout: tls.handshakeTimeout
            )
            do {
                context = try TLSContext(settings: settings)
            } catch {
                let key =
                    switch error.field {
                    case .certificateFile: "tls.cert_file"
                    case .keyFile: "tls.key_file"
                    case .caFile: "tls.ca_file"
                    }
                throw ConfigError(file: path, key: key, message: error.description)
            }
        }
        return GatewayServer.Configuration(
            mqtt: listener(listeners.mqtt),
            mqtts: listener(listeners.mqtts),
            ws: listener(listeners.ws),
            wss: listener(listeners.wss),
            tls: context,
            webSocket: WebSocketConfiguration(
                mqttPath: websocket.mqttPath,
                jsonPath: websocket.jsonPath,
                echoPath: websocket.echoPath.isEmpty ? nil : websocket.echoPath,
                maxMessageSize: websocket.maxMessageSize,
                pingInterval: websocket.pingInterval,
                allowedOrigins: websocket.allowedOrigins,
                compression: WebSocketConfiguration.Compression(
                    mqtt: websocket.compression.mqtt,
                    json: websocket.compression.json,
                    echo: websocket.compression.echo,
                    threshold: websocket.compressionThreshold,
                    maxContexts: websocket.compressionMaxContexts
                )
            ),
            // Leave a second of the shutdown budget for closing connections after the drain.
            drainTimeout: max(shutdown.timeout - 1, shutdown.timeout / 2),
            connectTimeout: limits.connectTimeout,
            maxPacketSize: limits.maxPacketSize
        )
    }
}

extension GatewayConfigFile {
    /// The database `storage` describes.
    ///
    /// Reads `storage.postgres.password_file` when the PostgreSQL backend uses one (its first line is
    /// the password), so `check-config` and start-up fail the same way on a missing file.
    /// - Parameter path: the configuration file, for error messages.
    /// - Throws: ``ConfigError`` naming `storage.postgres.password_file` when it cannot be read.
    func databaseConfiguration(path: String) throws(ConfigError) -> DatabaseConfiguration {
        switch storage.backend {
        case "postgres":
            let pg = storage.postgres
            var password: String? = pg.password.isEmpty ? nil : pg.password
            if storage.enabled && !pg.passwordFile.isEmpty {
                guard let data = FileManager.default.contents(atPath: pg.passwordFile),
                    let text = String(data: data, encoding: .utf8)
                else {
                    throw ConfigError(file: path, key: "storage.postgres.password_file", message: "cannot read \(pg.passwordFile)")
                }
                password = text.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
            }
            var configuration = PostgresBackend.Configuration(user: pg.user, password: password, database: pg.database)
            configuration.host = pg.host
            configuration.port = pg.port
            configuration.tls = PostgresBackend.Configuration.TLSMode(rawValue: pg.tls) ?? .disable
            configuration.connectTimeout = pg.connectTimeout
            configuration.poolSize = storage.pool.size
            configuration.acquireTimeout = storage.pool.acquireTimeout
            return .postgres(configuration)
        default:
            var configuration = SQLiteBackend.Configuration(path: storage.dataDir + "/" + storage.sqlite.file)
            configuration.poolSize = storage.pool.size
            configuration.acquireTimeout = storage.pool.acquireTimeout
            configuration.synchronous = storage.sqlite.synchronous
            return .sqlite(configuration)
        }
    }
}

import Foundation
import GatewayConfig
import GatewayCore
import Logging
import NIOPosix
import Synchronization

/// SIGHUP: reads the configuration file again (on NIO's thread pool, never on an event loop) and
/// applies what can change live, without dropping connections.
///
/// Live: `log.level`, `auth.*` except `auth.hash_threads` and `auth.max_pending_hashes` (the
/// authenticator and the ACL are replaced, existing subscriptions the new ACL no longer allows are
/// revoked, and the auth cache is flushed on every reload),
/// `limits.max_connections`, `limits.max_inflight`, `limits.max_queued_messages`,
/// `limits.max_queued_bytes`, `limits.session_expiry`, `limits.max_client_id_length`,
/// `limits.max_keep_alive` and `mqtt.sys_interval` (see `BrokerConfiguration.applyingLiveChanges(from:)`
/// for when each takes effect). Changes to other keys are logged as needing a restart and not applied;
/// so is `auth.backend: database` when the gateway runs without a database (then no `auth` key
/// changes). An invalid file changes nothing: the error is logged and the running configuration stays.
final class ConfigReloader: Sendable {
    /// The keys applied live, as written in the file.
    static let liveKeys: Set<String> = [
        "log.level", "auth.anonymous", "auth.backend", "auth.cache_ttl", "auth.negative_cache_ttl", "auth.cache_size",
        "auth.acl", "limits.max_connections", "limits.max_inflight", "limits.max_queued_messages",
        "limits.max_queued_bytes", "limits.session_expiry", "limits.max_client_id_length", "limits.max_keep_alive",
        "mqtt.sys_interval",
    ]

    private let path: String
    /// `--log-level`, which wins over `log.level` on every reload too.
    private let commandLineLevel: Logger.Level?
    private let broker: Broker
    private let accessControl: AccessControl
    private let logControl: LogControl
    private let notifier: SystemdNotifier
    private let logger: Logger
    /// The configuration in effect: the start-up file with every live change applied since.
    private let running: Mutex<GatewayConfigFile>

    init(
        path: String,
        initial: GatewayConfigFile,
        commandLineLevel: Logger.Level?,
        broker: Broker,
        accessControl: AccessControl,
        logControl: LogControl,
        notifier: SystemdNotifier,
        logger: Logger
    ) {
        self.path = path
        self.running = Mutex(initial)
        self.commandLineLevel = commandLineLevel
        self.broker = broker
        self.accessControl = accessControl
        self.logControl = logControl
        self.notifier = notifier
        self.logger = logger
    }

    /// Reloads the file and applies its live settings. Never throws: failures are logged.
    func reload() async {
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds())\nSTATUS=reloading \(path)")
        logger.info("reloading configuration", metadata: ["iotgw.config": "\(path)"])
        let path = self.path
        let loaded: GatewayConfigFile
        do {
            loaded = try await NIOThreadPool.singleton.runIfActive { try ConfigLoader.load(path: path) }
        } catch {
            logger.error(
                "configuration reload failed; the running configuration stays in effect",
                metadata: ["iotgw.config": "\(path)", "error": "\(error)"]
            )
            notifier.notify("READY=1\nSTATUS=reload failed, running configuration kept: \(error)")
            return
        }
        let (applied, pending) = apply(loaded)
        logger.notice(
            "configuration reloaded",
            metadata: [
                "iotgw.config": "\(path)",
                "iotgw.config.applied": "\(applied.isEmpty ? "nothing changed" : applied.joined(separator: ", "))",
            ]
        )
        if !pending.isEmpty {
            logger.notice(
                "configuration changes that need a restart were not applied",
                metadata: ["iotgw.config.restart_required": "\(pending.joined(separator: ", "))"]
            )
        }
        notifier.notify("READY=1\nSTATUS=configuration reloaded")
    }

    /// Applies the live keys of `new`. Returns the keys applied and those that need a restart.
    func apply(_ new: GatewayConfigFile) -> (applied: [String], restartRequired: [String]) {
        let before = running.withLock { $0 }
        var after = before
        after.log.level = new.log.level
        if accessControl.canApply(new.auth) {
            after.auth = new.auth
            // Start-up only: the hashing threads and their queue exist once.
            after.auth.hashThreads = before.auth.hashThreads
            after.auth.maxPendingHashes = before.auth.maxPendingHashes
        }
        after.limits.maxConnections = new.limits.maxConnections
        after.limits.maxInflight = new.limits.maxInflight
        after.limits.maxQueuedMessages = new.limits.maxQueuedMessages
        after.limits.maxQueuedBytes = new.limits.maxQueuedBytes
        after.limits.sessionExpiry = new.limits.sessionExpiry
        after.limits.maxClientIDLength = new.limits.maxClientIDLength
        after.limits.maxKeepAlive = new.limits.maxKeepAlive
        after.mqtt.sysInterval = new.mqtt.sysInterval
        if let ingest = broker.ingest {
            after.storage.topics = new.storage.topics
            ingest.setTopics(after.storage.topics)
        }
        let applied = Self.changedKeys(before, after)
        let restartRequired = Self.changedKeys(after, new)
        if let level = commandLineLevel ?? Logger.Level(rawValue: after.log.level) {
            logControl.level = level
        }
        broker.reconfigure(after.brokerConfiguration)
        accessControl.apply(after)
        running.withLock { $0 = after }
        return (applied, restartRequired)
    }

    /// The dotted keys whose values differ between `a` and `b`.
    static func changedKeys(_ a: GatewayConfigFile, _ b: GatewayConfigFile) -> [String] {
        let left: [String: String]
        let right: [String: String]
        do {
            left = try flatten(a)
            right = try flatten(b)
        } catch {
            // Only non-finite numbers (`.inf` in YAML) fail to encode; say so rather than guess.
            return a == b ? [] : ["(some keys: cannot compare, \(error))"]
        }
        return Set(left.keys).union(right.keys).filter { left[$0] != right[$0] }.sorted()
    }

    private static func flatten(_ config: GatewayConfigFile) throws -> [String: String] {
        let object = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(config))
        var out: [String: String] = [:]
        func walk(_ value: Any, _ prefix: String) throws {
            if let dictionary = value as? [String: Any] {
                for (key, child) in dictionary { try walk(child, prefix.isEmpty ? key : "\(prefix).\(key)") }
            } else if let array = value as? [Any] {
                // A list (`auth.acl`) compares as a whole, in a canonical text: the description of
                // decoded dictionaries has no fixed key order.
                let canonical = try JSONSerialization.data(withJSONObject: array, options: [.sortedKeys])
                out[prefix] = String(decoding: canonical, as: UTF8.self)
            } else {
                out[prefix] = "\(value)"
            }
        }
        try walk(object, "")
        return out
    }
}

public import GatewayCore
import MQTTCodec

extension GatewayConfigFile {
    /// `storage`: where telemetry is persisted and how it gets there.
    public struct Storage: Codable, Sendable, Equatable {
        /// `storage.enabled`: persist telemetry. Default true.
        public var enabled = true
        /// `storage.backend`: `sqlite` (embedded) or `postgres` (`storage.postgres`). Default sqlite.
        public var backend = "sqlite"
        /// `storage.data_dir`: directory of the database file (created if missing). Default `data`
        /// (relative to the working directory; the systemd unit uses its StateDirectory).
        public var dataDir = "data"
        public var sqlite = SQLite()
        public var postgres = Postgres()
        public var pool = Pool()
        /// `storage.topics`: topic filters of the messages stored. Default `["#"]` (every topic except
        /// `$`-topics such as `$SYS/...`, which `#` never matches).
        public var topics = ["#"]
        /// `storage.ack`: `persisted` (QoS 1/2 acknowledged after the commit) or `received`. Default persisted.
        public var ack = "persisted"
        /// `storage.overflow`: `backpressure` (stop reading publishers) or `reject`. Default backpressure.
        public var overflow = "backpressure"
        public var queue = Queue()
        public var batch = Batch()
        public var retention = Retention()
        /// `storage.min_free_bytes`: below this much free space on the SQLite database's file system,
        /// storing pauses (publishers of stored topics meet the overflow policy) and `/readyz` reports
        /// `disk` not ready. 0 disables the check. Default 100 MiB.
        public var minFreeBytes: Int64 = 100 * 1_048_576

        public init() {}
        enum CodingKeys: String, CodingKey, CaseIterable {
            case enabled, backend, sqlite, postgres, pool, topics, ack, overflow, queue, batch, retention
            case dataDir = "data_dir"
            case minFreeBytes = "min_free_bytes"
        }
        public init(from decoder: any Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Storage()
            enabled = try c.value(.enabled, default: d.enabled)
            backend = try c.value(.backend, default: d.backend)
            dataDir = try c.value(.dataDir, default: d.dataDir)
            sqlite = try c.value(.sqlite, default: d.sqlite)
            postgres = try c.value(.postgres, default: d.postgres)
            pool = try c.value(.pool, default: d.pool)
            topics = try c.value(.topics, default: d.topics)
            ack = try c.value(.ack, default: d.ack)
            overflow = try c.value(.overflow, default: d.overflow)
            queue = try c.value(.queue, default: d.queue)
            batch = try c.value(.batch, default: d.batch)
            retention = try c.value(.retention, default: d.retention)
            minFreeBytes = try c.value(.minFreeBytes, default: d.minFreeBytes)
        }

        /// `storage.retention`: old telemetry deleted in chunks, oldest first.
        public struct Retention: Codable, Sendable, Equatable {
            /// `storage.retention.max_age`: seconds a row is kept; 0 keeps rows whatever their age. Default 0.
            public var maxAge = 0.0
            /// `storage.retention.max_rows`: the newest rows kept; 0 means no limit. Default 0.
            public var maxRows = 0
            /// `storage.retention.interval`: seconds between retention passes. Default 60.
            public var interval = 60.0
            /// `storage.retention.chunk_rows`: rows deleted per transaction. Default 5000.
            public var chunkRows = 5000

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case interval
                case maxAge = "max_age"
                case maxRows = "max_rows"
                case chunkRows = "chunk_rows"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                let d = Retention()
                maxAge = try c.value(.maxAge, default: d.maxAge)
                maxRows = try c.value(.maxRows, default: d.maxRows)
                interval = try c.value(.interval, default: d.interval)
                chunkRows = try c.value(.chunkRows, default: d.chunkRows)
            }
        }

        /// `storage.sqlite`: the embedded backend.
        public struct SQLite: Codable, Sendable, Equatable {
            /// `storage.sqlite.file`: file name inside `data_dir`. Default `iotgw.db`.
            public var file = "iotgw.db"
            /// `storage.sqlite.synchronous`: `full` (survives power loss) or `normal` (survives crashes). Default full.
            public var synchronous = "full"

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable { case file, synchronous }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                file = try c.value(.file, default: "iotgw.db")
                synchronous = try c.value(.synchronous, default: "full")
            }
        }

        /// `storage.postgres`: the PostgreSQL backend (used when `backend: postgres`).
        public struct Postgres: Codable, Sendable, Equatable {
            /// `storage.postgres.host`: server host name or address. Default `127.0.0.1`.
            public var host = "127.0.0.1"
            /// `storage.postgres.port`. Default 5432.
            public var port = 5432
            /// `storage.postgres.user`: the role to log in as. Default `iotgw`.
            public var user = "iotgw"
            /// `storage.postgres.password`. Default empty (no password, or see `password_file`).
            public var password = ""
            /// `storage.postgres.password_file`: a file holding the password (first line), read at
            /// start-up; keeps the secret out of the configuration file. Default empty.
            public var passwordFile = ""
            /// `storage.postgres.database`: the database to use; required with `backend: postgres`.
            public var database = ""
            /// `storage.postgres.tls`: `disable`, `prefer` or `require` (server certificate verified). Default disable.
            public var tls = "disable"
            /// `storage.postgres.connect_timeout`: seconds start-up keeps trying to reach the server
            /// (the gateway then refuses to start). Default 10.
            public var connectTimeout = 10.0

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case host, port, user, password, database, tls
                case passwordFile = "password_file"
                case connectTimeout = "connect_timeout"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                let d = Postgres()
                host = try c.value(.host, default: d.host)
                port = try c.value(.port, default: d.port)
                user = try c.value(.user, default: d.user)
                password = try c.value(.password, default: d.password)
                passwordFile = try c.value(.passwordFile, default: d.passwordFile)
                database = try c.value(.database, default: d.database)
                tls = try c.value(.tls, default: d.tls)
                connectTimeout = try c.value(.connectTimeout, default: d.connectTimeout)
            }
        }

        /// `storage.pool`: database connections shared by every client.
        public struct Pool: Codable, Sendable, Equatable {
            /// `storage.pool.size`: connections, whatever the number of devices. Default 4.
            public var size = 4
            /// `storage.pool.acquire_timeout`: seconds a caller waits for a free connection. Default 5.
            public var acquireTimeout = 5.0

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case size
                case acquireTimeout = "acquire_timeout"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                size = try c.value(.size, default: 4)
                acquireTimeout = try c.value(.acquireTimeout, default: 5.0)
            }
        }

        /// `storage.queue`: the bounded ingest queue.
        public typealias Queue = GatewayConfigFile.QueueBounds

        /// `storage.batch`: group commit.
        public struct Batch: Codable, Sendable, Equatable {
            /// `storage.batch.max_rows`: rows per transaction. Default 2000.
            public var maxRows = 2000
            /// `storage.batch.max_delay`: seconds a message waits for its batch to fill. Default 0.01.
            public var maxDelay = 0.01

            public init() {}
            enum CodingKeys: String, CodingKey, CaseIterable {
                case maxRows = "max_rows"
                case maxDelay = "max_delay"
            }
            public init(from decoder: any Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                maxRows = try c.value(.maxRows, default: 2000)
                maxDelay = try c.value(.maxDelay, default: 0.01)
            }
        }
    }

    /// Range and value checks of `storage`.
    func storageValidationErrors() -> [(key: String, message: String)] {
        var errors: [(String, String)] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { errors.append((key, message)) }
        }
        check(["sqlite", "postgres"].contains(storage.backend), "storage.backend", "'\(storage.backend)' is not one of sqlite, postgres")
        if storage.backend == "postgres" {
            let pg = storage.postgres
            check(!pg.database.isEmpty, "storage.postgres.database", "is required with storage.backend postgres")
            check(!pg.host.isEmpty, "storage.postgres.host", "must not be empty")
            check(!pg.user.isEmpty, "storage.postgres.user", "must not be empty")
            check(pg.password.isEmpty || pg.passwordFile.isEmpty, "storage.postgres.password_file", "set either password or password_file, not both")
        }
        check((1...65535).contains(storage.postgres.port), "storage.postgres.port", "must be 1-65535")
        check(["disable", "prefer", "require"].contains(storage.postgres.tls), "storage.postgres.tls", "'\(storage.postgres.tls)' is not one of disable, prefer, require")
        check(storage.postgres.connectTimeout > 0 && storage.postgres.connectTimeout <= 600, "storage.postgres.connect_timeout", "must be more than 0 and at most 600 seconds")
        check(!storage.dataDir.isEmpty, "storage.data_dir", "must not be empty")
        check(!storage.sqlite.file.isEmpty && !storage.sqlite.file.contains("/"), "storage.sqlite.file", "must be a file name without '/'")
        check(["full", "normal"].contains(storage.sqlite.synchronous), "storage.sqlite.synchronous", "'\(storage.sqlite.synchronous)' is not one of full, normal")
        check((1...64).contains(storage.pool.size), "storage.pool.size", "must be 1-64")
        check(storage.pool.acquireTimeout > 0, "storage.pool.acquire_timeout", "must be more than 0 seconds")
        for (index, filter) in storage.topics.enumerated() {
            check(MQTTTopic.isValidFilter(filter), "storage.topics[\(index)]", "'\(filter)' is not a valid topic filter")
        }
        check(IngestConfiguration.AckMode(rawValue: storage.ack) != nil, "storage.ack", "'\(storage.ack)' is not one of persisted, received")
        check(IngestConfiguration.Overflow(rawValue: storage.overflow) != nil, "storage.overflow", "'\(storage.overflow)' is not one of backpressure, reject")
        check(storage.queue.maxMessages >= 1, "storage.queue.max_messages", "must be at least 1")
        check(storage.queue.maxBytes >= 1024, "storage.queue.max_bytes", "must be at least 1024")
        check((1...10_000).contains(storage.batch.maxRows), "storage.batch.max_rows", "must be 1-10000")
        check((0...10).contains(storage.batch.maxDelay), "storage.batch.max_delay", "must be 0-10 seconds")
        check(storage.retention.maxAge >= 0, "storage.retention.max_age", "must be 0 (keep) or more seconds")
        check(storage.retention.maxRows >= 0, "storage.retention.max_rows", "must be 0 (no limit) or more")
        check(storage.retention.interval > 0 && storage.retention.interval <= 86_400, "storage.retention.interval", "must be more than 0 and at most 86400 seconds")
        check((100...1_000_000).contains(storage.retention.chunkRows), "storage.retention.chunk_rows", "must be 100-1000000")
        check(storage.minFreeBytes >= 0, "storage.min_free_bytes", "must be 0 (no check) or more bytes")
        return errors
    }

    /// The ingest queue's configuration.
    public var ingestConfiguration: IngestConfiguration {
        var c = IngestConfiguration()
        c.topics = storage.topics
        c.maxQueuedMessages = storage.queue.maxMessages
        c.maxQueuedBytes = storage.queue.maxBytes
        c.batchMaxRows = storage.batch.maxRows
        c.batchMaxDelay = storage.batch.maxDelay
        c.ack = IngestConfiguration.AckMode(rawValue: storage.ack) ?? .persisted
        c.overflow = IngestConfiguration.Overflow(rawValue: storage.overflow) ?? .backpressure
        return c
    }
}

extension GatewayConfigFile {
    /// The session-state journal's configuration: the same caps and batching as the ingest queue
    /// (`storage.queue.*`, `storage.batch.*`), applied to its own queue.
    public var stateJournalConfiguration: StateJournal.Configuration {
        var c = StateJournal.Configuration()
        c.maxPendingOperations = storage.queue.maxMessages
        c.maxPendingBytes = storage.queue.maxBytes
        c.batchMaxOperations = storage.batch.maxRows
        c.batchMaxDelay = storage.batch.maxDelay
        return c
    }
}

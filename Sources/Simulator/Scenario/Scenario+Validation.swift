extension Scenario {
    /// The largest number of clients one simulation may open. It keeps a typo (an extra zero) from
    /// exhausting file descriptors: libmosquitto uses three descriptors per client.
    public static let maximumClients = 100_000

    /// Checks every value and throws the first problem found, naming its key path.
    ///
    /// ``load(contentsOf:)`` calls this with the file name; command-line overrides call it again after applying flags.
    /// - Parameter file: the scenario file to name in the error, if any.
    public func validate(file: String? = nil) throws(ScenarioError) {
        func fail(_ keyPath: String, _ reason: String) -> ScenarioError {
            ScenarioError(code: .invalidValue, file: file, keyPath: keyPath, reason: reason)
        }
        func checkQoS(_ qos: Int, _ keyPath: String) throws(ScenarioError) {
            guard (0...2).contains(qos) else { throw fail(keyPath, "must be 0, 1 or 2, got \(qos)") }
        }
        func checkFraction(_ value: Double, _ keyPath: String) throws(ScenarioError) {
            guard value.isFinite, (0...1).contains(value) else { throw fail(keyPath, "must be a fraction between 0 and 1, got \(value)") }
        }
        func checkRate(_ value: Double, _ keyPath: String) throws(ScenarioError) {
            guard value.isFinite, value >= 0 else { throw fail(keyPath, "must be a non-negative number, got \(value)") }
        }
        func checkTopic(_ topic: String, _ keyPath: String) throws(ScenarioError) {
            guard !topic.isEmpty else { throw fail(keyPath, "must not be empty") }
            guard !topic.contains("+"), !topic.contains("#") else { throw fail(keyPath, "a topic to publish on must not contain wildcards") }
        }

        for (count, key) in [(devices.mqtt, "devices.mqtt"), (devices.wsMQTT, "devices.ws-mqtt"), (devices.wsJSON, "devices.ws-json")] {
            guard count >= 0 else { throw fail(key, "must not be negative, got \(count)") }
        }
        guard consumers.count >= 0 else { throw fail("consumers.count", "must not be negative, got \(consumers.count)") }
        let clients = devices.total + consumers.count + (requests.rate > 0 ? 1 : 0)
        guard clients > 0 else { throw fail("devices", "the scenario has no clients at all") }
        guard clients <= Self.maximumClients else { throw fail("devices", "\(clients) clients exceed the limit of \(Self.maximumClients)") }

        try checkRate(connect.rate, "connect.rate")
        guard connect.timeout > .zero else { throw fail("connect.timeout", "must be positive") }
        guard (0...65535).contains(connect.keepAlive) else { throw fail("connect.keepalive", "must be between 0 and 65535 seconds, got \(connect.keepAlive)") }
        try checkFraction(connect.failureTolerance, "connect.failure-tolerance")

        if let publishers = publish.publishers {
            guard (0...devices.total).contains(publishers) else {
                throw fail("publish.publishers", "must be between 0 and the number of devices (\(devices.total)), got \(publishers)")
            }
        }
        try checkRate(publish.rate, "publish.rate")
        if let total = publish.totalRate { try checkRate(total, "publish.total-rate") }
        try checkQoS(publish.qos, "publish.qos")
        guard (0...65_535).contains(publish.window) else {
            throw fail("publish.window", "must be between 0 (no window) and 65535, got \(publish.window)")
        }
        try checkTopic(publish.topic, "publish.topic")
        switch publish.payload {
        case .size(let size):
            guard (ProbeCodec.minimumSize...268_435_455).contains(size) else {
                throw fail("publish.payload.size", "must be between \(ProbeCodec.minimumSize) and 268435455 bytes, got \(size)")
            }
        case .template(let template):
            do { _ = try PayloadTemplate(template) } catch { throw fail("publish.payload.template", error.reason) }
        }

        guard Transport.allCases.contains(consumers.transport) else { throw fail("consumers.transport", "unknown transport") }
        try checkQoS(consumers.qos, "consumers.qos")
        if !consumers.partition {
            guard !consumers.filter.isEmpty else { throw fail("consumers.filter", "must not be empty") }
            guard TopicFilter.isValid(consumers.filter) else { throw fail("consumers.filter", "'\(consumers.filter)' is not a valid MQTT topic filter") }
        }

        try checkRate(requests.rate, "requests.rate")
        try checkQoS(requests.qos, "requests.qos")
        try checkTopic(requests.commandTopic, "requests.command-topic")
        try checkTopic(requests.replyTopic, "requests.reply-topic")
        guard requests.commandTopic.contains("{id}") else { throw fail("requests.command-topic", "must contain {id} so each device has its own") }
        guard requests.replyTopic.contains("{id}") else { throw fail("requests.reply-topic", "must contain {id} so each device has its own") }

        // The controller subscribes to the reply topic with {id} replaced by `+`, so {id} must be a whole level.
        guard requests.replyTopic.split(separator: "/", omittingEmptySubsequences: false).contains("{id}") else {
            throw fail("requests.reply-topic", "{id} must be a whole topic level, as in devices/{id}/replies")
        }
        // iotgw's JSON API carries QoS 0 and 1 only.
        if devices.wsJSON > 0 {
            guard publish.qos <= 1 else { throw fail("publish.qos", "ws-json devices publish at QoS 0 or 1 only, got \(publish.qos)") }
            guard requests.rate == 0 || requests.qos <= 1 else { throw fail("requests.qos", "ws-json devices answer at QoS 0 or 1 only, got \(requests.qos)") }
        }
        if consumers.transport == .wsJSON && consumers.count > 0 {
            guard consumers.qos <= 1 else { throw fail("consumers.qos", "ws-json consumers subscribe at QoS 0 or 1 only, got \(consumers.qos)") }
        }

        guard duration >= .zero else { throw fail("duration", "must not be negative") }
        guard drain >= .zero else { throw fail("drain", "must not be negative") }
        try checkFraction(lossTolerance, "loss-tolerance")
    }
}

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The built iotgw binary on free loopback ports (MQTT and WebSocket), with a generated YAML configuration.
///
/// The binary is `IOTGW_BIN` or `.build/debug/iotgw` in this checkout (what `make test` builds first). The
/// admin listener is off so parallel runs never collide on its port. ``stop()`` ends the process (SIGTERM, then
/// SIGKILL) and removes the configuration; every test that starts one stops it with `defer`.
struct TestGateway {
    let process: Process
    let mqttPort: Int
    let webSocketPort: Int
    let directory: URL

    /// The checkout this file belongs to: Tests/SimulatorTests/Support/ → the package root.
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The gateway binary, or `nil` when it has not been built.
    static let executable: String? = {
        if let explicit = ProcessInfo.processInfo.environment["IOTGW_BIN"], !explicit.isEmpty {
            return FileManager.default.isExecutableFile(atPath: explicit) ? explicit : nil
        }
        let built = packageRoot.appendingPathComponent(".build/debug/iotgw").path
        return FileManager.default.isExecutableFile(atPath: built) ? built : nil
    }()

    /// Starts the gateway and waits until both listeners accept connections.
    /// - Parameter maxQueuedMessages: `limits.max_queued_messages`, per client.
    static func start(maxQueuedMessages: Int = 10_000) async throws -> TestGateway {
        guard let executable else { throw LocalProcess.StartError(description: "iotgw not built: run swift build or set IOTGW_BIN") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("iotgw-sim-gateway-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let mqttPort = LocalProcess.freePort()
        let webSocketPort = LocalProcess.freePort()
        let configuration = """
            log:
              level: notice
            listeners:
              mqtt:
                host: 127.0.0.1
                port: \(mqttPort)
              ws:
                enabled: true
                host: 127.0.0.1
                port: \(webSocketPort)
            limits:
              max_queued_messages: \(maxQueuedMessages)
              max_queued_bytes: 67108864
            shutdown:
              timeout: 3
            admin:
              enabled: false
            storage:
              data_dir: \(directory.appendingPathComponent("data").path)
            """
        let file = directory.appendingPathComponent("iotgw.yaml")
        try configuration.write(to: file, atomically: true, encoding: .utf8)
        let process = try await LocalProcess.start(
            executable, arguments: ["run", "--config", file.path], waitingFor: [mqttPort, webSocketPort], timeout: .seconds(20)
        )
        return TestGateway(process: process, mqttPort: mqttPort, webSocketPort: webSocketPort, directory: directory)
    }

    func stop() {
        process.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

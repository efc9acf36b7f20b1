import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Test helpers that start a loopback server process (mosquitto, a Python WebSocket server) and stop it again.
enum LocalProcess {
    /// Finds an executable through an environment variable or `PATH`.
    static func find(_ name: String, environment variable: String, extraDirectories: [String] = []) -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment[variable], !explicit.isEmpty {
            return FileManager.default.isExecutableFile(atPath: explicit) ? explicit : nil
        }
        let path = (environment["PATH"] ?? "").split(separator: ":").map(String.init) + extraDirectories
        return path.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// A loopback TCP port that was free a moment ago (bind to port 0, read it back, close).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        precondition(bound)
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port`.
    static func isListening(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Starts `executable` and waits (up to `timeout`) until each of `ports` accepts connections.
    static func start(_ executable: String, arguments: [String], waitingFor ports: [Int], timeout: Duration = .seconds(10)) async throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        // A pipe the child can watch: it reaches end-of-file when this test process goes away.
        process.standardInput = Pipe()
        let errors = FileManager.default.temporaryDirectory.appendingPathComponent("iotgw-sim-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while !ports.allSatisfy(isListening(port:)) {
            guard process.isRunning, ContinuousClock.now < deadline else {
                process.terminate()
                let log = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
                throw StartError(description: "\(executable) did not start listening on \(ports): \(log)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return process
    }

    struct StartError: Error, CustomStringConvertible {
        var description: String
    }
}

extension Process {
    /// Stops the process (SIGTERM, then SIGKILL after 200 ms) and waits for it to exit.
    ///
    /// Children started from a test thread can inherit a signal mask that blocks SIGTERM, so SIGKILL follows soon;
    /// these servers keep no state worth a graceful exit. Watches `/proc/PID/stat` rather than calling
    /// `waitUntilExit()`, which on Linux spins the current run loop and can hang on a Swift concurrency thread, or
    /// polling `isRunning`, which Foundation updates only later.
    func stop() {
        guard isRunning else { return }
        let pid = processIdentifier
        kill(pid, SIGTERM)
        for attempt in 0..<500 where !Self.hasExited(pid) {
            if attempt == 20 { kill(pid, SIGKILL) }
            usleep(10_000)
        }
    }

    /// Whether `pid` is gone or a zombie waiting to be reaped.
    private static func hasExited(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        // The state letter follows the parenthesised command name.
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first == "Z"
    }
}

/// A mosquitto broker on a free loopback port, with an optional extra configuration.
struct TestBroker {
    let process: Process
    let port: Int
    let directory: URL

    /// The broker binary (`MOSQUITTO_BIN`, `PATH`, or `/usr/sbin`), or `nil` when absent.
    static let executable = LocalProcess.find("mosquitto", environment: "MOSQUITTO_BIN", extraDirectories: ["/usr/sbin", "/usr/local/sbin"])

    static func start(extraConfiguration: String = "", port: Int = LocalProcess.freePort(), listener: String? = nil) async throws -> TestBroker {
        guard let executable else { throw LocalProcess.StartError(description: "mosquitto not found") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("iotgw-sim-broker-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let configuration = """
            \(listener ?? "listener \(port) 127.0.0.1\nallow_anonymous true")
            persistence false
            set_tcp_nodelay true
            max_queued_messages 100000
            \(extraConfiguration)
            """
        let file = directory.appendingPathComponent("mosquitto.conf")
        try configuration.write(to: file, atomically: true, encoding: .utf8)
        let process = try await LocalProcess.start(executable, arguments: ["-c", file.path], waitingFor: [port])
        return TestBroker(process: process, port: port, directory: directory)
    }

    func stop() {
        process.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

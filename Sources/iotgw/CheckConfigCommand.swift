import ArgumentParser
import GatewayConfig
import GatewayTransport

import Foundation

struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file without starting the gateway."
    )

    @Argument(help: "The configuration file (.yaml, .yml or .json).")
    var file: String

    @Flag(name: .customLong("skip-tls-files"), help: "Check keys and values only; do not read the TLS certificate, key and CA files (listeners and bridges) (to check a production file away from its certificates).")
    var skipTLSFiles = false

    func run() throws {
        do {
            let config = try ConfigLoader.load(path: file)
            // Reads storage.postgres.password_file, as start-up does.
            _ = try config.databaseConfiguration(path: file)
            // Loads the TLS certificate and key too: a bad file fails here as it would at start-up.
            if !skipTLSFiles {
                _ = try config.serverConfiguration(path: file)
                try config.checkBridgeTLSFiles(path: file)
            }
            print("\(file): OK\(skipTLSFiles ? " (TLS files not read)" : "")")
        } catch {
            printError("iotgw: invalid configuration: \(error)")
            throw ExitCode(2)
        }
    }
}

/// Writes a line to standard error.
func printError(_ line: String) {
    var line = line
    if !line.hasSuffix("\n") { line += "\n" }
    FileHandle.standardError.write(Data(line.utf8))
}

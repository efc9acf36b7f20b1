import ArgumentParser

/// The `iotgw` command line.
@main
struct Iotgw: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iotgw",
        abstract: "An MQTT/WebSocket IoT gateway.",
        version: GatewayVersion.current,
        subcommands: [RunCommand.self, CheckConfigCommand.self, SimulateCommand.self, UserCommand.self, VersionCommand.self],
        defaultSubcommand: nil
    )
}

/// The version string reported by `iotgw version` and `$SYS/broker/version`.
enum GatewayVersion {
    static let current = "0.1.0"
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version and exit.")

    func run() {
        print("iotgw \(GatewayVersion.current)")
    }
}

import ArgumentParser
import HeraldServer

@main
struct HeraldCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald",
        abstract: "Herald: a real-time messaging server. Deliver to everyone, a room, or every device of a user.",
        version: "herald \(HeraldVersion.current) (protocol v\(HeraldVersion.protocolVersion))",
        subcommands: [Serve.self, Token.self, Bench.self],
        defaultSubcommand: Serve.self
    )
}

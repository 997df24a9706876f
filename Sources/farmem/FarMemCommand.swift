import ArgumentParser

/// `farmem`: the FarMem command line.
@main
struct FarMemCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "farmem",
        abstract: "FarMem remote memory: run a server, a demo, or read statistics.",
        subcommands: [DemoCommand.self, BenchCommand.self, ServeCommand.self, StatsCommand.self, TopCommand.self, LoadCommand.self, BenchWorkerCommand.self])
}

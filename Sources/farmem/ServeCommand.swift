import ArgumentParser
import FarMemProtocol
import FarMemServer
import FarMemSystem
#if canImport(Glibc)
import Glibc
#endif

/// `farmem serve`: a memory server in the foreground (farmemd has every option).
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Run a memory server in the foreground (see farmemd for all options).")

    @Option(help: "Address to listen on, HOST:PORT.") var listen = "127.0.0.1:7070"
    @Option(help: "Most page memory to hold, e.g. 8GiB.") var capacity = "1GiB"

    func run() throws {
        guard let endpoint = TCPSocket.Endpoint(parsing: listen) else { throw ValidationError("--listen must be HOST:PORT") }
        guard let bytes = parseByteSize(capacity), bytes >= 4096 else { throw ValidationError("--capacity must be a size such as 8GiB") }
        let server = try MemoryServer(configuration: ServerConfiguration(listen: endpoint, capacityBytes: bytes))
        server.start()
        print("farmem: serving on \(endpoint.host):\(server.port) with \(formatByteSize(bytes)); Ctrl-C stops")
        waitForTerminationSignal()
        server.stop()
    }
}

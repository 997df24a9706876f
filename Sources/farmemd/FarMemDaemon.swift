import ArgumentParser
import CFarMemSys
import FarMemProtocol
import FarMemServer
import FarMemSystem
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The FarMem memory server: holds pages for many clients in its RAM.
@main
struct FarMemDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "farmemd",
        abstract: "FarMem memory server: holds far-memory pages for many clients.",
        discussion: """
        Clients (programs linked with FarMemory) connect over TCP. Each client sees only its
        own pages; a client's pages are freed when its last connection closes.
        """)

    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free port).")
    var listen = "127.0.0.1:7070"

    @Option(help: "Most page memory to hold for all clients, e.g. 8GiB, 512MiB.")
    var capacity = "1GiB"

    @Option(help: "File holding a shared secret every client must present (first line, trailing newline ignored).")
    var tokenFile: String?

    @Option(help: "Most simultaneous client connections.")
    var maxConnections = 1024

    @Option(help: "Seconds a client may stall in the middle of a frame before it is disconnected.")
    var frameTimeout = 10.0

    @Option(help: "Transports to serve: tcp, rdma (required) or auto (RDMA too when the listen address has an RDMA device).")
    var transport = "auto"

    @Option(help: "RDMA-CM port (default: the TCP port's number; RDMA-CM has its own port space).")
    var rdmaPort: UInt16?

    @Option(help: "Write the bound port to this file once listening (for scripts and tests).")
    var portFile: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Flag(help: "Exit (SIGKILL) when the process that started this one exits, even if this one is stopped (for tests and supervisors without a service manager).")
    var dieWithParent = false

    func run() throws {
        if dieWithParent, fm_die_with_parent() != 0 { throw ExitCode(1) }
        guard let endpoint = TCPSocket.Endpoint(parsing: listen) else {
            throw ValidationError("--listen must be HOST:PORT, got '\(listen)'")
        }
        guard let bytes = parseByteSize(capacity), bytes >= 4096 else {
            throw ValidationError("--capacity must be a size of at least 4096 bytes such as 8GiB, got '\(capacity)'")
        }
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        var token: [UInt8]?
        if let tokenFile {
            token = readTokenFile(tokenFile)
            guard token != nil else { throw ValidationError("cannot read --token-file \(tokenFile)") }
            guard let t = token, !t.isEmpty, t.count <= ProtocolLimits.maxTokenLength else {
                throw ValidationError("the token must be 1...\(ProtocolLimits.maxTokenLength) bytes")
            }
        }
        guard let serverTransport = ServerConfiguration.Transport(rawValue: transport) else {
            throw ValidationError("--transport must be tcp, rdma or auto")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let server = try MemoryServer(configuration: ServerConfiguration(
            listen: endpoint, capacityBytes: bytes, token: token, maxConnections: maxConnections,
            frameTimeoutSeconds: frameTimeout, transport: serverTransport, rdmaPort: rdmaPort))
        server.start()
        if let portFile {
            let text = "\(server.port)\n"
            guard let file = fopen(portFile, "w") else { throw ValidationError("cannot write --port-file \(portFile)") }
            fputs(text, file)
            fclose(file)
        }
        // Serve until SIGINT or SIGTERM, then disconnect everyone cleanly.
        waitForTerminationSignal()
        server.stop()
    }
}


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

    @Option(help: "File of tenants, one per line: NAME SECRET QUOTA (see README, \"Tenants\"); reloaded on SIGHUP. Instead of --token-file.")
    var keysFile: String?

    @Option(help: "Most simultaneous client connections (each costs one descriptor; the soft descriptor limit is raised to the hard one).")
    var maxConnections = 4096

    @Option(help: "Threads serving connections (event loops); 0: one per CPU this process may use, at most 8.")
    var eventLoops = 0

    @Option(help: "Memory for frames that cannot be finished at once (a request still arriving, a reply not yet taken), for all connections together; about 1 MiB a frame. Past it, connections wait their turn.")
    var bufferMemory = "64MiB"

    @Option(help: "Seconds a frame may take to arrive whole, and a reply to be taken, from its first byte; also the time a new client has to say HELLO. Past it the client is disconnected.")
    var frameTimeout = 10.0

    @Option(help: "Transports to serve: tcp, rdma (required) or auto (RDMA too when the listen address has an RDMA device).")
    var transport = "auto"

    @Option(help: "RDMA-CM port (default: the TCP port's number; RDMA-CM has its own port space).")
    var rdmaPort: UInt16?

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free port; see --metrics-port-file; empty: none).")
    var metricsListen: String?

    @Option(help: "Write the metrics port to this file once listening (for scripts and tests).")
    var metricsPortFile: String?

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
        if keysFile != nil, tokenFile != nil {
            throw ValidationError("--keys-file and --token-file exclude each other: with a keys file each tenant's secret is its token")
        }
        var keys: TenantKeys?
        if let keysFile { keys = try Self.readKeys(keysFile) }
        guard let serverTransport = ServerConfiguration.Transport(rawValue: transport) else {
            throw ValidationError("--transport must be tcp, rdma or auto")
        }
        guard let bufferBytes = parseByteSize(bufferMemory), bufferBytes >= 1 << 20 else {
            throw ValidationError("--buffer-memory must be a size of at least 1MiB such as 64MiB, got '\(bufferMemory)'")
        }
        guard frameTimeout >= 0.05, frameTimeout <= 3600 else {
            throw ValidationError("--frame-timeout must be 0.05...3600 seconds, got \(frameTimeout)")
        }
        guard maxConnections >= 1, eventLoops >= 0 else {
            throw ValidationError("--max-connections must be at least 1 and --event-loops at least 0")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // Descriptors: one per connection, and some for the listener, the
        // event loops, RDMA and metrics.
        let descriptors = raiseDescriptorLimit()
        if descriptors < maxConnections + 64 {
            Logger(label: "farmemd").warning("""
                the descriptor limit is \(descriptors): fewer than --max-connections \(maxConnections) + 64; \
                connections past it wait in the listen backlog (raise LimitNOFILE= or ulimit -Hn)
                """)
        }
        var metricsEndpoint: TCPSocket.Endpoint?
        if let metricsListen, !metricsListen.isEmpty {   // empty: none (a service file's unset variable)
            guard let parsed = TCPSocket.Endpoint(parsing: metricsListen) else {
                throw ValidationError("--metrics-listen must be HOST:PORT, got \(metricsListen)")
            }
            metricsEndpoint = parsed
        }
        let server = try MemoryServer(configuration: ServerConfiguration(
            listen: endpoint, capacityBytes: bytes, token: token, maxConnections: maxConnections,
            frameTimeoutSeconds: frameTimeout, transport: serverTransport, rdmaPort: rdmaPort, metricsListen: metricsEndpoint,
            keys: keys, eventLoops: eventLoops, bufferMemoryBytes: bufferBytes))
        server.start()
        func write(_ port: UInt16, to path: String, _ option: String) throws {
            guard let file = fopen(path, "w") else { throw ValidationError("cannot write \(option) \(path)") }
            fputs("\(port)\n", file)
            fclose(file)
        }
        if let metricsPortFile, let port = server.metricsPort { try write(port, to: metricsPortFile, "--metrics-port-file") }
        if let portFile { try write(server.port, to: portFile, "--port-file") }
        // Serve until SIGINT or SIGTERM, then disconnect everyone cleanly. SIGHUP
        // reloads the keys file; a file with a mistake keeps the keys in use.
        let logger = Logger(label: "farmemd")
        if let keys { logger.info("\(keys.keys.count) tenants from \(keysFile!)") }
        waitForTerminationSignal(onHangup: keysFile.map { path in {
            do {
                let summary = try server.reloadKeys(try Self.readKeys(path))
                logger.notice("\(summary)")
            } catch {
                logger.error("keys file not reloaded, the keys in use stay: \(error)")
            }
        } })
        server.stop()
    }

    static func readKeys(_ path: String) throws -> TenantKeys {
        guard let text = readTextFile(path) else { throw ValidationError("cannot read --keys-file \(path): \(Errno.current)") }
        do {
            return try TenantKeys.parse(text)
        } catch {
            throw ValidationError("--keys-file \(path), \(error)")
        }
    }
}


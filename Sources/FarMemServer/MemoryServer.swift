import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// What every connection of one server shares.
final class ServerContext: Sendable {
    let configuration: ServerConfiguration
    let ledger: CapacityLedger
    let sessions: SessionTable
    /// Present when the server has a keys file (tenants and quotas).
    let tenants: TenantDirectory?
    let logger: Logger
    let stopping = Atomic<Bool>(false)
    let connections = Atomic<Int>(0)
    let pagesRead = Atomic<UInt64>(0)
    let pagesWritten = Atomic<UInt64>(0)
    let metrics = ServerMetrics()
    /// Present when RDMA is served.
    let rdma: RDMAService?

    init(configuration: ServerConfiguration, ledger: CapacityLedger, logger: Logger, rdma: RDMAService?) {
        self.configuration = configuration
        self.ledger = ledger
        self.sessions = SessionTable(ledger: ledger)
        self.tenants = configuration.keys.map { TenantDirectory($0) }
        self.logger = logger
        self.rdma = rdma
    }

    /// A connection of `session` closed; the last one frees all its regions.
    func detach(_ session: Session) {
        guard let ended = sessions.detach(session) else { return }
        // Regions first (each deregisters its memory), then the protection domain.
        for id in ended.regionIDs { try? ended.removeRegion(id) }
        rdma?.forget(ended)
    }

    func stats() -> ServerStats {
        var s = ServerStats()
        s.capacityPages = UInt64(ledger.capacityPages)
        s.reservedPages = UInt64(ledger.reservedPages)
        s.storedPages = UInt64(ledger.storedPages)
        s.sessions = UInt64(sessions.count)
        s.connections = UInt64(connections.load(ordering: .relaxed))
        s.pagesRead = pagesRead.load(ordering: .relaxed)
        s.pagesWritten = pagesWritten.load(ordering: .relaxed)
        return s
    }
}

/// A FarMem memory server over TCP: a listener thread and one thread per
/// connection, all sharing one page pool. Used by `farmemd` and embedded by
/// `farmem demo`.
public final class MemoryServer: Sendable {
    private let context: ServerContext
    private let listener: TCPSocket
    private let acceptThread = Mutex<PosixThread?>(nil)
    /// Open connections by a number of their own (not the fd, which the kernel
    /// reuses as soon as it is closed).
    private let liveSockets = Mutex<(next: Int, sockets: [Int: TCPSocket])>((0, [:]))
    private let metricsEndpoint: MetricsEndpoint?

    /// The port actually bound (useful with port 0).
    public let port: UInt16

    public struct StartError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(configuration: ServerConfiguration, logger: Logger = Logger(label: "farmemd")) throws {
        let pages = configuration.capacityBytes / ProtocolLimits.pageSize
        guard pages >= 1 else { throw StartError(description: "capacity must be at least one page (4096 bytes)") }
        do {
            listener = try TCPSocket.listen(on: configuration.listen)
        } catch {
            throw StartError(description: "cannot listen on \(configuration.listen): \(error)")
        }
        port = listener.localPort
        var rdma: RDMAService?
        if configuration.transport != .tcp {
            do {
                rdma = try RDMAService(host: configuration.listen.host, port: configuration.rdmaPort ?? port, logger: logger)
            } catch {
                if configuration.transport == .rdma {
                    listener.close()
                    throw StartError(description: "RDMA requested but unavailable on \(configuration.listen.host): \(error)")
                }
                logger.info("RDMA unavailable on \(configuration.listen.host) (\(error)); serving TCP only")
            }
        }
        let context = ServerContext(configuration: configuration, ledger: CapacityLedger(capacityPages: pages), logger: logger, rdma: rdma)
        self.context = context
        if let metricsListen = configuration.metricsListen {
            do {
                let exporter = MetricsExporter(context: context, metrics: context.metrics)
                metricsEndpoint = try MetricsEndpoint(listen: metricsListen) { exporter.render() }
            } catch {
                listener.close()
                rdma?.stop()
                throw StartError(description: "cannot serve metrics on \(metricsListen): \(error)")
            }
        } else {
            metricsEndpoint = nil
        }
    }

    /// The port `/metrics` is served on, when it is.
    public var metricsPort: UInt16? { metricsEndpoint?.port }

    /// The RDMA-CM port, when RDMA is served.
    public var rdmaPort: UInt16? { context.rdma?.port }

    /// Starts accepting connections on a background thread.
    public func start() {
        let thread = PosixThread.spawn(name: "farmemd-accept") { [self] in acceptLoop() }
        acceptThread.withLock { $0 = thread }
        let context = self.context
        context.rdma?.start()
        metricsEndpoint?.start()
        if let metricsEndpoint, let listen = context.configuration.metricsListen {
            context.logger.info("serving metrics on http://\(listen.host):\(metricsEndpoint.port)/metrics")
        }
        if let rdma = context.rdma { context.logger.info("serving RDMA on \(context.configuration.listen.host):\(rdma.port)") }
        context.logger.info("serving on \(context.configuration.listen.host):\(port), capacity \(context.ledger.capacityPages) pages")
    }

    private func acceptLoop() {
        while !context.stopping.load(ordering: .relaxed) {
            let socket: TCPSocket
            do { socket = try listener.accept() } catch {
                if context.stopping.load(ordering: .relaxed) { return }
                context.logger.warning("accept failed: \(error)")
                continue
            }
            if context.connections.load(ordering: .relaxed) >= context.configuration.maxConnections {
                context.logger.warning("refusing connection: \(context.configuration.maxConnections) connections already open")
                context.metrics.connectionsRefused.add()
                socket.close()
                continue
            }
            try? socket.setTimeouts(seconds: context.configuration.frameTimeoutSeconds)
            // A client host that dies silently is noticed in about a minute, and its session freed.
            try? socket.setKeepAlive(idleSeconds: 30, intervalSeconds: 10, probes: 3)
            context.connections.add(1, ordering: .relaxed)
            context.metrics.connectionsAccepted.add()
            let key = liveSockets.withLock { live -> Int in
                live.next += 1
                live.sockets[live.next] = socket
                return live.next
            }
            let connection = ServerConnection(socket: socket, context: context, peer: "connection \(key)")
            // Detached: nobody joins it (stop() waits for the connection count instead).
            PosixThread.spawnDetached(name: "farmemd-conn") { [self, context] in
                connection.run()
                // Out of the table before the fd is closed, so stop() never shuts down a reused fd.
                liveSockets.withLock { _ = $0.sockets.removeValue(forKey: key) }
                socket.close()
                context.connections.subtract(1, ordering: .relaxed)
            }
        }
    }

    public var stats: ServerStats { context.stats() }

    public struct NoKeysFile: Error, CustomStringConvertible {
        public var description: String { "this server was started without a keys file" }
    }

    /// Takes a new keys file (SIGHUP): sessions stay; see `TenantDirectory.reload`.
    /// Returns a line for the log.
    @discardableResult
    public func reloadKeys(_ keys: TenantKeys) throws(NoKeysFile) -> String {
        guard let tenants = context.tenants else { throw NoKeysFile() }
        let change = tenants.reload(keys)
        func list(_ names: [String]) -> String { names.isEmpty ? "none" : names.joined(separator: ", ") }
        return "keys reloaded: \(keys.keys.count) tenants; added \(list(change.added)), removed \(list(change.removed))"
    }

    /// Stops accepting, disconnects every client and frees their sessions.
    public func stop() {
        guard !context.stopping.exchange(true, ordering: .relaxed) else { return }
        listener.shutdown()
        listener.close()
        acceptThread.withLock { $0 }?.join()
        metricsEndpoint?.stop()
        liveSockets.withLock { live in for socket in live.sockets.values { socket.shutdown() } }
        // Connection threads exit on their own once their sockets are shut down;
        // the last one of each session frees its regions and RDMA resources.
        for _ in 0..<200 where context.connections.load(ordering: .relaxed) > 0 {
            sleepSeconds(0.01)
        }
        // RDMA last: its listener keeps the device open while the sessions above
        // release their registrations and protection domains on it.
        context.rdma?.stop()
    }
}

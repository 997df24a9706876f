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
    /// Numbers connections for the log ("connection 12").
    let connectionNumbers = Atomic<Int>(0)
    let connectionsClosed = Atomic<Int>(0)
    let pagesRead = Atomic<UInt64>(0)
    let pagesWritten = Atomic<UInt64>(0)
    let metrics = ServerMetrics()
    let bufferGauges = BufferGauges()
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

/// A FarMem memory server over TCP: a few event loops (about one per core)
/// accepting from one listener and serving every connection, all sharing one
/// page pool. Used by `farmemd` and embedded by `farmem demo`.
public final class MemoryServer: Sendable {
    private let context: ServerContext
    private let listener: TCPSocket
    private let loops: [EventLoop]
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
        do { try listener.setNonBlocking() } catch {
            listener.close()
            throw StartError(description: "cannot make the listener non-blocking: \(error)")
        }
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
        let listener = self.listener
        let loopCount = configuration.resolvedEventLoops
        let buffersPerLoop = max(configuration.bufferMemoryBytes / FrameBufferPool.bufferLength / loopCount, 1)
        context.bufferGauges.limit.store(buffersPerLoop * loopCount, ordering: .relaxed)
        do {
            loops = try (0..<loopCount).map { index throws(Errno) in
                try EventLoop(context: context, listener: listener, name: "farmemd-loop\(index)", bufferLimit: buffersPerLoop)
            }
        } catch {
            listener.close()
            rdma?.stop()
            metricsEndpoint?.stop()
            throw StartError(description: "cannot start the event loops: \(error)")
        }
    }

    /// The port `/metrics` is served on, when it is.
    public var metricsPort: UInt16? { metricsEndpoint?.port }

    /// The RDMA-CM port, when RDMA is served.
    public var rdmaPort: UInt16? { context.rdma?.port }

    /// Starts accepting and serving connections on the event loops' threads.
    public func start() {
        for loop in loops { loop.start() }
        let context = self.context
        context.rdma?.start()
        metricsEndpoint?.start()
        if let metricsEndpoint, let listen = context.configuration.metricsListen {
            context.logger.info("serving metrics on http://\(listen.host):\(metricsEndpoint.port)/metrics")
        }
        if let rdma = context.rdma { context.logger.info("serving RDMA on \(context.configuration.listen.host):\(rdma.port)") }
        context.logger.info("serving on \(context.configuration.listen.host):\(port), capacity \(context.ledger.capacityPages) pages, \(loops.count) event loops")
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
        // Each loop closes its connections as it ends; the last connection of
        // each session frees its regions and RDMA resources.
        for loop in loops { loop.stop() }
        listener.close()
        metricsEndpoint?.stop()
        // RDMA last: its listener keeps the device open while the sessions above
        // release their registrations and protection domains on it.
        context.rdma?.stop()
    }
}

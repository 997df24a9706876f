import Dispatch
import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// Far memory for one process: regions whose pages live on a FarMem memory
/// server and come back on demand, with at most `budgetBytes` of them resident.
///
///     let memory = try FarMemory(configuration: .init(server: endpoint, budgetBytes: 64 << 20))
///     let region = try memory.allocate(bytes: 1 << 30)
///     region.baseAddress.storeBytes(of: 42, as: UInt64.self)   // ordinary memory
///     try region.close()
///     memory.close()
///
/// Threads: one fault handler (owns all page state; no lock on the fault
/// path) and one evictor (write-back and discards), each with its own
/// connection; a third connection carries control requests.
public final class FarMemory: @unchecked Sendable {
    public let configuration: FarMemoryConfiguration
    private let uffd: Userfaultfd
    private let control: Mutex<ServerLinkBox>
    private let staging: StagingArea
    private let handler: FaultHandler
    private let evictor: Evictor
    private let handlerThread: PosixThread
    private let evictorThread: PosixThread
    private let counters: PagerCounters
    private let logger: Logger
    private let sessionKey: [UInt8]
    /// Whether the pager threads' data path is RDMA (regions are then exposed for one-sided access).
    public let usesRDMA: Bool
    private struct Book {
        var nextRegionSlot = 0
        var nextRegionID: UInt64 = 1
        var open: [UInt64: RegionRecord] = [:]
        var closed = false
    }
    private let book = Mutex(Book())

    /// Userfaultfd features FarMem needs, and the kernel that brought each.
    static let requiredFeatures: [(Userfaultfd.Features, String)] = [
        (.eventRemap, "EVENT_REMAP"), (.eventRemove, "EVENT_REMOVE"), (.eventUnmap, "EVENT_UNMAP"),
        (.move, "MOVE (Linux 6.8)"), (.poison, "POISON (Linux 6.6)"),
    ]

    /// Connects the fault and write-back links over RDMA. Returns nil on
    /// success, or why RDMA is not used.
    private static func attachRDMA(configuration: FarMemoryConfiguration, control: ServerLink,
                                   links: [ServerLink], logger: Logger) -> String? {
        guard configuration.transport != .tcp else { return "TCP was asked for" }
        guard RDMAChannel.deviceCount > 0 else { return "no RDMA device on this host" }
        let attach: RDMAAttachReply
        do {
            let reply = try control.exchange(.rdmaAttach, [])
            attach = try reply.withUnsafeBytes { try RDMAAttachReply.decode($0) }
        } catch {
            return "the server does not serve RDMA (\(error))"
        }
        do {
            for link in links {
                link.attach(try RDMAChannel(host: configuration.server.host, port: attach.port, ticket: attach.ticket,
                                            capacityPages: ProtocolLimits.maxBatchPages,
                                            timeoutSeconds: configuration.requestTimeoutSeconds))
            }
        } catch {
            return error.description
        }
        return nil
    }

    public init(configuration: FarMemoryConfiguration, logger: Logger = Logger(label: "farmemory")) throws(FarMemoryError) {
        guard configuration.budgetBytes >= 64 * 4096 else {
            throw .invalidArgument("budget of \(configuration.budgetBytes) bytes; at least 256 KiB (64 pages) is needed")
        }
        self.configuration = configuration
        self.logger = logger
        counters = PagerCounters()

        let supported: Userfaultfd.Features
        do {
            uffd = try Userfaultfd.open()
            supported = try Userfaultfd.supportedFeatures()
        } catch {
            throw .userfaultfdUnavailable(Userfaultfd.explain(error))
        }
        let missing = Self.requiredFeatures.filter { !supported.contains($0.0) }.map(\.1)
        guard missing.isEmpty else {
            uffd.close()
            throw .kernelTooOld("this kernel's userfaultfd lacks \(missing.joined(separator: ", ")); FarMem needs Linux >= 6.8")
        }
        do {
            try uffd.enable([.eventRemap, .eventRemove, .eventUnmap, .move, .poison, .pagefaultFlagWP, .threadID])
        } catch {
            uffd.close()
            throw .system("UFFDIO_API", error)
        }

        var generator = SystemRandomNumberGenerator()
        sessionKey = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let controlLink = ServerLink(configuration: configuration, sessionKey: sessionKey, counters: counters)
        let faultLink = ServerLink(configuration: configuration, sessionKey: sessionKey, counters: counters)
        let writeLink = ServerLink(configuration: configuration, sessionKey: sessionKey, counters: counters)
        do {
            for link in [controlLink, faultLink, writeLink] { try link.connect() }
        } catch {
            uffd.close()
            switch error {
            case .network(let text): throw .serverUnreachable(text)
            case .refused(let refusal): throw .serverRefused(refusal)
            }
        }
        control = Mutex(ServerLinkBox(link: controlLink))
        let rdmaReason = Self.attachRDMA(configuration: configuration, control: controlLink,
                                         links: [faultLink, writeLink], logger: logger)
        usesRDMA = rdmaReason == nil
        if let rdmaReason {
            if configuration.transport == .rdma {
                uffd.close()
                throw .transportUnavailable("RDMA was required but is unavailable: \(rdmaReason)")
            }
            if configuration.transport == .auto { logger.info("using TCP: \(rdmaReason)") }
        } else {
            logger.info("using RDMA to \(configuration.server)")
        }
        for link in [faultLink, writeLink] {
            link.onRDMAFailure = { [logger] reason in logger.error("\(reason); this connection falls back to TCP") }
        }

        let budget = configuration.budgetPages
        let stagingSlots = min(max(budget / 4, 32), 1024)
        let batchSize = max(1, min(configuration.evictionBatchPages, stagingSlots / 2))
        do {
            staging = try StagingArea(slots: stagingSlots, uffd: uffd)
            handler = try FaultHandler(uffd: uffd, link: faultLink, staging: staging, counters: counters,
                                       configuration: configuration, logger: logger, batchSize: batchSize)
        } catch {
            uffd.close()
            throw .system("setting up the staging area", error)
        }
        let handler = self.handler
        evictor = Evictor(link: writeLink, staging: staging, counters: counters, configuration: configuration,
                          logger: logger) { batch, released in handler.evictionCompleted(batch, released: released) }
        handler.evictor = evictor
        handlerThread = PosixThread.spawn(name: "farmem-fault") { handler.run() }
        let evictor = self.evictor
        evictorThread = PosixThread.spawn(name: "farmem-evict") { evictor.run() }
    }

    /// Allocates a far region of at least `bytes` (rounded up to whole pages),
    /// page aligned, reading as zeros. The server reserves its full size now,
    /// so a full server fails here, never later at a fault.
    public func allocate(bytes: Int) throws(FarMemoryError) -> FarRegion {
        guard bytes > 0 else { throw .invalidArgument("region size must be positive, got \(bytes)") }
        let pages = (bytes + 4095) / 4096
        let length = pages * 4096
        let (slot, id): (Int, UInt64) = try book.withLock { book throws(FarMemoryError) in
            guard !book.closed else { throw .closed }
            defer { book.nextRegionSlot += 1; book.nextRegionID += 1 }
            return (book.nextRegionSlot, book.nextRegionID)
        }
        _ = try withControl { link throws(ServerLink.LinkError) in
            try link.exchange(.createRegion, RegionSpec(regionID: id, pageCount: UInt64(pages)).encode())
        }
        let base: UInt
        do {
            base = try MemoryMapping.anonymous(length: length, noReserve: true)
            // 4 KiB pages only (UFFDIO_COPY installs small pages), and never
            // inherited by a child: see README, "fork".
            try MemoryMapping.advise(base, length: length, .noHugePage)
            try MemoryMapping.advise(base, length: length, .dontFork)
        } catch {
            _ = try? withControl { link throws(ServerLink.LinkError) in try link.exchange(.dropRegion, RegionRef(regionID: id).encode()) }
            throw .system("mapping a \(length)-byte region", error)
        }
        do {
            try uffd.register(base, length: length, mode: [.missing, .writeProtect])
        } catch {
            MemoryMapping.unmap(base, length: length)
            _ = try? withControl { link throws(ServerLink.LinkError) in try link.exchange(.dropRegion, RegionRef(regionID: id).encode()) }
            throw .system("registering the region with userfaultfd", error)
        }
        var remote: RemoteRegion?
        if usesRDMA {
            do {
                let reply = try withControl { link throws(ServerLink.LinkError) in
                    try link.exchange(.rdmaExpose, RegionRef(regionID: id).encode())
                }
                let exposed = try reply.withUnsafeBytes { try RDMAExposeReply.decode($0) }
                remote = RemoteRegion(address: exposed.address, rkey: exposed.rkey, length: exposed.length)
            } catch {
                logger.error("region \(id) is not exposed for RDMA (\(error)); its pages move over TCP")
            }
        }
        let record = RegionRecord(serverID: id, pageCount: pages, slot: slot, base: base, remote: remote)
        let added = DispatchSemaphore(value: 0)
        handler.send(.add(record, added))
        added.wait()
        book.withLock { _ = $0.open[id] = record }
        return FarRegion(memory: self, record: record, length: length)
    }

    func close(_ record: RegionRecord) {
        guard book.withLock({ $0.open.removeValue(forKey: record.serverID) }) != nil else { return }
        let done = DispatchSemaphore(value: 0)
        let extents = Mutex<[Extent]>([])
        handler.send(.remove(record) { remaining in
            extents.withLock { $0 = remaining }
            done.signal()
        })
        done.wait()
        // Unregistered first, so this munmap sends no event and waits for no one.
        for extent in extents.withLock({ $0 }) {
            MemoryMapping.unmap(extent.start, length: extent.pageCount * 4096)
        }
        _ = try? withControl { link throws(ServerLink.LinkError) in
            try link.exchange(.dropRegion, RegionRef(regionID: record.serverID).encode())
        }
    }

    /// What the pager has done so far.
    public var statistics: PagerStatistics { PagerStatistics(counters) }

    /// Resets the fault-service histogram (between phases of a measurement).
    public func resetLatencyHistogram() { counters.faultService.reset() }

    /// The memory server's figures, and this client's share of them.
    public func serverStatistics() throws(FarMemoryError) -> ServerStats {
        let reply = try withControl { link throws(ServerLink.LinkError) in try link.exchange(.stats, []) }
        do { return try reply.withUnsafeBytes { try ServerStats.decode($0) } } catch {
            throw .serverRefused(error as? ProtocolError ?? ProtocolError(.internalError, "\(error)"))
        }
    }

    /// Closes every region, stops the pager threads and disconnects; the
    /// server then frees this client's pages. Idempotent.
    public func close() {
        let open: [RegionRecord]? = book.withLock { book in
            guard !book.closed else { return nil }
            book.closed = true
            return Array(book.open.values)
        }
        guard let open else { return }
        for record in open { close(record) }
        // The evictor first: its staging madvise needs the handler to read events.
        evictor.submit(.stop)
        evictorThread.join()
        handler.send(.stop)
        handlerThread.join()
        staging.unmap(uffd: uffd)
        uffd.close()
        control.withLock { $0.link.close() }
    }

    deinit { close() }

    private func withControl<T>(_ body: (ServerLink) throws(ServerLink.LinkError) -> T) throws(FarMemoryError) -> T {
        do {
            return try control.withLock { box throws(ServerLink.LinkError) in try body(box.link) }
        } catch {
            switch error {
            case .network(let text): throw .serverUnreachable(text)
            case .refused(let refusal): throw .serverRefused(refusal)
            }
        }
    }
}

/// Holds the control link inside a Mutex (a class, so the lock protects it).
struct ServerLinkBox: @unchecked Sendable {
    let link: ServerLink
}

/// A far-memory region: ordinary memory to the application, paged by FarMemory.
public final class FarRegion: @unchecked Sendable {
    private let memory: FarMemory
    private let record: RegionRecord
    /// Bytes, a multiple of the page size.
    public let length: Int

    init(memory: FarMemory, record: RegionRecord, length: Int) {
        self.memory = memory
        self.record = record
        self.length = length
    }

    /// Where the region starts now. It follows mremap (nil once page 0 was unmapped).
    public var baseAddress: UnsafeMutableRawPointer? {
        UnsafeMutableRawPointer(bitPattern: record.currentBase.load(ordering: .acquiring))
    }

    /// Unmaps the region and frees its pages on the server.
    public func close() { memory.close(record) }

    public var pageCount: Int { record.pageCount }
}

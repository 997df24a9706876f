#if canImport(Glibc)
import Glibc
#endif
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
/// Threads: a fault handler (owns all page state; no lock on the fault path)
/// and an evictor (write-back and discards) per shard, each with its own
/// connection to each server (see `PagerShard`); one more connection per
/// server carries control requests. With several servers every page has
/// copies on `configuration.replicas` of them (`ReplicatedPageStore`).
public final class FarMemory: @unchecked Sendable {
    public let configuration: FarMemoryConfiguration
    /// The process that made it (a forked child's copy does nothing on close).
    private let creator = getpid()
    /// Region set-up and statistics, serialized.
    private let control: Mutex<ControlStoreBox>
    /// Which servers are still in use (all but those marked down).
    private let membership: ClusterMembership
    /// A cluster's: copies lost extents to the servers the hash now picks.
    private var repair: RepairWorker?
    let shards: [PagerShard]
    /// Fault service time, one histogram shared by every shard.
    private let histogram: LatencyHistogram
    let logger: Logger
    private let sessionKey: [UInt8]
    /// Whether the pager threads' data path is RDMA (regions are then exposed for one-sided access).
    public let usesRDMA: Bool
    /// `/metrics` (`FarMemoryConfiguration.metricsListen`), set once at the end of init.
    private var metricsEndpoint: MetricsEndpoint?
    /// The port the statistics are served on, when they are.
    public var metricsPort: UInt16? { metricsEndpoint?.port }
    struct Book {
        var nextRegionSlot = 0
        var nextRegionID: UInt64 = 1
        /// By the id of each region's first part.
        var open: [UInt64: [RegionPart]] = [:]
        var closed = false
    }
    let book = Mutex(Book())
    /// Serializes allocate, grow and FarMemory.close, so a region is never
    /// half set up with stopped shards.
    let lifecycle = Lock()

    /// Userfaultfd features FarMem needs, and the kernel that brought each.
    static let requiredFeatures: [(Userfaultfd.Features, String)] = [
        (.eventRemap, "EVENT_REMAP"), (.eventRemove, "EVENT_REMOVE"), (.eventUnmap, "EVENT_UNMAP"),
        (.move, "MOVE (Linux 6.8)"), (.poison, "POISON (Linux 6.6)"),
    ]

    public init(configuration: FarMemoryConfiguration, logger: Logger = Logger(label: "farmemory")) throws(FarMemoryError) {
        guard configuration.budgetBytes >= 64 * 4096 else {
            throw .invalidArgument("budget of \(configuration.budgetBytes) bytes; at least 256 KiB (64 pages) is needed")
        }
        self.configuration = configuration
        self.logger = logger
        let shardCount = configuration.handlerThreads
        guard configuration.budgetPages / shardCount >= 64 else {
            throw .invalidArgument("each of \(shardCount) handler threads needs at least 64 pages of budget")
        }
        let supported: Userfaultfd.Features
        do {
            supported = try Userfaultfd.supportedFeatures()
        } catch {
            throw .userfaultfdUnavailable(Userfaultfd.explain(error))
        }
        let missing = Self.requiredFeatures.filter { !supported.contains($0.0) }.map(\.1)
        guard missing.isEmpty else {
            throw .kernelTooOld("this kernel's userfaultfd lacks \(missing.joined(separator: ", ")); FarMem needs Linux >= 6.8")
        }

        var generator = SystemRandomNumberGenerator()
        let key = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        sessionKey = key
        let histogram = LatencyHistogram()
        self.histogram = histogram
        // Each shard's links count into the shard's counters (page traffic only).
        let shardCounters = (0..<shardCount).map { _ in PagerCounters(faultService: histogram) }
        let servers = configuration.servers
        guard !servers.isEmpty, servers.count <= 64 else {
            throw .invalidArgument("1 to 64 memory servers are needed, got \(servers.count)")
        }
        guard Set(servers.map(\.description)).count == servers.count else {
            throw .invalidArgument("a memory server is listed twice: \(servers.map(\.description).joined(separator: ","))")
        }
        let membership = ClusterMembership(servers: servers, sessionKey: key, logger: logger)
        self.membership = membership
        let connections = servers.enumerated().map { member, endpoint in
            ServerConnections(endpoint: endpoint, member: member, configuration: configuration, sessionKey: key,
                              shardCounters: shardCounters, logger: logger)
        }
        // One server: it must answer. Several: those that do not are down from
        // the start (their share is placed on the others); at least one must answer.
        var firstFailure: FarMemoryError?
        for server in connections {
            do { try server.connect() } catch {
                if servers.count == 1 { throw error }
                firstFailure = firstFailure ?? error
                server.close()
                membership.markDown(server.member, reason: "unreachable at start: \(error)")
            }
        }
        if membership.live == 0, let firstFailure { throw firstFailure }
        var rdmaReasons: [String] = []
        for server in connections where membership.isUp(server.member) {
            if let reason = server.attachRDMA(configuration: configuration) { rdmaReasons.append(servers.count == 1 ? reason : "\(server.endpoint): \(reason)") }
        }
        usesRDMA = rdmaReasons.isEmpty
        if !rdmaReasons.isEmpty {
            let reason = rdmaReasons.joined(separator: "; ")
            if configuration.transport == .rdma {
                throw .transportUnavailable("RDMA was required but is unavailable: \(reason)")
            }
            if configuration.transport == .auto { logger.info("using TCP: \(reason)") }
        } else {
            logger.info("using RDMA to \(servers.map(\.description).joined(separator: ", "))")
        }
        // Alone, a server's store retries for the retry window; in a cluster the
        // other copies are the retry, so each server gets one attempt.
        let placement = Placement(servers: servers.map(\.description), replicas: configuration.replicas)
        let attemptWindow = servers.count == 1 ? configuration.retryWindowSeconds : 0
        let pageTimeout = servers.count > 1 ? configuration.failoverTimeoutSeconds : configuration.requestTimeoutSeconds
        /// A store for a rejoined server's new session (see ClusterMembership):
        /// over RDMA when the cluster uses it (its own queue pair), exposing the
        /// regions it creates there if `exposes`.
        let overRDMA = rdmaReasons.isEmpty
        func rejoinedMember(counters: PagerCounters, timeout: Double, exposes: Bool) -> MemberStores.Make {
            { server, key, incarnation in
                let link = ServerLink(endpoint: servers[server], configuration: configuration, sessionKey: key,
                                      counters: counters, timeoutSeconds: timeout)
                if overRDMA {
                    link.onRDMAFailure = { [logger] reason in logger.error("\(reason) (\(servers[server])); this connection falls back to TCP") }
                    // Set up on the thread that first needs it (a fault, a write-back):
                    // the page time-out bounds each step, not the request time-out.
                    if let why = ServerLink.attachRDMA([link], ticketFrom: link, configuration: configuration,
                                                       connectTimeoutSeconds: pageTimeout, transferTimeoutSeconds: pageTimeout) {
                        logger.error("memory server \(servers[server]) rejoined, and this connection to it uses TCP: \(why)")
                    }
                }
                // Exposing needs an RDMA connection of the session, this one's or
                // any pager thread's: tried whenever the cluster uses RDMA.
                return ServerPageStore(link: link, member: server, incarnation: incarnation, retryWindowSeconds: attemptWindow,
                                       exposesForRDMA: exposes && overRDMA,
                                       onExposeFailure: { [logger] id, why in
                                           logger.error("region \(id) is not exposed for RDMA on \(servers[server]) (\(why)); its pages move over TCP")
                                       })
            }
        }
        func store(_ link: (ServerConnections) -> ServerLink, counters: PagerCounters, timeout: Double, exposes: Bool = false) -> PageStore {
            let members = connections.map { server in
                ServerPageStore(link: link(server), member: server.member, retryWindowSeconds: attemptWindow,
                                exposesForRDMA: exposes && server.usesRDMA,
                                onExposeFailure: { [logger] id, why in logger.error("region \(id) is not exposed for RDMA on \(server.endpoint) (\(why)); its pages move over TCP") })
            }
            return members.count == 1 ? members[0]
                : ReplicatedPageStore(members: members, membership: membership, placement: placement,
                                      makeMember: rejoinedMember(counters: counters, timeout: timeout, exposes: exposes))
        }
        control = Mutex(ControlStoreBox(store: store(\.control, counters: PagerCounters(), timeout: configuration.requestTimeoutSeconds,
                                                     exposes: true), connections: connections))
        var started: [PagerShard] = []
        do {
            for index in 0..<shardCount {
                started.append(try PagerShard(index: index, budgetPages: configuration.budgetPages / shardCount,
                                              configuration: configuration,
                                              faultStore: store({ $0.faultLinks[index] }, counters: shardCounters[index], timeout: pageTimeout),
                                              writeStore: store({ $0.writeLinks[index] }, counters: shardCounters[index], timeout: pageTimeout),
                                              counters: shardCounters[index], logger: logger))
            }
        } catch {
            for shard in started { shard.stop() }
            throw error
        }
        shards = started
        if servers.count > 1 {
            let members = connections.map { ServerPageStore(link: $0.repairLink, member: $0.member, retryWindowSeconds: 0) }
            let worker = RepairWorker(members: members, membership: membership, placement: placement, logger: logger,
                                      drainSeconds: pageTimeout + 0.5,
                                      makeMember: rejoinedMember(counters: PagerCounters(), timeout: pageTimeout, exposes: true),
                                      makeProbe: { server, key in
                                          ServerPageStore(link: ServerLink(endpoint: servers[server], configuration: configuration, sessionKey: key,
                                                                           counters: PagerCounters(), timeoutSeconds: pageTimeout),
                                                          member: server, retryWindowSeconds: 0)
                                      }) {
                [weak self] in self?.openStoreRegions() ?? []
            }
            worker.start()
            repair = worker
        }
        if let listen = configuration.metricsListen {
            do {
                let endpoint = try MetricsEndpoint(listen: listen) { [weak self] in self?.metricsText() ?? "" }
                endpoint.start()
                metricsEndpoint = endpoint
            } catch {
                throw .invalidArgument("cannot serve metrics on \(listen): \(error)")   // deinit closes what was started
            }
        }
    }

    /// The statistics in the Prometheus text format (what `/metrics` serves).
    public func metricsText() -> String {
        PagerMetrics.render(statistics, budgetBytes: configuration.budgetBytes, faultService: histogram)
    }

    private func openStoreRegions() -> [StoreRegion] {
        book.withLock { book in book.open.values.flatMap { $0.map(\.store) } }
    }

    /// Whether memfd and hugetlb regions stay mapped in forked children
    /// (`FarMemoryConfiguration.followsForks`, and the kernel let us).
    public var followsForks: Bool { shards.allSatisfy(\.followsForks) }

    /// Allocates a far region of at least `bytes` (rounded up to whole pages),
    /// page aligned, reading as zeros. The servers reserve room for it now
    /// (one server: all of it; a cluster: each its share of the copies), so a
    /// full server or cluster fails here, never later at a fault.
    /// `kind` picks what backs its pages locally (`RegionKind`).
    public func allocate(bytes: Int, kind: RegionKind = .anonymous) throws(FarMemoryError) -> FarRegion {
        // Serialized with close(): a region is either seen and closed by it, or
        // refused because close() came first; never half-registered with stopped shards.
        try lifecycle.withLock { () throws(FarMemoryError) -> FarRegion in try allocateLocked(bytes: bytes, kind: kind) }
    }

    private func allocateLocked(bytes: Int, kind: RegionKind) throws(FarMemoryError) -> FarRegion {
        guard bytes > 0 else { throw .invalidArgument("region size must be positive, got \(bytes)") }
        let unitPages = kind.pageBytes / 4096
        let pages = (bytes + kind.pageBytes - 1) / kind.pageBytes * unitPages
        // Eviction-queue entries carry the page number in 32 bits.
        guard pages <= Int(UInt32.max) else { throw .invalidArgument("a region is at most 16 TiB, got \(bytes) bytes") }
        if kind == .memfd, !shards.allSatisfy(\.servesSharedMemory) {
            throw .kernelTooOld("memfd regions need userfaultfd's minor faults and write-protect on shared memory (Linux 5.19)")
        }
        if kind == .memfd, SharedMemoryFile.hugePagesForced {
            throw .invalidArgument("memfd regions need 4 KiB pages, but /sys/kernel/mm/transparent_hugepage/shmem_enabled is \"force\"")
        }
        if kind == .hugetlb { try checkHugePages(regionPages: pages) }
        let part = try makePart(pages: pages, mappedAt: nil, kind: kind)
        book.withLock { _ = $0.open[part.store.id] = [part] }
        return FarRegion(memory: self, id: part.store.id, head: part.records[0].record, pageCount: pages, kind: kind)
    }

    /// hugetlb regions: the kernel can serve them, each shard's budget holds
    /// a few huge pages, and the pool has the huge pages the budget may hold
    /// (checked now; a fault that finds none later raises SIGBUS, logged).
    private func checkHugePages(regionPages pages: Int) throws(FarMemoryError) {
        guard shards.allSatisfy(\.servesHugePages) else {
            throw .kernelTooOld("hugetlb regions need userfaultfd's minor faults on hugetlbfs and write-protect on shared memory (Linux 5.19)")
        }
        let shardBudget = configuration.budgetPages / shards.count
        guard shardBudget >= 4 * 512 else {
            throw .invalidArgument("hugetlb regions need a budget of at least \(shards.count * 8) MiB (4 huge pages per handler thread), got \(configuration.budgetPages / 256) MiB")
        }
        // The budget's worth, plus one huge page per shard over it and one in flight.
        let needed = min(pages / 512, shardBudget / 512 * shards.count + 2 * shards.count)
        let free = SharedMemoryFile.freeHugePages ?? 0
        guard free >= needed else {
            throw .hugePagesUnavailable("a hugetlb region needs \(needed) free 2 MiB huge pages for its budget, and the pool has \(free) free: reserve more (as root: sysctl vm.nr_hugepages=N, N at least \(needed) more than other users of huge pages need)")
        }
    }

    /// A store region of `pages` pages, mapped (at `mappedAt`, where the
    /// caller mapped them, or anywhere), registered with every shard's
    /// userfaultfd and known to its handler. Undone wholly if a step fails.
    func makePart(pages: Int, mappedAt: UInt?, kind: RegionKind = .anonymous) throws(FarMemoryError) -> RegionPart {
        let length = pages * 4096
        let storeRegion: StoreRegion
        let slot: Int
        do throws(FarMemoryError) {
            let id: UInt64
            (slot, id) = try book.withLock { book throws(FarMemoryError) in
                guard !book.closed else { throw .closed }
                defer { book.nextRegionSlot += 1; book.nextRegionID += 1 }
                return (book.nextRegionSlot, book.nextRegionID)
            }
            storeRegion = try withControl { store throws(StoreError) in try store.createRegion(id: id, pageCount: pages) }
        } catch {
            if let mappedAt { MemoryMapping.unmap(mappedAt, length: length) }
            throw error
        }
        let base: UInt
        var shared: SharedBacking?
        if let mappedAt {
            base = mappedAt
        } else {
            do throws(Errno) {
                switch kind {
                case .anonymous:
                    base = try MemoryMapping.anonymous(length: length, noReserve: true)
                case .memfd, .hugetlb:
                    // The application's mapping and the pager's, of one file.
                    let file = try SharedMemoryFile.create(name: "farmem-region-\(storeRegion.id)", length: length,
                                                           hugePages: kind == .hugetlb)
                    do throws(Errno) {
                        base = try file.map()
                        do throws(Errno) {
                            let alias = try file.map()
                            shared = SharedBacking(file: file, alias: alias)
                            // Never inherited either (a child would keep the file's pages
                            // mapped), and 4 KiB pages only, as for the application's mapping.
                            try MemoryMapping.advise(alias, length: length, .dontFork)
                            if kind == .memfd { try MemoryMapping.advise(alias, length: length, .noHugePage) }
                        } catch {
                            if let shared { MemoryMapping.unmap(shared.alias, length: length) }
                            MemoryMapping.unmap(base, length: length)
                            throw error
                        }
                    } catch {
                        file.close()
                        throw error
                    }
                }
            } catch {
                dropOnServer(storeRegion)
                throw .system("mapping a \(length)-byte \(kind) region", error)
            }
        }
        do {
            // 4 KiB pages only (UFFDIO_COPY installs small pages; hugetlb regions
            // have their own). Never inherited by a child, unless it is shared
            // and the handlers follow forks: see README, "fork".
            if kind != .hugetlb { try MemoryMapping.advise(base, length: length, .noHugePage) }
            if shared == nil || !shards.allSatisfy(\.followsForks) { try MemoryMapping.advise(base, length: length, .dontFork) }
        } catch {
            MemoryMapping.unmap(base, length: length)
            shared?.release()
            dropOnServer(storeRegion)
            throw .system("mapping a \(length)-byte region", error)
        }
        // One contiguous chunk per shard (a single chunk with one handler thread).
        // In whole huge pages for a hugetlb region (its units are never split).
        let unit = shared?.pagesPerUnit ?? 1
        let chunkPages = ((pages + shards.count - 1) / shards.count + unit - 1) / unit * unit
        let chunks = (0..<shards.count).map { k in min(k * chunkPages, pages)..<min((k + 1) * chunkPages, pages) }
        // Counted before the registration a fork could copy (`ForkGate`).
        if shared != nil {
            for shard in shards { shard.sharedRegions.add(1, ordering: .sequentiallyConsistent) }
            ForkGate.beforeRegisteringSharedRegion()
        }
        do {
            for (shard, chunk) in zip(shards, chunks) where !chunk.isEmpty {
                try shard.uffd.register(base + UInt(chunk.lowerBound * 4096), length: chunk.count * 4096,
                                        mode: shared == nil ? [.missing, .writeProtect] : [.missing, .minor, .writeProtect])
            }
        } catch {
            MemoryMapping.unmap(base, length: length)
            if let shared {
                shared.release()
                for shard in shards { shard.sharedRegions.subtract(1, ordering: .acquiringAndReleasing) }
            }
            dropOnServer(storeRegion)
            throw .system("registering the region with userfaultfd", error)
        }
        var records: [(shard: Int, record: RegionRecord)] = []
        for (index, chunk) in chunks.enumerated() where !chunk.isEmpty {
            let record = RegionRecord(store: storeRegion, pageCount: pages, slot: slot, base: base, chunk: chunk,
                                      verifiesPages: configuration.verifiesPages, shared: shared)
            shards[index].add(record)
            records.append((index, record))
        }
        return RegionPart(store: storeRegion, pageCount: pages, records: records)
    }

    func close(regionID id: UInt64) {
        guard let parts = book.withLock({ $0.open.removeValue(forKey: id) }) else { return }
        closeParts(parts)
    }

    /// Unregisters, unmaps and frees on the servers parts not in the book.
    func closeParts(_ parts: [RegionPart]) {
        for part in parts {
            for (shard, record) in part.records {
                // Unregistered first, so this munmap sends no event and waits for no one.
                for extent in shards[shard].remove(record) {
                    MemoryMapping.unmap(extent.start, length: extent.pageCount * 4096)
                }
            }
            if let shared = part.shared {
                // Write-backs in flight read the second mapping: they finish first.
                for (shard, _) in part.records { shards[shard].waitForEvictor() }
                shared.release()   // the file's pages go with its last mapping
                for shard in shards { shard.sharedRegions.subtract(1, ordering: .acquiringAndReleasing) }
            }
            dropOnServer(part.store)
        }
    }

    /// Frees a region on the server. Best effort: if the server cannot be
    /// reached, the session's end frees it anyway.
    func dropOnServer(_ region: StoreRegion) {
        control.withLock { $0.store.dropRegion(region) }
    }

    /// What the pager has done so far (all shards together).
    /// Debugging: every shard's record of `configuration.tracedPages` (of one page, or all).
    func pageTrace(page: Int? = nil) -> [String] { shards.flatMap { $0.pageTrace(page: page) } }

    public var statistics: PagerStatistics {
        var statistics = PagerStatistics(shards.map(\.counters), faultService: histogram)
        statistics.servers = UInt64(configuration.servers.count)
        statistics.serversDown = UInt64(membership.downCount)
        statistics.serverRejoins = membership.rejoinCount
        statistics.replicas = UInt64(configuration.replicas)
        if let repair {
            let regions = openStoreRegions()
            statistics.underReplicatedExtents = UInt64(regions.reduce(0) { $0 + repair.underReplicatedExtents(in: $1) })
            statistics.misplacedExtents = UInt64(regions.reduce(0) { $0 + repair.misplacedExtents(in: $1) })
            statistics.pagesRepaired = repair.pagesRepaired.load(ordering: .relaxed)
            statistics.extentsRepaired = repair.extentsRepaired.load(ordering: .relaxed)
            statistics.extentsMoved = repair.extentsMoved.load(ordering: .relaxed)
        }
        return statistics
    }

    /// Resets the fault-service histogram (between phases of a measurement).
    public func resetLatencyHistogram() { histogram.reset() }

    /// The memory server's figures, and this client's share of them.
    public func serverStatistics() throws(FarMemoryError) -> ServerStats {
        try serverStatisticsByServer().reduce(into: ServerStats()) { total, one in total.add(one.stats) }
    }

    /// Each live memory server's figures, and this client's share of them.
    public func serverStatisticsByServer() throws(FarMemoryError) -> [(server: TCPSocket.Endpoint, stats: ServerStats)] {
        // In a cluster through the control store: its links follow a rejoined
        // server's new session, where this client's pages are now.
        let servers = configuration.servers
        let replies: [(TCPSocket.Endpoint, Result<[UInt8], ServerLink.LinkError>)] = control.withLock { box in
            if let cluster = box.store as? ReplicatedPageStore {
                return cluster.statisticsReplies().map { (servers[$0.server], .success($0.reply)) }
            }
            let server = box.connections[0]
            return [(server.endpoint, Result { () throws(ServerLink.LinkError) in try server.control.exchange(.stats, []) })]
        }
        var result: [(server: TCPSocket.Endpoint, stats: ServerStats)] = []
        for (endpoint, reply) in replies {
            // In a cluster, one server not answering leaves the others' figures.
            if replies.count > 1, case .failure = reply { continue }
            switch reply {
            case .success(let bytes):
                do { result.append((endpoint, try bytes.withUnsafeBytes { try ServerStats.decode($0) })) } catch {
                    throw .serverRefused(error as? ProtocolError ?? ProtocolError(.internalError, "\(error)"))
                }
            case .failure(.network(let text)): throw .serverUnreachable("\(endpoint): \(text)")
            case .failure(.refused(let refusal)): throw .serverRefused(refusal)
            }
        }
        return result
    }

    /// Closes every region, stops the pager threads and disconnects; the
    /// server then frees this client's pages. Idempotent.
    public func close() {
        // A forked child has a copy of this object but none of its threads (they
        // are the parent's): waiting for them would hang. The parent closes.
        guard getpid() == creator else { return }
        let open: [UInt64]? = lifecycle.withLock {
            book.withLock { book in
                guard !book.closed else { return nil }
                book.closed = true
                return Array(book.open.keys)
            }
        }
        guard let open else { return }
        metricsEndpoint?.stop()
        repair?.stop()
        for id in open { close(regionID: id) }
        for shard in shards { shard.stop() }
        // Every link, the pager threads' too (they have stopped): each server ends our session.
        control.withLock { box in
            box.store.closeConnections()
            for server in box.connections { server.close() }
        }
    }

    deinit { close() }

    func withControl<T>(_ body: (PageStore) throws(StoreError) -> T) throws(FarMemoryError) -> T {
        do {
            return try control.withLock { box throws(StoreError) in try body(box.store) }
        } catch {
            switch error {
            case .unavailable(let text), .lost(let text): throw .serverUnreachable(text)
            case .refused(let refusal), .regionGone(let refusal): throw .serverRefused(refusal)
            }
        }
    }
}

/// Holds the control store inside a Mutex (a class, so the lock protects it).
struct ControlStoreBox: @unchecked Sendable {
    let store: PageStore
    /// Per server: its control link answers STATS; closed with the instance.
    let connections: [ServerConnections]
}

/// A far-memory region: ordinary memory to the application, paged by FarMemory.
public final class FarRegion: @unchecked Sendable {
    private let memory: FarMemory
    /// The id of its first part: how FarMemory knows it.
    let id: UInt64
    /// The first shard's record of the first part: it holds page 0.
    private let head: RegionRecord
    private let pages: Atomic<Int>

    /// What backs its pages locally.
    public let kind: RegionKind

    init(memory: FarMemory, id: UInt64, head: RegionRecord, pageCount: Int, kind: RegionKind) {
        self.memory = memory
        self.id = id
        self.head = head
        self.kind = kind
        pages = Atomic(pageCount)
    }

    /// Where the region starts now. It follows mremap and `grow` (nil once
    /// page 0 was unmapped).
    public var baseAddress: UnsafeMutableRawPointer? {
        UnsafeMutableRawPointer(bitPattern: head.currentBase.load(ordering: .acquiring))
    }

    /// Unmaps the region and frees its pages on the server.
    public func close() { memory.close(regionID: id) }

    public var pageCount: Int { pages.load(ordering: .acquiring) }

    /// Bytes, a multiple of the page size.
    public var length: Int { pageCount * 4096 }

    /// Grows the region to at least `bytes` (whole pages) without reading a
    /// page: evicted pages stay on the servers, resident ones move with
    /// their page tables (mremap), and the new pages read as zeros. Where
    /// the address space after the region is taken, the region moves
    /// (unless `mayMove` is false: then it throws `.system(_, .outOfMemory)`,
    /// as mremap would) and the new base is returned. Only a region that is
    /// still whole where it was put (not partly unmapped, not split by
    /// mremap) can grow. On an error the region is unchanged, except that
    /// it may have moved: `baseAddress` says where it is.
    /// Must not race with `close` or another `grow` of the same region.
    @discardableResult
    public func grow(to bytes: Int, mayMove: Bool = true) throws(FarMemoryError) -> UnsafeMutableRawPointer {
        guard kind == .anonymous else { throw .invalidArgument("only anonymous regions grow (this one is \(kind))") }
        let newPages = (bytes + 4095) / 4096
        let base = try memory.grow(regionID: id, toPages: newPages, mayMove: mayMove)
        pages.store(max(newPages, pageCount), ordering: .releasing)
        return UnsafeMutableRawPointer(bitPattern: base)!
    }
}

extension ServerStats {
    /// Adds another server's figures (a cluster's totals).
    mutating func add(_ other: ServerStats) {
        capacityPages += other.capacityPages; reservedPages += other.reservedPages; storedPages += other.storedPages
        sessions += other.sessions; connections += other.connections; sessionRegions += other.sessionRegions
        sessionReservedPages += other.sessionReservedPages; sessionStoredPages += other.sessionStoredPages
        pagesRead += other.pagesRead; pagesWritten += other.pagesWritten
    }
}

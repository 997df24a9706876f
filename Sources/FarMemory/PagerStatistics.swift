import CFarMemSys

/// Live counters of one FarMemory instance, bumped by the pager threads with
/// relaxed atomic adds and read by anyone at any time.
final class PagerCounters: @unchecked Sendable {
    enum Counter: Int, CaseIterable {
        case faults, writeProtectFaults, duplicateFaults, fetches, zeroFills, evictions, cleanDrops
        case writeBacks, discards, bytesIn, bytesOut, retries, poisoned, eagain, parkedFaults
        case budgetOvershoot, residentPages, stagedPages, writeBackFailures, rdmaPagesIn, rdmaPagesOut, prefetched, unevictablePages
        case moveRefusals, discardWindowFaults, heldFaultsPeak, rereadsAfterMove, hotRefaults, secondChances
        case zeroReinstalls, verificationFailures, forkedChildren, childFaults, rdmaPagesInPlace
        case probationHits, probationExpired, probationPages, budgetWaits
    }
    private let values: UnsafeMutablePointer<UInt64>
    /// Shared by all shards of one FarMemory (recording is an atomic add).
    let faultService: LatencyHistogram

    init(faultService: LatencyHistogram = LatencyHistogram()) {
        self.faultService = faultService
        values = .allocate(capacity: Counter.allCases.count)
        values.initialize(repeating: 0, count: Counter.allCases.count)
    }
    deinit { values.deallocate() }

    @inline(__always) func add(_ counter: Counter, _ n: UInt64 = 1) { fm_atomic_add_u64(values + counter.rawValue, n) }
    @inline(__always) func set(_ counter: Counter, _ n: UInt64) { fm_atomic_store_u64(values + counter.rawValue, n) }
    func get(_ counter: Counter) -> UInt64 { fm_atomic_load_u64(values + counter.rawValue) }
}

/// A snapshot of what the pager did, from `FarMemory.statistics`.
public struct PagerStatistics: Sendable, CustomStringConvertible {
    /// Missing-page faults received (every userfaultfd page fault that was not a write-protect fault).
    public var faults: UInt64
    /// First writes to clean pages (dirty tracking).
    public var writeProtectFaults: UInt64
    /// Faults for a page that was already there or on its way (several threads, one page).
    public var duplicateFaults: UInt64
    /// Pages read from the memory server.
    public var fetches: UInt64
    /// Pages installed as zeros without a network round trip (never written).
    public var zeroFills: UInt64
    /// Pages moved out of local memory.
    public var evictions: UInt64
    /// Evicted pages that were clean: dropped with no network traffic.
    public var cleanDrops: UInt64
    /// Dirty pages written to the server.
    public var writeBacks: UInt64
    /// Pages whose server copy was discarded (application MADV_DONTNEED/REMOVE, munmap).
    public var discards: UInt64
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    /// Reconnects and repeated requests after network failures.
    public var retries: UInt64
    /// Pages made to raise SIGBUS because their data could not be fetched.
    public var poisoned: UInt64
    /// UFFDIO_COPY/MOVE calls that met a pending non-cooperative event (EAGAIN) and were retried.
    public var eagainRetries: UInt64
    /// Faults held while their page's write-back was in flight.
    public var parkedFaults: UInt64
    /// Largest number of pages resident above the budget (while write-backs drained).
    public var budgetOvershoot: UInt64
    public var residentPages: UInt64
    public var stagedPages: UInt64
    public var writeBackFailures: UInt64
    /// Resident pages the kernel would not let FarMem move (pinned, mlocked,
    /// mprotected differently): kept, outside the budget.
    public var unevictablePages: UInt64
    /// Times the kernel refused to move a page out (pinned, or its area made
    /// different); a page refused twice becomes unevictable until a retry succeeds.
    public var moveRefusals: UInt64
    /// Faults that found their page discarded by the application but not yet
    /// unmapped by the kernel (MADV_DONTNEED racing with them): never adopted,
    /// the thread retried.
    public var discardWindowFaults: UInt64
    /// Most faults held back at once (budget full, or an event pending), per
    /// handler thread: how many threads waited together.
    public var heldFaultsPeak: UInt64
    /// Cluster reads done again because a rebalance moved a copy of their
    /// extent while they were under way (the copy read may have been discarded).
    public var rereadsAfterMove: UInt64
    /// Pages fetched again soon after their eviction (marked hot), and the
    /// times such a page was kept when FIFO order made it a victim.
    public var hotRefaults: UInt64
    public var secondChances: UInt64
    /// Probation area: faults served from it (no network), pages that left it
    /// untouched (their slot taken by a newer victim), pages in it now.
    /// Hit rate: hits / (hits + expired).
    public var probationHits: UInt64 = 0
    public var probationExpired: UInt64 = 0
    public var probationPages: UInt64 = 0
    /// Faults that had to wait for eviction to make room (the budget was
    /// full: write-backs did not keep ahead). 0 when eviction runs ahead.
    public var budgetWaits: UInt64 = 0
    /// Missing faults on pages FarMem believed resident that the kernel had
    /// dropped without telling it (no REMOVE event): installed as zeros.
    /// Expected to stay 0 (MADV_FREE's reclaim would do it).
    public var zeroReinstalls: UInt64
    /// With `verifiesPages`: pages whose data was not what FarMem last had.
    public var verificationFailures: UInt64
    /// Forked child processes served now (they map memfd or hugetlb regions),
    /// and the faults of such children served since the start (also in `faults`).
    public var forkedChildren: UInt64
    public var childFaults: UInt64
    /// Pages fetched ahead of a fault because the access pattern predicted them.
    public var prefetched: UInt64
    /// Pages read and written with one-sided RDMA (the rest went over TCP).
    public var rdmaPagesIn: UInt64
    public var rdmaPagesOut: UInt64
    /// Of `rdmaPagesIn`, pages READ straight into a memfd or hugetlb region's
    /// page cache (no copy out of the connection's buffer).
    public var rdmaPagesInPlace: UInt64
    /// Memory servers configured, and how many of them are marked down (never
    /// used again by this instance).
    public var servers: UInt64 = 1
    public var serversDown: UInt64 = 0
    /// Copies kept of every page.
    public var replicas: UInt64 = 1
    /// Extents (2 MiB) with fewer live copies than `replicas`: a server is
    /// down and the repair has not copied them elsewhere yet.
    public var underReplicatedExtents: UInt64 = 0
    public var underReplicated: Bool { underReplicatedExtents > 0 }
    /// What the repair copied to other servers since the start.
    public var pagesRepaired: UInt64 = 0
    public var extentsRepaired: UInt64 = 0
    /// Times a server marked down answered again and rejoined empty.
    public var serverRejoins: UInt64 = 0
    /// Extents whose copies are all there but not where the hash puts them
    /// (a server rejoined and the rebalance has not moved them back yet).
    public var misplacedExtents: UInt64 = 0
    /// Extents moved back to where the hash puts them (a server rejoined).
    public var extentsMoved: UInt64 = 0
    /// Time the fault handler spent per fault, message read to page installed.
    public var serviceP50Nanoseconds: UInt64
    public var serviceP99Nanoseconds: UInt64

    /// Sums the shards' counters (budget overshoot: the sum of each shard's largest).
    init(_ shards: [PagerCounters], faultService: LatencyHistogram) {
        func sum(_ counter: PagerCounters.Counter) -> UInt64 { shards.reduce(0) { $0 + $1.get(counter) } }
        faults = sum(.faults); writeProtectFaults = sum(.writeProtectFaults)
        duplicateFaults = sum(.duplicateFaults); fetches = sum(.fetches); zeroFills = sum(.zeroFills)
        evictions = sum(.evictions); cleanDrops = sum(.cleanDrops); writeBacks = sum(.writeBacks)
        discards = sum(.discards); bytesIn = sum(.bytesIn); bytesOut = sum(.bytesOut)
        retries = sum(.retries); poisoned = sum(.poisoned); eagainRetries = sum(.eagain)
        parkedFaults = sum(.parkedFaults); budgetOvershoot = sum(.budgetOvershoot)
        residentPages = sum(.residentPages); stagedPages = sum(.stagedPages)
        writeBackFailures = sum(.writeBackFailures)
        unevictablePages = sum(.unevictablePages)
        moveRefusals = sum(.moveRefusals); discardWindowFaults = sum(.discardWindowFaults)
        heldFaultsPeak = shards.map { $0.get(.heldFaultsPeak) }.max() ?? 0
        rereadsAfterMove = sum(.rereadsAfterMove)
        hotRefaults = sum(.hotRefaults); secondChances = sum(.secondChances)
        zeroReinstalls = sum(.zeroReinstalls); verificationFailures = sum(.verificationFailures)
        prefetched = sum(.prefetched)
        probationHits = sum(.probationHits); probationExpired = sum(.probationExpired); probationPages = sum(.probationPages)
        budgetWaits = sum(.budgetWaits)
        // Every shard hears of every fork: the children are the largest shard's count.
        forkedChildren = shards.map { $0.get(.forkedChildren) }.max() ?? 0
        childFaults = sum(.childFaults)
        rdmaPagesIn = sum(.rdmaPagesIn); rdmaPagesOut = sum(.rdmaPagesOut); rdmaPagesInPlace = sum(.rdmaPagesInPlace)
        serviceP50Nanoseconds = faultService.value(atPercentile: 50)
        serviceP99Nanoseconds = faultService.value(atPercentile: 99)
    }

    public var description: String {
        """
        faults \(faults) (write-protect \(writeProtectFaults), duplicate \(duplicateFaults), parked \(parkedFaults)), \
        fetches \(fetches) (prefetched \(prefetched)), zero-fills \(zeroFills), evictions \(evictions) (clean drops \(cleanDrops)), \
        write-backs \(writeBacks), discards \(discards), bytes in \(bytesIn), bytes out \(bytesOut), \
        retries \(retries), EAGAIN \(eagainRetries), poisoned \(poisoned), resident \(residentPages), \
        staged \(stagedPages), unevictable \(unevictablePages) (move refusals \(moveRefusals)), \
        discard-window faults \(discardWindowFaults), held faults peak \(heldFaultsPeak), budget waits \(budgetWaits), \
        hot refaults \(hotRefaults) (second chances \(secondChances)), \
        probation hits \(probationHits) (expired \(probationExpired), held \(probationPages)), zero reinstalls \(zeroReinstalls), \
        verification failures \(verificationFailures), forked children \(forkedChildren) (faults \(childFaults)), \
        servers \(servers) (down \(serversDown)), replicas \(replicas), under-replicated extents \(underReplicatedExtents), misplaced \(misplacedExtents), \
        repaired \(extentsRepaired) extents (\(pagesRepaired) pages), moved \(extentsMoved) (rereads \(rereadsAfterMove)), overshoot \(budgetOvershoot), RDMA pages in \(rdmaPagesIn) (in place \(rdmaPagesInPlace)) out \(rdmaPagesOut)
        """
    }
}

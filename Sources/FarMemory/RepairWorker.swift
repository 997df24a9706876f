import FarMemSystem
import Logging
import Synchronization

/// Restores the second copy by itself. Every 100 ms it looks for extents with
/// fewer live copies than wanted (a server was marked down) and copies each
/// to the live server the hash now picks: the pages that are not zeros, read
/// from a live holder, written to the new server (the region is created there
/// first if need be); then the new server becomes a holder. The protocol with
/// concurrent writes is `ExtentCopies`'. Every 5 s it asks the servers marked
/// down whether they answer again, on a new session: one that does rejoins
/// empty (`ClusterMembership.rejoin`) and is a repair target from then on;
/// once nothing is under-replicated, the extents the hash puts on it again
/// are moved back to it (RepairWorker+Rebalance). It runs on its own thread
/// with its own link to each server, sleeps between extents so application
/// faults keep priority, and never touches region memory (it moves page data
/// between servers only).
final class RepairWorker: @unchecked Sendable {
    var members: MemberStores
    /// A plain TCP store on a given session (probes, and dropping an old session's regions).
    private let makeProbe: (Int, [UInt8]) -> ServerPageStore
    private var nextRejoinProbe = 0.0
    private var nextHealthCheck = 0.0
    let membership: ClusterMembership
    let placement: Placement
    /// The open regions (a snapshot each round).
    let regions: @Sendable () -> [StoreRegion]
    let logger: Logger
    let running = Atomic<Bool>(true)
    private let condition = Condition()
    private let pageList = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
    private let buffer = UnsafeMutableRawPointer.allocate(byteCount: 256 * 4096, alignment: 4096)
    private var thread: PosixThread?

    let pagesRepaired = Atomic<UInt64>(0)
    let extentsRepaired = Atomic<UInt64>(0)
    /// Extents moved to the server the hash picks again (a rejoined one).
    let extentsMoved = Atomic<UInt64>(0)

    /// How long a discard of a moved copy waits for writes under way.
    let drainSeconds: Double

    init(members: [ServerPageStore], membership: ClusterMembership, placement: Placement, logger: Logger, drainSeconds: Double,
         makeMember: @escaping MemberStores.Make, makeProbe: @escaping (Int, [UInt8]) -> ServerPageStore,
         regions: @escaping @Sendable () -> [StoreRegion]) {
        self.members = MemberStores(members, membership: membership, make: makeMember)
        self.makeProbe = makeProbe
        self.drainSeconds = drainSeconds
        self.membership = membership
        self.placement = placement
        self.logger = logger
        self.regions = regions
    }

    deinit {
        pageList.deallocate()
        buffer.deallocate()
    }

    func start() { thread = PosixThread.spawn(name: "farmem-repair") { self.run() } }

    func stop() {
        running.store(false, ordering: .relaxed)
        condition.signal()
        thread?.join()
        thread = nil
        for server in members.indices { members.stores[server].link.close() }
    }

    private func run() {
        while running.load(ordering: .relaxed) {
            _ = condition.wait(until: { !running.load(ordering: .relaxed) }, timeoutMilliseconds: 100)
            checkLiveServers()
            probeDownServers()
            if repairRound() { rebalanceRound() }
        }
    }

    /// Extents with fewer live copies than wanted in `region` (for the statistics).
    func underReplicatedExtents(in region: StoreRegion) -> Int {
        guard let copies = region.copies else { return 0 }
        let live = membership.live
        return (0..<copies.extentCount).reduce(0) { $0 + ((copies.holders($1) & live).nonzeroBitCount < placement.replicas ? 1 : 0) }
    }

    /// This worker's store for `server`, on its current incarnation's session.
    func member(_ server: Int) -> ServerPageStore { members.store(server) }

    /// Every second, each live server is asked for its statistics on this
    /// worker's own link: one that does not answer within the request time-out
    /// (killed, its host gone, stopped) is marked down and its copies are
    /// repaired, even while the application sends it nothing (its failures
    /// are otherwise seen only by the requests that reach it).
    private func checkLiveServers() {
        guard monotonicSeconds() >= nextHealthCheck else { return }
        nextHealthCheck = monotonicSeconds() + 1
        let live = membership.live
        for server in members.indices where live & (1 << UInt64(server)) != 0 {
            let store = member(server)
            let incarnation = members.incarnations[server]
            guard !store.probe() else { continue }
            membership.markDown(server, reason: "it did not answer a health check", incarnation: incarnation)
        }
    }

    /// Every 5 s, each server marked down is asked for its statistics on a new
    /// session; one that answers forgets every old copy, then rejoins.
    private func probeDownServers() {
        guard monotonicSeconds() >= nextRejoinProbe else { return }
        nextRejoinProbe = monotonicSeconds() + 5
        let live = membership.live
        for server in members.indices where live & (1 << UInt64(server)) == 0 {
            var generator = SystemRandomNumberGenerator()
            let key = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let fresh = makeProbe(server, key)
            defer { fresh.link.close() }
            guard fresh.probe() else { continue }
            // The old session (a stopped-then-continued server still has it) gives
            // back its regions' reservations; a restarted server has none of it.
            let old = makeProbe(server, membership.sessionKey(server))
            let open = regions()
            for region in open { old.dropRegion(region) }
            old.link.close()
            for region in open { region.copies?.forget(server) }
            // Every thread's store for it follows (`MemberStores`), this one's included.
            membership.rejoin(server, key: key)
        }
    }

    /// Servers that could not take a region or more of it this round (full, say).
    var unplaceable: Placement.ServerSet = 0

    /// True when every extent has its copies (nothing was left to repair).
    private func repairRound() -> Bool {
        unplaceable = 0
        var complete = true
        for region in regions() {
            guard let copies = region.copies else { continue }
            for extent in 0..<copies.extentCount {
                guard running.load(ordering: .relaxed) else { return false }
                let live = membership.live
                let holders = copies.holders(extent) & live
                // (An extent with no copy left is lost for good: it does not hold back a rebalance.)
                if holders != 0, holders.nonzeroBitCount < min(placement.replicas, live.nonzeroBitCount) { complete = false }
                // None left: nothing to copy from (its pages raise SIGBUS when touched).
                guard holders != 0, holders.nonzeroBitCount < placement.replicas else { continue }
                // A server a repair is filling already has a copy coming.
                let candidates = live & ~holders & ~copies.joining(extent) & ~unplaceable
                guard candidates != 0 else { continue }   // no live server to put a copy on
                let target = placement.replicaSet(region: region.id, extent: extent, among: candidates)[0]
                if repair(region, copies, extent: extent, to: target) {
                    _ = extentsRepaired.add(1, ordering: .relaxed)
                }
                sleepSeconds(0.002)   // application faults first
            }
        }
        return complete
    }

    /// Copies one extent to `target`; true when `target` became a holder.
    func repair(_ region: StoreRegion, _ copies: ExtentCopies, extent: Int, to target: Int) -> Bool {
        // A rejoined server has none of the regions yet.
        if copies.regionServers & (1 << UInt64(target)) == 0 {
            do {
                // Nothing reserved yet: `reserve` below grows it extent by extent.
                let made = try member(target).createRegion(id: region.id, pageCount: copies.pageCount, reserving: 0)
                // Over RDMA, exposed in the new session: every pager thread's store
                // of this incarnation reads and writes it one-sided from now on.
                if let remote = made.remote(on: target) {
                    copies.remotes.publish(remote, server: target, incarnation: members.incarnations[target])
                }
            } catch {
                if case .refused(let refusal) = error, refusal.code == .regionExists {
                    // Made by an attempt whose reply was lost: expose it now.
                    if let remote = member(target).expose(id: region.id) {
                        copies.remotes.publish(remote, server: target, incarnation: members.incarnations[target])
                    }
                } else {
                    // Once a round per server: it may be full.
                    unplaceable |= 1 << UInt64(target)
                    logger.warning("repair: region \(region.id) cannot be created on \(membership.servers[target]): \(error)")
                    return false
                }
            }
            copies.addRegionServer(target)
            // Closed meanwhile: its drop may have missed this server.
            if copies.isClosed {
                member(target).dropRegion(region)
                return false
            }
        }
        guard reserve(region, copies, extent: extent, on: target) else { return false }
        copies.startJoining(extent, target)
        for _ in 0..<5 {
            // Copy only while no write to the extent is under way (waiting 100 ms
            // at most: a busy extent is tried again next round)...
            var writes = copies.writes(extent)
            var waited = 0
            while writes.started != writes.finished, waited < 100, running.load(ordering: .relaxed) {
                sleepSeconds(0.001)
                writes = copies.writes(extent)
                waited += 1
            }
            guard writes.started == writes.finished else { continue }
            // The target's extent emptied first (an earlier attempt may have left
            // pages there), so the copy makes it exactly the source's.
            do {
                try member(target).discard(region, first: extent * Placement.extentPages,
                                           count: min(Placement.extentPages, copies.pageCount - extent * Placement.extentPages))
            } catch {
                if case .regionGone = error {} else {
                    membership.markDown(target, reason: "a repair discard failed: \(error)", incarnation: members.incarnations[target])
                }
                break
            }
            guard copyExtent(region, copies, extent: extent, to: target) else { break }
            // ...and keep the copy only if none started meanwhile.
            if copies.writes(extent).started == writes.started, membership.isUp(target) {
                copies.addHolder(extent, target)
                return true
            }
        }
        copies.stopJoining(extent, target)
        // Writes made while it was joining are there: empty it again, so it
        // holds no page its reservation does not count, and give that back.
        if membership.isUp(target), discardCopy(region, copies, extent: extent, on: target) {
            releaseUnneeded(region, copies, on: target)
        }
        return false
    }

    /// Grows the region's reservation on `target` to cover the extent too
    /// (a server reserves only what it holds). False when it cannot: it is
    /// full (left alone for the rest of the round) or failed.
    private func reserve(_ region: StoreRegion, _ copies: ExtentCopies, extent: Int, on target: Int) -> Bool {
        let needed = copies.pagesPlaced(on: target, adding: extent)
        guard needed > copies.reservation(target) else { return true }
        do {
            copies.setReservation(target, try member(target).reserve(region, pages: needed, pageCount: copies.pageCount))
            return true
        } catch {
            switch error {
            case .refused(let refusal) where refusal.code == .outOfCapacity:
                unplaceable |= 1 << UInt64(target)
                logger.warning("repair: \(membership.servers[target]) cannot hold more of region \(region.id): \(refusal)")
            case .regionGone:
                break   // closed meanwhile
            default:
                membership.markDown(target, reason: "a repair reservation failed: \(error)", incarnation: members.incarnations[target])
            }
            return false
        }
    }

    /// Reads the extent from a live holder, 256 pages at a time, and writes
    /// its non-zero pages to `target`. False when a server failed or the
    /// region is gone (closed meanwhile).
    private func copyExtent(_ region: StoreRegion, _ copies: ExtentCopies, extent: Int, to target: Int) -> Bool {
        let first = extent * Placement.extentPages
        let end = min(first + Placement.extentPages, copies.pageCount)
        var page = first
        while page < end {
            guard membership.isUp(target), running.load(ordering: .relaxed) else { return false }
            let count = min(256, end - page)
            for i in 0..<count { pageList[i] = UInt64(page + i) }
            let holders = placement.replicaSet(region: region.id, extent: extent, among: copies.holders(extent) & membership.live)
            guard holders.count > 0 else { return false }
            let source = holders[0]
            let landed: UnsafeRawPointer
            do {
                landed = try member(source).read(region, pages: UnsafeBufferPointer(start: pageList, count: count), into: buffer)
            } catch {
                if case .regionGone = error { return false }
                membership.markDown(source, reason: "a repair read failed: \(error)", incarnation: members.incarnations[source])
                return false
            }
            // Zero pages read as zeros on the new server without being written.
            var kept = 0
            for i in 0..<count where !isZero(landed + i * 4096) {
                if landed + i * 4096 != UnsafeRawPointer(buffer + kept * 4096) {
                    (buffer + kept * 4096).copyMemory(from: landed + i * 4096, byteCount: 4096)
                }
                pageList[kept] = UInt64(page + i)
                kept += 1
            }
            if kept > 0 {
                do {
                    try member(target).write(region, pages: UnsafeBufferPointer(start: pageList, count: kept)) { i in
                        UnsafeRawPointer(buffer + i * 4096)
                    }
                } catch {
                    if case .regionGone = error { return false }
                    membership.markDown(target, reason: "a repair write failed: \(error)", incarnation: members.incarnations[target])
                    return false
                }
                _ = pagesRepaired.add(UInt64(kept), ordering: .relaxed)
            }
            page += count
        }
        return true
    }

    private func isZero(_ page: UnsafeRawPointer) -> Bool {
        let words = page.assumingMemoryBound(to: UInt64.self)
        for i in 0..<512 where words[i] != 0 { return false }
        return true
    }
}

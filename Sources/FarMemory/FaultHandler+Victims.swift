import CFarMemSys
import FarMemSystem

/// Victim choice: moving the oldest resident pages into staging (FIFO, but a
/// page that came back soon after its last eviction gets a second chance:
/// `Recency`), the pages the kernel refuses, and retrying those set aside.
extension FaultHandler {
    func evictIfNeeded() {
        guard !evictionSuspended, !writeBackOutage else { return }
        if setAsideRetryDue { retrySetAsideRound() }
        guard budget.needsEviction else { return }
        let target = budget.evictionTarget
        while budget.resident > target, staging.freeCount > 0, !awaitingEvent {
            let batch = spareBatches.popLast() ?? EvictionBatch(capacity: budget.batchSize)
            let (full, dropped) = fillBatch(batch, limit: min(budget.batchSize, budget.resident - target))
            if batch.entries.isEmpty {
                spareBatches.append(batch)
                if full && dropped > 0 { continue }   // memfd clean pages, dropped in place
                break
            }
            evictor.submit(.evict(batch))
            if !full { break }
        }
        budget.publish(to: counters)
    }

    /// Evicts up to `limit` victims: into staging (and the batch), or, for
    /// clean memfd pages, dropped where they are (`dropped` of them). `full`
    /// is false when it had to stop early (an event is pending, staging is
    /// full, or the queue had no more victims).
    func fillBatch(_ batch: EvictionBatch, limit: Int) -> (full: Bool, dropped: Int) {
        batch.entries.removeAll(keepingCapacity: true)
        var examined = 0, dropped = 0
        let maxExamined = queue.count
        while batch.entries.count + dropped < limit, examined < maxExamined, let entry = queue.pop() {
            examined += 1
            let (slot, page) = EvictionQueue.unpack(entry)
            guard slot < regions.count, let region = regions[slot] else { continue }
            let state = region.states[page]
            if state.isResident, recency.secondChance(region.recency, page) {
                counters.add(.secondChances)
                queue.push(entry)   // still queued: to the end of the line, once
                continue
            }
            region.states[page] = state.dequeued()
            // A shared page is evicted wherever it is mapped, or nowhere (0: only a forked child maps it).
            let address = region.address(of: page) ?? (region.shared != nil ? 0 : nil)
            guard state.isResident, let address else { continue }
            let entries = batch.entries.count
            let outcome = region.shared.map { evictShared(region: region, shared: $0, page: page, state: state, address: address, into: batch) }
                ?? moveOut(region: region, page: page, state: state, address: address, into: batch)
            // Pages this victim stands for: a hugetlb unit's 512, or itself.
            let weight = region.shared?.pagesPerUnit ?? 1
            switch outcome {
            case .moved:
                budget.resident -= weight
                if batch.entries.count == entries { dropped += weight }
            case .eventPending, .noFreeSlot:
                region.states[page] = state
                queue.push(entry)
                return (false, dropped)
            case .slotNotEmpty, .notYet:
                region.states[page] = state
                queue.push(entry)
            case .notMapped:
                // Not mapped after all (discarded in a race): it reads as zeros now.
                trace.record(page, .moveFoundNothing, state, state.foundUnmapped())
                region.setStates(state.foundUnmapped(), from: page, count: weight)
                queue.push(entry)
                budget.resident -= weight
            case .refused(let error):
                refused(region: region, page: page, state: state, error: error)
            }
        }
        return (batch.entries.count + dropped == limit, dropped)
    }

    /// `notYet`: a memfd page whose REMOVE is not settled; it stays queued.
    enum MoveOutcome { case moved, eventPending, noFreeSlot, slotNotEmpty, notYet, notMapped, refused(Errno) }

    /// Moves one resident page into a free staging slot and adds it to the
    /// batch (clean pages need no write-back; dirty ones are in flight until
    /// theirs is done). The caller fixes `resident`/`unevictable` and the queues.
    private func moveOut(region: RegionRecord, page: Int, state: PageState, address: UInt, into batch: EvictionBatch) -> MoveOutcome {
        guard let stagingSlot = staging.take() else { return .noFreeSlot }
        do {
            do {
                _ = try uffd.move(to: staging.address(of: stagingSlot), from: address, length: 4096)
            } catch .invalidArgument where fm_now_ns() >= nextStagingUnlock {
                // Perhaps the application locked staging (mlockall): unlock it
                // (at most once a second) and try once more before blaming the page.
                nextStagingUnlock = fm_now_ns() + 1_000_000_000
                staging.unlock()
                _ = try uffd.move(to: staging.address(of: stagingSlot), from: address, length: 4096)
            }
        } catch {
            switch error {
            case .exists:
                // The slot is not empty (its MADV_DONTNEED failed, or something
                // read the staging area): the page is not to blame. The evictor
                // empties the slot; until then it counts as staged.
                budget.staged += 1
                evictor.submit(.release([stagingSlot]))
                return .slotNotEmpty
            case .again:
                staging.give(stagingSlot)
                counters.add(.eagain)
                awaitingEvent = true
                return .eventPending
            case .noEntry:
                staging.give(stagingSlot)
                return .notMapped
            default:
                staging.give(stagingSlot)
                return .refused(error)
            }
        }
        budget.staged += 1
        counters.add(.evictions)
        recency.evicted(region.recency, page)
        let dirty = state.isDirty
        region.states[page] = state.movedOut()
        trace.record(page, .movedOut, state, region.states[page], extra: Int(stagingSlot))
        // Clean: the store (or nothing, for a zero page) already has it.
        if !dirty { counters.add(.cleanDrops) }
        batch.entries.append(.init(regionSlot: region.slot, region: region.store, page: page,
                                   stagingSlot: Int32(stagingSlot), dirty: dirty, backed: state.isBacked,
                                   probationSlot: claimProbationSlot(region: region, page: page, dirty: dirty, backed: state.isBacked)))
        return .moved
    }

    /// The kernel would not move a resident page: EBUSY, pinned (O_DIRECT,
    /// io_uring, an RDMA registration of the application's); EINVAL, its area
    /// differs from staging (mlock, mprotect). A first refusal is often a short
    /// pin, such as an O_DIRECT write in progress: the page goes to the back of
    /// the queue. A second sets it aside, outside the budget, so it can never
    /// wedge eviction (and with it every fault); set-aside pages are tried
    /// again later (`retrySetAside`).
    func refused(region: RegionRecord, page: Int, state: PageState, error: Errno) {
        counters.add(.moveRefusals)
        if !state.wasRefusedOnce {
            region.states[page] = state.refusedOnceAndRequeued()
            queue.push(EvictionQueue.pack(slot: region.slot, page: page))
            return
        }
        let weight = region.shared?.pagesPerUnit ?? 1
        region.setStates(state.setAside(), from: page, count: weight)
        budget.resident -= weight
        budget.unevictable += weight
        if setAside.count == setAside.capacity {
            // Only stale entries (pages discarded since, or set aside twice since) can fill it.
            var seen = Set<UInt64>()
            setAside.rebuild(capacity: setAside.capacity * 2) { self.isSetAside($0) && seen.insert($0).inserted }
        }
        setAside.push(EvictionQueue.pack(slot: region.slot, page: page))
        counters.set(.unevictablePages, UInt64(budget.unevictable))
        // Logged at 1, 2, 4, 8... such pages: an mlock of a large range must not flood the log.
        if budget.unevictable & (budget.unevictable - 1) == 0 {
            logger.warning("pages that cannot be evicted: \(budget.unevictable) (latest: page \(page) of region \(region.store.id), \(error)); they stay resident, outside the budget, and are tried again now and then (statistics: unevictablePages)")
        }
    }

    /// Set-aside pages are outside the budget only while the kernel refuses
    /// them: while memory counting them is over the high-water mark, a batch
    /// of them is tried each second (at once again while tries succeed).
    var setAsideRetryDue: Bool {
        setAside.count > 0 && budget.overHighWaterWithUnevictable && fm_now_ns() >= nextSetAsideRetry
    }

    func retrySetAsideRound() {
        guard staging.freeCount > 0, !awaitingEvent else { return }
        let batch = spareBatches.popLast() ?? EvictionBatch(capacity: budget.batchSize)
        batch.entries.removeAll(keepingCapacity: true)
        _ = retrySetAside(batch, limit: budget.batchSize)
        if batch.entries.isEmpty { spareBatches.append(batch) } else { evictor.submit(.evict(batch)) }
    }

    /// Whether a set-aside entry still names an unevictable page.
    func isSetAside(_ entry: UInt64) -> Bool {
        let (slot, page) = EvictionQueue.unpack(entry)
        guard slot < regions.count, let region = regions[slot] else { return false }
        return region.states[page].isUnevictable
    }

    /// Tries up to `limit` set-aside pages again (a pin may have ended). While
    /// some move, the next try comes with the next round; when none does,
    /// after a second. Returns false when it had to stop (event, no slot).
    func retrySetAside(_ batch: EvictionBatch, limit: Int) -> Bool {
        var tried = 0, moved = 0, left = setAside.count
        defer {
            nextSetAsideRetry = moved > 0 ? 0 : fm_now_ns() + 1_000_000_000
            counters.set(.unevictablePages, UInt64(budget.unevictable))
        }
        while left > 0, tried < limit, batch.entries.count < limit, let entry = setAside.pop() {
            left -= 1
            guard isSetAside(entry) else { continue }   // discarded or unmapped since
            let (slot, page) = EvictionQueue.unpack(entry)
            let region = regions[slot]!
            let state = region.states[page]
            guard let address = region.address(of: page) else { setAside.push(entry); continue }
            tried += 1
            let outcome = region.shared.map { evictShared(region: region, shared: $0, page: page, state: state.retried(), address: address, into: batch) }
                ?? moveOut(region: region, page: page, state: state.retried(), address: address, into: batch)
            let weight = region.shared?.pagesPerUnit ?? 1
            switch outcome {
            case .moved:
                budget.unevictable -= weight
                moved += 1
            case .eventPending, .noFreeSlot:
                setAside.push(entry)
                return false
            case .slotNotEmpty, .notYet, .refused:
                setAside.push(entry)
            case .notMapped:
                region.setStates(state.foundUnmapped(), from: page, count: weight)
                budget.unevictable -= weight
            }
        }
        return true
    }
}

import CFarMemSys
import FarMemSystem

/// memfd regions (`RegionKind.memfd`). "Resident" means in the page cache:
/// the page cache is the truth for shared memory, and the registered
/// mapping may or may not map a resident page at a given moment.
///
/// - A fetch is received into the page cache through the second mapping
///   (`SharedBacking.alias`: straight from the socket when the pages are
///   contiguous and ascending) and mapped with UFFDIO_CONTINUE. A page never
///   written is zero-filled with UFFDIO_COPY, which shmem supports.
/// - Eviction moves nothing. A clean page is punched out of the file
///   (fallocate PUNCH_HOLE: no event). A dirty one is write-protected in
///   place, so a write cannot land unseen, written back from the second
///   mapping, and punched when that lands; a write meanwhile waits, and
///   faults the page back afterwards.
/// - Kernel facts relied on: `SharedMemoryKernelTests`.
extension FaultHandler {
    /// A missing or minor fault on a memfd region whose page is not in
    /// flight (`handleFault` parks those; write-protect faults go the common
    /// way, `handleWriteProtectFault`).
    func handleSharedFault(_ fault: PageFault, region: RegionRecord, shared: SharedBacking, page: Int, address: UInt, started: UInt64) {
        let state = region.states[page]
        if state.isResident {
            mapResident(fault, region: region, shared: shared, page: page, address: address)
            counters.set(.residentPages, UInt64(budget.resident))
            return
        }
        // Not resident: the state decides, never the fault's MINOR flag, which
        // was true when the fault was raised and may not be now (the page may
        // have been evicted while the fault was held).
        let isWrite = fault.isWrite
        let trend = trends.record(thread: fault.thread, region: region.slot, page: page)
        guard state.isBacked else {
            zeroFill(fault, region: region, shared: shared, page: page, address: address, started: started)
            counters.set(.residentPages, UInt64(budget.resident))
            return
        }
        let fetched = fetchShared(region: region, shared: shared, page: page, trend: trend, address: address)
        guard fetched > 0 else { return }
        // In the page cache now, mapped or not: resident either way.
        let predictsWrite = writes.installGoesInDirty()
        let dirty = isWrite || predictsWrite
        for i in 0..<fetched {
            let fetchedPage = Int(fetchPages[i])
            region.states[fetchedPage] = region.states[fetchedPage].installed(dirty: i == 0 ? dirty : predictsWrite)
            enqueueIfNeeded(region, fetchedPage)
            if recency.refetched(region.recency, fetchedPage) { counters.add(.hotRefaults) }
        }
        budget.resident += fetched
        counters.add(.fetches)
        if fetched > 1 { counters.add(.prefetched, UInt64(fetched - 1)) }
        if !dirty { writes.installedClean(1) }
        switch mapContinued(at: address, pages: 1, writeProtect: !dirty) {
        case .mapped, .alreadyThere:
            counters.faultService.record(nanoseconds: fm_now_ns() &- started)
            if fetched > 1 { mapPrefetched(region: region, count: fetched - 1, writeProtect: !predictsWrite) }
        case .eventPending:
            deferUntilEvent(fault)   // it maps the page from the page cache when it comes back
        case .notInPageCache, .gone:
            try? uffd.wake(address, length: 4096)   // it faults again and is judged then
        }
        counters.set(.residentPages, UInt64(budget.resident))
    }

    /// Maps a resident page for a fault: writable (and dirty) for a write or
    /// a dirty page, write-protected otherwise. A remove-pending page found in
    /// the page cache was kept (MADV_DONTNEED); found gone, it was removed
    /// (MADV_REMOVE) and reads as zeros from now on.
    private func mapResident(_ fault: PageFault, region: RegionRecord, shared: SharedBacking, page: Int, address: UInt) {
        let state = region.states[page]
        let writable = fault.isWrite || state.isDirty
        var mapped = fault.isWrite ? state.written() : state
        if state.isRemovePending { mapped = mapped.removeSettled() }
        region.states[page] = mapped
        switch mapContinued(at: address, pages: 1, writeProtect: !writable) {
        case .mapped:
            region.removesSeenAt[page] = nil
        case .alreadyThere:
            // Mapped as it was: a write to it faults as write-protect.
            region.states[page] = state
            counters.add(.duplicateFaults)
        case .eventPending:
            region.states[page] = state
            deferUntilEvent(fault)
        case .gone:
            region.states[page] = state
            try? uffd.wake(address, length: 4096)
        case .notInPageCache:
            region.removesSeenAt[page] = nil
            if !state.isRemovePending {
                // Gone without a REMOVE: nothing of ours takes a resident page
                // out of the page cache, so this is not expected. What the store
                // has (or zeros) is the best there is now.
                logger.error("page \(page) of region \(region.store.id) (\(state)) left the page cache without an event; it is read from the store again")
                region.states[page] = state.notInstalled()
                budget.resident -= 1
                try? uffd.wake(address, length: 4096)   // it faults again and is fetched
                return
            }
            // Removed (MADV_REMOVE): zeros, as the application asked; the store's copy is stale.
            if state.isBacked { evictor.submit(.discard(region.store, first: page, count: 1)) }
            region.states[page] = state.reinstalledAsZeros()
            budget.resident -= 1
            zeroFill(fault, region: region, shared: shared, page: page, address: address, started: fm_now_ns())
        }
    }

    /// A page that reads as zeros (never written, or removed): zeros written
    /// into the page cache through the second mapping (over whatever it held),
    /// then mapped; write-protected unless the fault is a write.
    private func zeroFill(_ fault: PageFault, region: RegionRecord, shared: SharedBacking, page: Int, address: UInt, started: UInt64) {
        let state = region.states[page]
        shared.zero(page)
        region.states[page] = state.installed(dirty: fault.isWrite)
        budget.resident += 1
        enqueueIfNeeded(region, page)
        switch mapContinued(at: address, pages: 1, writeProtect: !fault.isWrite) {
        case .mapped, .alreadyThere:
            counters.add(.zeroFills)
            counters.faultService.record(nanoseconds: fm_now_ns() &- started)
        case .eventPending:
            deferUntilEvent(fault)   // in the page cache: it is mapped when the fault comes back
        case .notInPageCache, .gone:
            try? uffd.wake(address, length: 4096)
        }
    }

    enum ContinueResult { case mapped, alreadyThere, eventPending, notInPageCache, gone }

    private func mapContinued(at address: UInt, pages: Int, writeProtect: Bool) -> ContinueResult {
        do {
            _ = try uffd.continueMapping(address, length: pages * 4096, writeProtect: writeProtect)
            return .mapped
        } catch {
            switch error {
            case .exists:
                try? uffd.wake(address, length: pages * 4096)
                return .alreadyThere
            case .again: return .eventPending
            case .badAddress: return .notInPageCache
            default: return .gone   // unmapped under us, or the process is exiting
            }
        }
    }

    private func enqueueIfNeeded(_ region: RegionRecord, _ page: Int) {
        guard !region.states[page].isQueued else { return }
        region.states[page] = region.states[page].enqueued()
        queue.push(EvictionQueue.pack(slot: region.slot, page: page))
    }

    /// Fetches the faulting page and the predicted ones into the page cache.
    /// Returns how many arrived (0: failed, the page poisoned).
    private func fetchShared(region: RegionRecord, shared: SharedBacking, page: Int, trend: (stride: Int, window: Int)?,
                             address: UInt) -> Int {
        var count = predictPages(region: region, page: page, trend: trend)
        while true {
            let pages = UnsafeBufferPointer(start: fetchPages, count: count)
            // Contiguous and ascending: received straight into the page cache.
            let direct = (0..<count).allSatisfy { fetchPages[$0] == UInt64(page + $0) }
            let target = direct ? UnsafeMutableRawPointer(bitPattern: shared.alias(of: page))! : fetchBuffer
            do {
                let landed = try store.read(region.store, pages: pages, into: target)
                for i in 0..<count where !direct || landed != UnsafeRawPointer(target) {
                    // Over RDMA the pages land in the channel's buffer: one copy.
                    UnsafeMutableRawPointer(bitPattern: shared.alias(of: Int(fetchPages[i])))!
                        .copyMemory(from: landed + i * 4096, byteCount: 4096)
                }
                for i in 0..<count {
                    verifier.checkFetched(region, page: Int(fetchPages[i]), data: UnsafeRawPointer(bitPattern: shared.alias(of: Int(fetchPages[i])))!,
                                          how: i == 0 ? "fetched" : "prefetched", source: self.store.lastReadSource)
                }
                trace.record(page, .fetched, extra: count - 1)
                return count
            } catch {
                // A read that failed part-way may have filled pages of the page
                // cache that no state counts: free them (a later fault on them
                // fetches or zero-fills over whatever is there anyway).
                if direct { try? shared.punch(first: page, count: count) }
                if count > 1 {
                    count = 1   // the faulting page alone before giving up on it
                    continue
                }
                logger.error("page \(page) of region \(region.store.id) could not be fetched (\(error)); the access raises SIGBUS")
            }
            break
        }
        counters.add(.poisoned)
        do { try uffd.poison(address, length: 4096) } catch {
            logger.critical("UFFDIO_POISON failed (\(error)); waking the thread, which will fault again")
            try? uffd.wake(address, length: 4096)
        }
        return 0
    }

    /// Maps prefetched pages (already resident in the page cache) in runs
    /// that are contiguous in the registered mapping. Any that meet a pending
    /// event stay in the page cache: their first access maps them (a minor fault).
    private func mapPrefetched(region: RegionRecord, count: Int, writeProtect: Bool) {
        var slot = 1
        while slot <= count {
            guard let (first, address, run) = prefetchRun(region: region, from: slot, count: count) else { return }
            switch mapContinued(at: address, pages: run, writeProtect: writeProtect) {
            case .mapped: if writeProtect { writes.installedClean(run) }
            case .alreadyThere, .notInPageCache: break
            case .eventPending:
                awaitingEvent = true
                return
            case .gone: return
            }
            for i in 0..<run { trace.record(first + i, .prefetchInstalled, extra: writeProtect ? 0 : 1) }
            slot += run
        }
    }

    // MARK: Eviction

    /// Evicts one resident page of a memfd region (see the type's notes).
    /// The caller fixes `resident` and the queues.
    func evictShared(region: RegionRecord, shared: SharedBacking, page: Int, state: PageState, address: UInt,
                     into batch: EvictionBatch) -> MoveOutcome {
        var state = state
        if state.isRemovePending {
            // The REMOVE's own punch may still be on its way (the madvising
            // thread goes on once the event is read): evicting now could write
            // the removed data back. After a second the page cache can be asked.
            let seen = region.removesSeenAt[page] ?? 0
            if fm_now_ns() &- seen < 1_000_000_000 { return .notYet }
            region.removesSeenAt[page] = nil
            guard shared.isInPageCache(page) else {
                // Removed (MADV_REMOVE): zeros from now on; the store's copy is stale.
                if state.isBacked { evictor.submit(.discard(region.store, first: page, count: 1)) }
                return .notMapped
            }
            state = state.removeSettled()   // kept (MADV_DONTNEED): dirty, written back below
        }
        if !state.isDirty {
            // The store (or nothing: zeros) has its data, and any write to it
            // faults here first (it is write-protected).
            do { try shared.punch(first: page, count: 1) } catch { return .refused(error) }
            counters.add(.evictions)
            counters.add(.cleanDrops)
            recency.evicted(region.recency, page)
            region.states[page] = state.movedOut()
            trace.record(page, .movedOut, state, region.states[page], extra: -1)
            return .moved
        }
        do {
            try uffd.writeProtect(address, length: 4096, protect: true)   // (DONTWAKE with WP is EINVAL)
        } catch {
            if error == .again {
                counters.add(.eagain)
                awaitingEvent = true
                return .eventPending
            }
            return .refused(error)
        }
        budget.staged += 1
        counters.add(.evictions)
        recency.evicted(region.recency, page)
        region.states[page] = state.movedOut()
        trace.record(page, .movedOut, state, region.states[page], extra: -1)
        batch.entries.append(.init(regionSlot: region.slot, region: region.store, page: page, stagingSlot: -1,
                                   dirty: true, backed: state.isBacked, source: shared.alias(of: page)))
        return .moved
    }

    /// A memfd page's write-back round is over (`entry.source` set). Landed:
    /// the page leaves the page cache, unless the application dropped or
    /// removed it meanwhile (the page cache then decides, as for a resident
    /// page). Failed: it simply stays, resident and dirty.
    func finishShared(_ entry: EvictionBatch.Entry) {
        budget.staged -= 1
        guard entry.regionSlot < regions.count, let region = regions[entry.regionSlot], let shared = region.shared else { return }
        let page = entry.page
        let state = region.states[page]
        defer {
            trace.record(page, entry.failed ? .restored : .writeBackLanded, state, region.states[page], extra: -1)
            if let address = region.address(of: page) { try? uffd.wake(address, length: 4096) }
        }
        guard region.address(of: page) != nil else {
            // Unmapped meanwhile: gone, with its page cache and the store's copy.
            region.states[page] = state.discarded()
            try? shared.punch(first: page, count: 1)
            if !entry.failed { evictor.submit(.discard(region.store, first: page, count: 1)) }
            return
        }
        if !entry.failed {
            verifier.wroteBack(region, page: page, hash: entry.hash)
            outageBackoffSeconds = 1
        }
        if entry.failed || state.wasDiscardedInFlight {
            var restored = entry.lost ? state.restored().setAside() : state.restored()
            if state.wasDiscardedInFlight {
                // A REMOVE came while it was in flight: the page cache tells
                // which call it was, as for a resident page (`mapResident`); the
                // copy just written back may be the removed data.
                restored = restored.removedWhileResident()
                region.removesSeenAt[page] = fm_now_ns()
            }
            region.states[page] = restored
            if entry.lost {
                budget.unevictable += 1
                counters.set(.unevictablePages, UInt64(budget.unevictable))
            } else {
                budget.resident += 1
                if !state.isQueued { queue.push(EvictionQueue.pack(slot: region.slot, page: page)) }
            }
            return
        }
        do {
            try shared.punch(first: page, count: 1)
            region.states[page] = state.writtenBack()
        } catch {
            // Still in the page cache: resident, and written back, so clean.
            logger.error("page \(page) of region \(region.store.id) could not be punched out (\(error)); it stays resident")
            region.states[page] = state.writtenBack().installed(dirty: false)
            budget.resident += 1
            if !state.isQueued { queue.push(EvictionQueue.pack(slot: region.slot, page: page)) }
        }
    }

    // MARK: The application's events

    /// MADV_DONTNEED and MADV_REMOVE both arrive as REMOVE, before the call:
    /// on shared memory the first keeps the page cache, the second empties it.
    /// A resident page is left to the page cache (a later minor fault maps
    /// what it kept; a missing one finds it gone and zero-fills), counted dirty
    /// so that whatever the page cache holds is what gets written back. A page
    /// already evicted has no page cache to tell: it is discarded, as
    /// MADV_REMOVE asks, so a discarded page is never served back (see README).
    /// munmap (UNMAP): the pages are gone, page cache and store copies too.
    func handleSharedRemove(region: RegionRecord, shared: SharedBacking, run: Range<Int>, unmapped: Bool) {
        discardBacked(region, in: run) { page in
            let state = region.states[page]
            defer { trace.record(page, unmapped ? .unmap : .remove, state, region.states[page]) }
            if unmapped { region.removesSeenAt[page] = nil }
            if state.isInFlight {
                region.states[page] = state.discardedWhileInFlight()
                return false
            }
            if state.isResident && !unmapped {
                region.states[page] = state.removedWhileResident()
                region.removesSeenAt[page] = fm_now_ns()
                return false
            }
            dropFromBudget(state)
            region.states[page] = state.discarded()
            return state.isBacked
        }
        if unmapped {
            // Nothing maps these pages any more but our second mapping: free them.
            try? shared.punch(first: run.lowerBound, count: run.count)
        }
    }
}

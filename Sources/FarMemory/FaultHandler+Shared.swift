import CFarMemSys
import FarMemProtocol
import FarMemSystem

/// memfd and hugetlb regions (`RegionKind.memfd`, `.hugetlb`). "Resident" means in the page cache:
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
/// - hugetlb regions work the same way a unit (2 MiB, 512 pages) at a time
///   (see `SharedBacking`): `page` is always a unit's first page here, the
///   unit's pages change state together, and a fetch is the whole unit (no
///   stream prefetch: a huge page is its own).
/// - Kernel facts relied on: `SharedMemoryKernelTests`.
extension FaultHandler {
    /// A missing or minor fault on a memfd region whose page is not in
    /// flight (`handleFault` parks those; write-protect faults go the common
    /// way, `handleWriteProtectFault`).
    func handleSharedFault(_ fault: PageFault, region: RegionRecord, shared: SharedBacking, page: Int, address: UInt, started: UInt64) {
        let unit = shared.pagesPerUnit
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
        let trend = unit == 1 ? trends.record(thread: fault.thread, region: region.slot, page: page) : nil
        guard state.isBacked else {
            zeroFill(fault, region: region, shared: shared, page: page, address: address, started: started)
            counters.set(.residentPages, UInt64(budget.resident))
            return
        }
        let fetched = unit == 1 ? fetchShared(region: region, shared: shared, page: page, trend: trend, address: address)
            : fetchUnit(region: region, shared: shared, first: page, address: address)
        guard fetched > 0 else { return }
        // In the page cache now, mapped or not: resident either way.
        let predictsWrite = writes.installGoesInDirty()
        let dirty = isWrite || predictsWrite
        for i in 0..<fetched {
            let fetchedPage = Int(fetchPages[i])
            // A unit's pages share its first page's state; prefetched pages follow the prediction.
            region.states[fetchedPage] = region.states[fetchedPage].installed(dirty: i < unit ? dirty : predictsWrite)
            guard i % unit == 0 else { continue }
            enqueueIfNeeded(region, fetchedPage)
            if recency.refetched(region.recency, fetchedPage) { counters.add(.hotRefaults) }
        }
        budget.resident += fetched
        counters.add(.fetches)
        if fetched > unit { counters.add(.prefetched, UInt64(fetched - unit)) }
        if !dirty { writes.installedClean(1) }
        switch mapContinued(at: address, pages: unit, writeProtect: !dirty) {
        case .mapped, .alreadyThere:
            counters.faultService.record(nanoseconds: fm_now_ns() &- started)
            // (A child maps them by its own minor faults: they are at our addresses here.)
            if fetched > unit, !servingChild { mapPrefetched(region: region, count: fetched - 1, writeProtect: !predictsWrite) }
        case .eventPending:
            deferUntilEvent(fault)   // it maps the page from the page cache when it comes back
        case .notInPageCache, .gone:
            try? target.wake(address, length: unit * 4096)   // it faults again and is judged then
        }
        counters.set(.residentPages, UInt64(budget.resident))
    }

    /// Maps a resident page for a fault: writable (and dirty) for a write or
    /// a dirty page, write-protected otherwise. A remove-pending page found in
    /// the page cache was kept (MADV_DONTNEED); found gone, it was removed
    /// (MADV_REMOVE) and reads as zeros from now on.
    private func mapResident(_ fault: PageFault, region: RegionRecord, shared: SharedBacking, page: Int, address: UInt) {
        let unit = shared.pagesPerUnit
        let state = region.states[page]
        let writable = fault.isWrite || state.isDirty
        var mapped = fault.isWrite ? state.written() : state
        if state.isRemovePending { mapped = mapped.removeSettled() }
        region.setStates(mapped, from: page, count: unit)
        switch mapContinued(at: address, pages: unit, writeProtect: !writable) {
        case .mapped:
            region.removesSeenAt[page] = nil
        case .alreadyThere:
            // Mapped as it was: a write to it faults as write-protect.
            region.setStates(state, from: page, count: unit)
            counters.add(.duplicateFaults)
        case .eventPending:
            region.setStates(state, from: page, count: unit)
            deferUntilEvent(fault)
        case .gone:
            region.setStates(state, from: page, count: unit)
            try? target.wake(address, length: unit * 4096)
        case .notInPageCache:
            region.removesSeenAt[page] = nil
            if !state.isRemovePending {
                // Gone without a REMOVE: nothing of ours takes a resident page
                // out of the page cache, so this is not expected. What the store
                // has (or zeros) is the best there is now.
                logger.error("page \(page) of region \(region.store.id) (\(state)) left the page cache without an event; it is read from the store again")
                dropFromBudget(state, pages: unit)
                region.setStates(state.notInstalled(), from: page, count: unit)
                try? target.wake(address, length: unit * 4096)   // it faults again and is fetched
                return
            }
            // Removed (MADV_REMOVE): zeros, as the application asked; the store's
            // copy is stale. Out of the budget until the zero fill counts it again
            // (which may fail: no free huge page).
            if state.isBacked { evictor.submit(.discard(region.store, first: page, count: unit)) }
            dropFromBudget(state, pages: unit)
            region.setStates(state.discarded(), from: page, count: unit)
            zeroFill(fault, region: region, shared: shared, page: page, address: address, started: fm_now_ns())
        }
    }

    /// A page that reads as zeros (never written, or removed): zeros written
    /// into the page cache through the second mapping (over whatever it held),
    /// then mapped; write-protected unless the fault is a write.
    private func zeroFill(_ fault: PageFault, region: RegionRecord, shared: SharedBacking, page: Int, address: UInt, started: UInt64) {
        let unit = shared.pagesPerUnit
        let state = region.states[page]
        guard prepare(region: region, shared: shared, first: page, address: address) else { return }
        shared.zero(page)
        region.setStates(state.installed(dirty: fault.isWrite), from: page, count: unit)
        budget.resident += unit
        enqueueIfNeeded(region, page)
        switch mapContinued(at: address, pages: unit, writeProtect: !fault.isWrite) {
        case .mapped, .alreadyThere:
            counters.add(.zeroFills)
            counters.faultService.record(nanoseconds: fm_now_ns() &- started)
        case .eventPending:
            deferUntilEvent(fault)   // in the page cache: it is mapped when the fault comes back
        case .notInPageCache, .gone:
            try? target.wake(address, length: unit * 4096)
        }
    }

    /// Gives a hugetlb unit its huge page before the pager writes it. None
    /// free: the access raises SIGBUS (poisoned), with the reason logged,
    /// rather than the pager thread taking the SIGBUS itself.
    private func prepare(region: RegionRecord, shared: SharedBacking, first: Int, address: UInt) -> Bool {
        do {
            try shared.prepareUnit(first)
            return true
        } catch {
            logger.critical("no free 2 MiB huge page for page \(first) of region \(region.store.id) (\(error)); the access raises SIGBUS. Reserve more: sysctl vm.nr_hugepages")
            poison(address, pages: shared.pagesPerUnit)
            return false
        }
    }

    private func poison(_ address: UInt, pages: Int) {
        counters.add(.poisoned)
        do { try target.poison(address, length: pages * 4096) } catch {
            logger.critical("UFFDIO_POISON failed (\(error)); waking the thread, which will fault again")
            try? target.wake(address, length: pages * 4096)
        }
    }

    enum ContinueResult { case mapped, alreadyThere, eventPending, notInPageCache, gone }

    private func mapContinued(at address: UInt, pages: Int, writeProtect: Bool) -> ContinueResult {
        do {
            _ = try target.continueMapping(address, length: pages * 4096, writeProtect: writeProtect)
            return .mapped
        } catch {
            switch error {
            case .exists:
                try? target.wake(address, length: pages * 4096)
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
            let landing = direct ? UnsafeMutableRawPointer(bitPattern: shared.alias(of: page))! : fetchBuffer
            do {
                let landed = try store.read(region.store, pages: pages, into: landing, inPlace: direct)
                for i in 0..<count where !direct || landed != UnsafeRawPointer(landing) {
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
        poison(address, pages: 1)
        return 0
    }

    /// Fetches a hugetlb unit into its huge page of the page cache, in
    /// protocol-sized reads received straight there (over RDMA, copied from
    /// the channel's buffer). Returns the unit's page count, or 0 (failed,
    /// the unit poisoned). `fetchPages` lists the unit's pages.
    private func fetchUnit(region: RegionRecord, shared: SharedBacking, first: Int, address: UInt) -> Int {
        let unit = shared.pagesPerUnit
        for i in 0..<unit { fetchPages[i] = UInt64(first + i) }
        guard prepare(region: region, shared: shared, first: first, address: address) else { return 0 }
        var done = 0
        do {
            while done < unit {
                let count = min(unit - done, ProtocolLimits.maxBatchPages)
                let landing = UnsafeMutableRawPointer(bitPattern: shared.alias(of: first + done))!
                let landed = try store.read(region.store, pages: UnsafeBufferPointer(start: fetchPages + done, count: count),
                                            into: landing, inPlace: true)
                if landed != UnsafeRawPointer(landing) { landing.copyMemory(from: landed, byteCount: count * 4096) }
                done += count
            }
        } catch {
            // Its huge page holds part of the data that no state counts: free it.
            try? shared.punch(first: first, count: unit)
            logger.error("page \(first) of region \(region.store.id) (a 2 MiB huge page) could not be fetched (\(error)); the access raises SIGBUS")
            poison(address, pages: unit)
            return 0
        }
        for i in 0..<unit {
            verifier.checkFetched(region, page: first + i, data: UnsafeRawPointer(bitPattern: shared.alias(of: first + i))!,
                                  how: "fetched", source: self.store.lastReadSource)
        }
        trace.record(first, .fetched, extra: unit - 1)
        return unit
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
        let unit = shared.pagesPerUnit
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
                if state.isBacked { evictor.submit(.discard(region.store, first: page, count: unit)) }
                return .notMapped
            }
            state = state.removeSettled()   // kept (MADV_DONTNEED): dirty, written back below
        }
        if !state.isDirty {
            // The store (or nothing: zeros) has its data, and any write to it
            // faults here first (it is write-protected).
            do { try shared.punch(first: page, count: unit) } catch { return .refused(error) }
            counters.add(.evictions)
            counters.add(.cleanDrops)
            recency.evicted(region.recency, page, pages: unit)
            region.setStates(state.movedOut(), from: page, count: unit)
            trace.record(page, .movedOut, state, region.states[page], extra: -1)
            return .moved
        }
        do {
            // (address 0: we no longer map it, a forked child does.)
            if address != 0 { try uffd.writeProtect(address, length: unit * 4096, protect: true) }   // (DONTWAKE with WP is EINVAL)
            // And wherever a forked child maps it: its writes are ours.
            try writeProtectInChildren(region: region, page: page, pages: unit)
        } catch {
            // (Protected where it was done: harmless, a write there marks it dirty again.)
            if error == .again {
                counters.add(.eagain)
                awaitingEvent = true
                return .eventPending
            }
            return .refused(error)
        }
        budget.staged += unit
        counters.add(.evictions)
        recency.evicted(region.recency, page, pages: unit)
        region.setStates(state.movedOut(), from: page, count: unit)
        trace.record(page, .movedOut, state, region.states[page], extra: -1)
        // A unit's entries stay together in the batch (`finish` hands them back as one).
        for i in 0..<unit {
            batch.entries.append(.init(regionSlot: region.slot, region: region.store, page: page + i, stagingSlot: -1,
                                       dirty: true, backed: state.isBacked, source: shared.alias(of: page + i),
                                       sourceFile: unit > 1 ? shared.file.descriptor.rawValue : -1))
        }
        return .moved
    }

    /// A memfd page's (a hugetlb unit's: its entries) write-back round is
    /// over (`source` set). Landed: the page leaves the page cache, unless the
    /// application dropped or removed it meanwhile (the page cache then
    /// decides, as for a resident page). Failed, in part or whole: it simply
    /// stays, resident and dirty.
    func finishShared(_ entries: ArraySlice<EvictionBatch.Entry>) {
        budget.staged -= entries.count
        guard let first = entries.first, first.regionSlot < regions.count, let region = regions[first.regionSlot],
              let shared = region.shared else { return }
        let page = first.page, unit = entries.count
        let failed = entries.contains { $0.failed }, lost = entries.contains { $0.lost }
        let state = region.states[page]
        defer {
            trace.record(page, failed ? .restored : .writeBackLanded, state, region.states[page], extra: -1)
            if let address = region.address(of: page) { try? uffd.wake(address, length: unit * 4096) }
            wakeInChildren(region: region, page: page, pages: unit)
        }
        guard region.address(of: page) != nil || mappedInChildren(region, page) else {
            // Unmapped meanwhile: gone, with its page cache and the store's copy.
            region.setStates(state.discarded(), from: page, count: unit)
            try? shared.punch(first: page, count: unit)
            if entries.contains(where: { !$0.failed }) { evictor.submit(.discard(region.store, first: page, count: unit)) }
            return
        }
        if !failed {
            for entry in entries { verifier.wroteBack(region, page: entry.page, hash: entry.hash) }
            outageBackoffSeconds = 1
        }
        if failed || state.wasDiscardedInFlight {
            var restored = lost ? state.restored().setAside() : state.restored()
            if state.wasDiscardedInFlight {
                // A REMOVE came while it was in flight: the page cache tells
                // which call it was, as for a resident page (`mapResident`); the
                // copy just written back may be the removed data.
                restored = restored.removedWhileResident()
                region.removesSeenAt[page] = fm_now_ns()
            }
            region.setStates(restored, from: page, count: unit)
            if lost {
                budget.unevictable += unit
                counters.set(.unevictablePages, UInt64(budget.unevictable))
            } else {
                budget.resident += unit
                if !state.isQueued { queue.push(EvictionQueue.pack(slot: region.slot, page: page)) }
            }
            return
        }
        do {
            try shared.punch(first: page, count: unit)
            region.setStates(state.writtenBack(), from: page, count: unit)
        } catch {
            // Still in the page cache: resident, and written back, so clean.
            logger.error("page \(page) of region \(region.store.id) could not be punched out (\(error)); it stays resident")
            region.setStates(state.writtenBack().installed(dirty: false), from: page, count: unit)
            budget.resident += unit
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
        if shared.pagesPerUnit > 1 { return handleUnitRemove(region: region, shared: shared, run: run, unmapped: unmapped) }
        // Our munmap leaves a page a forked child still maps as it is (its data is the child's too).
        let keptForChildren = { (page: Int) in unmapped && !self.children.isEmpty && self.mappedInChildren(region, page) }
        discardBacked(region, in: run) { page in
            if keptForChildren(page) { return false }
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
            var page = run.lowerBound
            while page < run.upperBound {
                guard !keptForChildren(page) else { page += 1; continue }
                var count = 1
                while page + count < run.upperBound, !keptForChildren(page + count) { count += 1 }
                try? shared.punch(first: page, count: count)
                page += count
            }
        }
    }

    /// The same rule for a hugetlb region, a unit at a time. The kernel takes
    /// such ranges in whole huge pages, but should one come cut, a unit it
    /// touches in part is left to the page cache if resident and kept if not
    /// (never discarded on a guess).
    private func handleUnitRemove(region: RegionRecord, shared: SharedBacking, run: Range<Int>, unmapped: Bool) {
        let unit = shared.pagesPerUnit
        let start = shared.unitStart(of: run.lowerBound)
        for first in stride(from: start, to: run.upperBound, by: unit) {
            if unmapped, mappedInChildren(region, first) { continue }   // a forked child still maps it
            let state = region.states[first]
            defer { trace.record(first, unmapped ? .unmap : .remove, state, region.states[first]) }
            let whole = first >= run.lowerBound && first + unit <= run.upperBound
            if unmapped { region.removesSeenAt[first] = nil }
            if state.isInFlight {
                region.setStates(state.discardedWhileInFlight(), from: first, count: unit)
            } else if state.isResident && !unmapped {
                region.setStates(state.removedWhileResident(), from: first, count: unit)
                region.removesSeenAt[first] = fm_now_ns()
            } else if whole || unmapped {
                dropFromBudget(state, pages: unit)
                region.setStates(state.discarded(), from: first, count: unit)
                if state.isBacked { evictor.submit(.discard(region.store, first: first, count: unit)) }
                if unmapped { try? shared.punch(first: first, count: unit) }
            }
        }
    }
}

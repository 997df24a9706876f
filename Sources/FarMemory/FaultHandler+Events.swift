import FarMemSystem

/// The application's own events: MADV_DONTNEED/MADV_REMOVE (REMOVE), munmap
/// (UNMAP) and mremap (REMAP).
extension FaultHandler {
    /// The application dropped [start, end): MADV_DONTNEED/MADV_REMOVE (the
    /// pages read as zeros from now on) or munmap (they are gone). The server's
    /// copies are discarded so they can never be served stale.
    func handleRemove(start: UInt, end: UInt, unmapped: Bool) {
        if staging.contains(start) { return }   // the evictor emptying staging slots
        if let held = kept, let region = regions[held.region],
           (0..<held.count).contains(where: { i in
               region.address(of: Int(keptPages[i])).map { $0 >= start && $0 < end } ?? false }) {
            kept = nil   // data being dropped: never install the kept copy
        }
        for region in liveRegions {
            for run in region.pageRuns(in: start, end) {
                if let shared = region.shared {
                    handleSharedRemove(region: region, shared: shared, run: run, unmapped: unmapped)
                    continue
                }
                forgetProbation(region: region, pages: run)
                discardBacked(region, in: run) { page in
                    let state = region.states[page]
                    defer { trace.record(page, unmapped ? .unmap : .remove, state, region.states[page]) }
                    if state.isInFlight {
                        // Discarded once its write-back lands (`finish`).
                        region.states[page] = state.discardedWhileInFlight()
                        return false
                    }
                    dropFromBudget(state)
                    region.states[page] = state.discarded()
                    return state.isBacked
                }
            }
            if unmapped { region.cut(start, end) }
        }
        // A thread parked on a page of this range (its write-back in flight)
        // would be woken at the page's address when the write-back ends, but
        // after munmap the page has no address, and the kernel does not wake
        // it either (experiments/unmap-wake.c): wake the range now. It retries
        // and gets SIGSEGV (EFAULT inside a syscall), as without FarMem.
        if unmapped { try? uffd.wake(start, length: Int(end - start)) }
        counters.set(.residentPages, UInt64(budget.resident))
        counters.set(.unevictablePages, UInt64(budget.unevictable))
    }

    /// Runs `discard` on each page of `run` (it updates the page's state and
    /// says whether the store held it), and has the store forget those pages,
    /// one request per contiguous stretch.
    func discardBacked(_ region: RegionRecord, in run: Range<Int>, _ discard: (Int) -> Bool) {
        var start: Int?
        for page in run {
            if discard(page) {
                if start == nil { start = page }
            } else if let first = start {
                evictor.submit(.discard(region.store, first: first, count: page - first))
                start = nil
            }
        }
        if let first = start { evictor.submit(.discard(region.store, first: first, count: run.upperBound - first)) }
    }

    /// A page (`pages` of one state: a hugetlb unit) that leaves local memory
    /// for good: out of the budget it counted in.
    func dropFromBudget(_ state: PageState, pages: Int = 1) {
        if state.isUnevictable {
            budget.unevictable -= pages
        } else if state.isResident {
            budget.resident -= pages
        }
    }

    /// mremap moved [from, from+length) to `to`: the region follows, evicted
    /// pages included.
    func handleRemap(from: UInt, to: UInt, length: UInt) {
        for region in liveRegions {
            region.move(from: from, to: to, length: length)
        }
        // Threads parked at the old addresses would be woken at the new ones:
        // wake them where they wait. They retry there (nothing is mapped now),
        // as they would have without FarMem had they come after the move.
        try? uffd.wake(from, length: Int(length))
    }
}

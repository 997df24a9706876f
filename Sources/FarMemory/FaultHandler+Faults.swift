import CFarMemSys
import FarMemSystem

/// Page faults: a missing page is fetched (or zero-filled) and installed;
/// a write to a clean page marks it dirty. Kernel rules: state changes before
/// the ioctl that lets the thread run; EEXIST wakes; EAGAIN holds the fault.
extension FaultHandler {
    @inline(__always)
    func locate(_ address: UInt) -> (RegionRecord, Int)? {
        for region in liveRegions {
            if let page = region.page(at: address) { return (region, page) }
        }
        return nil
    }

    func handleFault(_ fault: PageFault) {
        if fault.origin != 0 {
            // A forked child's: served the same way, through its userfaultfd.
            guard let child = children.first(where: { $0.origin == fault.origin }), !child.gone else { return }
            target = child.uffd
            defer { target = uffd }
            guard let (slot, page) = child.locate(fault.page), slot < regions.count, let region = regions[slot] else {
                return refuseUnknownChildFault(fault)
            }
            return handleFault(fault, region: region, page: page)
        }
        guard let (region, page) = locate(fault.page) else {
            let address = fault.page
            // Staging, or memory mremap added past a region's end: plain zero-filled
            // memory, so that no thread ever waits on an address nobody serves.
            counters.add(.faults)
            switch install(zeroPage, at: address, writeProtect: false) {
            case .eventPending: deferUntilEvent(fault)
            case .gone: try? uffd.wake(address, length: 4096)
            case .installed, .alreadyThere: break
            }
            return
        }
        handleFault(fault, region: region, page: page)
    }

    /// A fault on `page` of `region`, from this process or (`target`) a forked child.
    private func handleFault(_ fault: PageFault, region: RegionRecord, page located: Int) {
        let started = fm_now_ns()
        var address = fault.page
        var page = located
        if let shared = region.shared, shared.pagesPerUnit > 1 {
            // A hugetlb region: the fault is the whole huge page's (its pages share
            // one state). Its extents are in whole huge pages, here and in a child.
            page = shared.unitStart(of: page)
            address -= UInt(located - page) << 12
        }
        let before = region.states[page]
        defer {
            trace.record(page, fault.isWriteProtect ? .writeProtectFault : .fault, before, region.states[page], extra: fault.isWrite ? 1 : 0)
        }
        if fault.isWriteProtect {
            if region.shared != nil, region.states[page].isInFlight {
                // A memfd page being written back (write-protected in place): the
                // write waits until that lands, then faults the page back.
                counters.add(.parkedFaults)
                return
            }
            if !handleWriteProtectFault(region: region, page: page, address: address, pages: region.shared?.pagesPerUnit ?? 1) {
                deferUntilEvent(fault)
            }
            return
        }
        counters.add(.faults)
        let state = region.states[page]
        if state.isInFlight {
            // Its write-back is in flight (a memfd page's too, if the application
            // dropped its mapping): the completion wakes this thread.
            counters.add(.parkedFaults)
            return
        }
        if let shared = region.shared {
            handleSharedFault(fault, region: region, shared: shared, page: page, address: address, started: started)
            return
        }
        if state.isResident {
            // Usually a second thread faulting on a page just installed: EEXIST
            // below wakes it. If the page really is gone (the application
            // discarded it while we raced to install), zeros are what it asked for.
            counters.add(.duplicateFaults)
            switch install(zeroPage, at: address, writeProtect: true) {
            case .installed:
                region.states[page] = state.reinstalledAsZeros()
                counters.add(.zeroReinstalls)
                let total = counters.get(.zeroReinstalls)
                // Logged at 1, 2, 4, 8...: it must not flood the log.
                if total & (total - 1) == 0 { logger.warning("page \(page) of region \(region.store.id) (\(state)) was gone without an event; installed as zeros (\(total) such pages)") }
            case .eventPending: deferUntilEvent(fault)
            case .alreadyThere: break
            case .gone: try? uffd.wake(address, length: 4096)
            }
            return
        }
        let isWrite = fault.isWrite
        let trend = trends.record(thread: fault.thread, region: region.slot, page: page)
        var source = UnsafeRawPointer(zeroPage)
        let fromServer = state.isBacked
        var fetched = 0
        // Evicted a short while ago and still in probation: no network round trip.
        let fromProbation = fromServer ? probationCopy(region: region, page: page) : nil
        if let fromProbation {
            fetched = 1
            lastFetchWasBatch = false
            source = fromProbation
            verifier.checkFetched(region, page: page, data: source, how: "taken from probation")
        } else if fromServer {
            fetched = fetch(region: region, page: page, trend: trend, address: address)
            guard fetched > 0 else { return }
            lastFetchWasBatch = fetched > 4
            source = fetchedData
            verifier.checkFetched(region, page: page, data: source, how: "fetched", source: self.store.lastReadSource)
        } else {
            lastFetchWasBatch = false   // a zero fill
        }
        // A read installs the page write-protected (clean until written); a
        // write installs it writable and dirty, saving a second fault, and so
        // does a read of a fetched page while most clean pages get written
        // (`WritePredictor`, asked once per fault, for this page and the
        // prefetched ones; a zero page is never dirtied on a guess).
        let predictsWrite = fromServer && writes.installGoesInDirty()
        let dirty = isWrite || predictsWrite
        let newState = state.installed(dirty: dirty)
        region.states[page] = newState
        budget.resident += 1
        switch install(source, at: address, writeProtect: !dirty) {
        case .installed:
            if !dirty { writes.installedClean(1) }
            if fromServer, recency.refetched(region.recency, page) { counters.add(.hotRefaults) }
            if fromProbation != nil {
                tookFromProbation(region: region, page: page)
            } else {
                counters.add(fromServer ? .fetches : .zeroFills)
            }
            if !newState.isQueued {
                region.states[page] = newState.enqueued()
                queue.push(EvictionQueue.pack(slot: region.slot, page: page))
            }
            counters.faultService.record(nanoseconds: fm_now_ns() &- started)
            if fetched > 1 { installPrefetched(region: region, count: fetched - 1, dirty: predictsWrite) }
        case .alreadyThere:
            trace.record(page, .installMetEEXIST, state, state)
            // Mapped, yet not by us: the application discarded the page and the
            // kernel has not zapped it yet (MADV_DONTNEED's thread resumes when
            // we read REMOVE, then takes mmap_lock and zaps). Never adopt it:
            // its bytes are the discarded ones, and moving it out before the zap
            // would bring them back. The EEXIST woke the thread; it retries, and
            // faults again once the page is gone.
            region.states[page] = state
            budget.resident -= 1
            counters.add(.discardWindowFaults)
        case .eventPending:
            trace.record(page, .installMetEAGAIN, state, state, extra: fromServer ? 1 : 0)
            region.states[page] = state
            budget.resident -= 1
            if fromServer, fromProbation == nil {
                if fetchedData != UnsafeRawPointer(fetchBuffer) {
                    // Over RDMA the pages sit in the channel's buffer, which the next fetch reuses.
                    fetchBuffer.copyMemory(from: fetchedData, byteCount: fetched * 4096)
                }
                swap(&fetchBuffer, &keptBuffer)
                swap(&fetchPages, &keptPages)
                kept = (region.slot, fetched)
            }
            deferUntilEvent(fault)
        case .gone:
            region.states[page] = state
            budget.resident -= 1
            try? uffd.wake(address, length: 4096)   // it faults again, or finds the range gone
        }
        counters.set(.residentPages, UInt64(budget.resident))
    }

    func deferUntilEvent(_ fault: PageFault) {
        counters.add(.eagain)
        awaitingEvent = true
        deferFault(fault)
    }

    /// Returns false when an event is pending and the fault must wait for it.
    /// `pages`: the unit the kernel protects as one (a hugetlb region's 512).
    func handleWriteProtectFault(region: RegionRecord, page: Int, address: UInt, pages: Int = 1) -> Bool {
        counters.add(.writeProtectFaults)
        let state = region.states[page]
        // Resident: mark it dirty. Not resident: a stale message (the page was
        // moved out; the thread retries and takes a missing fault), or a page
        // the application discarded and the kernel has not zapped yet (or never
        // will, if the madvise failed after its event): not ours, never moved
        // out, so letting the write through loses nothing. Resident and already
        // dirty: a duplicate. Unprotecting is right in every case, and a page
        // left protected would fault here forever.
        if state.isResident {
            if !state.isDirty { writes.wroteCleanPage() }
            region.setStates(state.written(), from: page, count: pages)
        }
        do {
            try target.writeProtect(address, length: pages * 4096, protect: false)
            return true
        } catch {
            region.setStates(state, from: page, count: pages)
            if error == .again { return false }
            try? target.wake(address, length: pages * 4096)
            return true
        }
    }

    enum InstallResult { case installed, alreadyThere, eventPending, gone }

    @discardableResult
    private func install(_ source: UnsafeRawPointer, at address: UInt, writeProtect: Bool) -> InstallResult {
        do {
            _ = try uffd.copy(to: address, from: source, length: 4096, writeProtect: writeProtect)
            return .installed
        } catch {
            switch error {
            case .exists:
                try? uffd.wake(address, length: 4096)
                return .alreadyThere
            case .again:
                return .eventPending
            default:
                // ENOENT: unmapped under us; ENOMEM: no memory for the page;
                // ESRCH/ENOSPC: the process is exiting. Callers wake the thread.
                return .gone
            }
        }
    }
}

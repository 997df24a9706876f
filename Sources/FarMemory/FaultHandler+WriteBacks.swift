import CFarMemSys
import FarMemSystem

/// What comes back from the evictor: finished write-backs, pages put back
/// after a failed one, and probing the store during an outage.
extension FaultHandler {
    /// During a write-back outage, asks the server (through the evictor, whose
    /// link the failed write-backs used) once a second whether it answers again.
    func probeIfOutage() {
        guard writeBackOutage, !probeInFlight, !evictionSuspended, fm_now_ns() >= nextOutageProbe else { return }
        probeInFlight = true
        evictor.submit(.probe)
    }

    /// A write-back round is over: its pages are on the server (or, if the
    /// server could not take them, moved back into the region).
    func finish(_ batch: EvictionBatch) {
        var keepSlots: [Int32] = []
        var index = 0
        while index < batch.entries.count {
            let entry = batch.entries[index]
            index += 1
            let region = entry.regionSlot < regions.count ? regions[entry.regionSlot] : nil
            if entry.source != 0 {
                // A hugetlb unit's entries come together and finish as one.
                let end = min(index - 1 + (region?.shared?.pagesPerUnit ?? 1), batch.entries.count)
                let unit = batch.entries[(index - 1)..<end]
                if let failed = unit.first(where: \.failed) { declareOutage(unless: failed.lost || region == nil) }
                finishShared(unit)
                index = end
                continue
            }
            guard entry.failed else {
                // Its slot comes back (a slotsReleased report) once the evictor has emptied it.
                guard entry.dirty, let region else {
                    if let region { verifier.checkCleanDrop(region, page: entry.page, wasBacked: entry.backed, hash: entry.hash) }
                    trace.record(entry.page, .cleanDropDone, extra: Int(entry.stagingSlot))
                    settleProbation(entry, region: region)
                    continue
                }
                verifier.wroteBack(region, page: entry.page, hash: entry.hash)
                outageBackoffSeconds = 1
                if let held = kept, held.region == entry.regionSlot,
                   (0..<held.count).contains(where: { keptPages[$0] == UInt64(entry.page) }) {
                    kept = nil   // the server has newer data for a kept page
                }
                let state = region.states[entry.page]
                defer { trace.record(entry.page, .writeBackLanded, state, region.states[entry.page], extra: Int(entry.stagingSlot)) }
                if state.wasDiscardedInFlight {
                    region.states[entry.page] = state.discarded()
                    evictor.submit(.discard(region.store, first: entry.page, count: 1))
                } else {
                    region.states[entry.page] = state.writtenBack()
                }
                // Findable before the parked faults wake: they take it from there.
                settleProbation(entry, region: region)
                if let address = region.address(of: entry.page) { try? uffd.wake(address, length: 4096) }
                continue
            }
            // The staged copy is the only one. Put it back where it belongs.
            settleProbation(entry, region: region)
            declareOutage(unless: entry.lost || region == nil)
            if !restore(entry) { keepSlots.append(entry.stagingSlot) }   // the evictor empties it and returns it
        }
        batch.entries.removeAll(keepingCapacity: true)
        spareBatches.append(batch)
        if !keepSlots.isEmpty { evictor.submit(.release(keepSlots)) }
        counters.set(.residentPages, UInt64(budget.resident))
    }

    /// A write-back failed: eviction pauses until the server answers a probe
    /// (not for pages whose copies are all lost, nor a closed region's).
    func declareOutage(unless excused: Bool) {
        guard !excused, !writeBackOutage else { return }
        writeBackOutage = true
        nextOutageProbe = fm_now_ns() + outageBackoffSeconds * 1_000_000_000
        logger.error("write-back failed: eviction paused for at least \(outageBackoffSeconds) s, pages stay in local memory (the budget is not kept) until the server answers again")
        outageBackoffSeconds = min(outageBackoffSeconds * 2, 60)
    }

    /// Moves a page whose write-back failed from its staging slot back into
    /// the region. Returns false when the slot's data is not wanted any more
    /// (region closed, page discarded or unmapped): the caller empties the slot.
    /// EAGAIN (an event is pending) keeps the entry for a retry after it.
    func restore(_ entry: EvictionBatch.Entry) -> Bool {
        guard entry.regionSlot < regions.count, let region = regions[entry.regionSlot] else { return false }
        let state = region.states[entry.page]
        defer { trace.record(entry.page, .restored, state, region.states[entry.page]) }
        guard !state.wasDiscardedInFlight, let address = region.address(of: entry.page) else {
            // Discarded or unmapped while in flight: it reads as zeros (or is gone). Faults go on.
            region.states[entry.page] = state.discarded()
            if let address = region.address(of: entry.page) { try? uffd.wake(address, length: 4096) }
            return false
        }
        do {
            _ = try uffd.move(to: address, from: staging.address(of: entry.stagingSlot), length: 4096, wake: true)
        } catch {
            if error == .again {
                pendingRestores.append(entry)
                awaitingEvent = true
                return true
            }
            // Cannot happen while the page is in flight (its faults are parked); if
            // it does, the data cannot be put back: fail that page loudly, never hang.
            logger.critical("page \(entry.page) of region \(region.store.id) could not be restored (\(error)); it raises SIGBUS")
            region.states[entry.page] = state.discarded()
            counters.add(.poisoned)
            try? uffd.poison(address, length: 4096)
            return false
        }
        if entry.lost {
            // Every copy of its extent is gone: local for good, outside the
            // budget, never tried again (nowhere to write it).
            region.states[entry.page] = state.restored().setAside()
            budget.unevictable += 1
            counters.set(.unevictablePages, UInt64(budget.unevictable))
        } else {
            region.states[entry.page] = state.restored()
            // Back in the eviction queue (it left it when it was moved out), or it
            // would stay resident for good once eviction resumes.
            if !state.isQueued { queue.push(EvictionQueue.pack(slot: region.slot, page: entry.page)) }
            budget.resident += 1
        }
        staging.give(entry.stagingSlot)
        budget.staged -= 1
        return true
    }

    func retryRestores() {
        guard !pendingRestores.isEmpty, !awaitingEvent else { return }
        let entries = pendingRestores
        pendingRestores.removeAll(keepingCapacity: true)
        var discard: [Int32] = []
        for entry in entries where !restore(entry) { discard.append(entry.stagingSlot) }
        if !discard.isEmpty { evictor.submit(.release(discard)) }
    }
}

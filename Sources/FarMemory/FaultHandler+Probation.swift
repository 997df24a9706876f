/// The probation area's steps (`ProbationArea`): a slot claimed as a victim
/// is moved out, the copy made findable once its write-back is done, a fault
/// served from it, and copies forgotten the moment they could be stale.
///
/// The rule that keeps it correct: a page is findable in probation only while
/// it lives on the server only (backed, not resident, not in flight), with
/// the data the server has. Every step that changes that forgets the copy.
extension FaultHandler {
    /// A probation slot for an anonymous page being moved out, if its data is
    /// worth keeping (the server has it, or will once it is written back;
    /// zeros are not kept: a zero fill is local anyway). -1: none.
    func claimProbationSlot(region: RegionRecord, page: Int, dirty: Bool, backed: Bool) -> Int32 {
        guard let probation else { return -1 }
        // Resident until now, so any copy it has is stale: gone, even if no slot is claimed below.
        if !probation.index.isEmpty { probation.index.remove(EvictionQueue.pack(slot: region.slot, page: page)) }
        guard dirty || backed, let (slot, expired) = probation.index.claim() else { return -1 }
        budget.probation = probation.index.populated
        if expired != nil {
            counters.add(.probationExpired)
            counters.set(.probationPages, UInt64(probation.index.count))
        }
        return slot
    }

    /// A batch entry is back from the evictor (its page state already
    /// updated): its copy becomes findable if the page lives on the server
    /// only now; otherwise (failed, discarded, faulted back meanwhile, region
    /// closed) the claim is dropped.
    func settleProbation(_ entry: EvictionBatch.Entry, region: RegionRecord?) {
        guard entry.probationSlot >= 0, let probation else { return }
        if !entry.failed, let region, region.store.id == entry.region.id, region.states[entry.page].isOnServerOnly {
            probation.index.fill(entry.probationSlot, key: EvictionQueue.pack(slot: region.slot, page: entry.page))
            counters.set(.probationPages, UInt64(probation.index.count))
        } else {
            probation.index.cancel(entry.probationSlot)
        }
    }

    /// Where `page`'s probation copy is, if it has one.
    @inline(__always)
    func probationCopy(region: RegionRecord, page: Int) -> UnsafeRawPointer? {
        guard let probation, !probation.index.isEmpty,
              let slot = probation.index.lookup(EvictionQueue.pack(slot: region.slot, page: page)) else { return nil }
        return UnsafeRawPointer(bitPattern: probation.address(of: slot))
    }

    /// `page` was installed from its probation copy: the slot is free again.
    func tookFromProbation(region: RegionRecord, page: Int) {
        guard let probation else { return }
        probation.index.remove(EvictionQueue.pack(slot: region.slot, page: page))
        counters.add(.probationHits)
        counters.set(.probationPages, UInt64(probation.index.count))
    }

    /// `pages` of `region` were installed from the server, or discarded: any
    /// probation copy of theirs is stale from now on. A long run is one pass
    /// over the slots rather than a lookup per page.
    func forgetProbation(region: RegionRecord, pages: Range<Int>) {
        guard let probation, !probation.index.isEmpty, !pages.isEmpty else { return }
        if pages.count > probation.slotCount {
            let slot = region.slot
            probation.index.removeAll { key in
                let (owner, page) = EvictionQueue.unpack(key)
                return owner == slot && pages.contains(page)
            }
        } else {
            for page in pages { probation.index.remove(EvictionQueue.pack(slot: region.slot, page: page)) }
        }
        counters.set(.probationPages, UInt64(probation.index.count))
    }

    /// A region closed: its copies go (its slot number will name another).
    func forgetProbation(regionSlot slot: Int) {
        guard let probation, !probation.index.isEmpty else { return }
        probation.index.removeAll { EvictionQueue.unpack($0).slot == slot }
        counters.set(.probationPages, UInt64(probation.index.count))
    }
}

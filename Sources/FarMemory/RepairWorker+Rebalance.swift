import FarMemSystem

/// Moving extents back to where the hash puts them: after a server rejoins,
/// its share of every region is copied to it (as a repair copies) and dropped
/// from the server that held it meanwhile, which discards it and gives back
/// its reservation. Reads that raced the move read again (`ExtentCopies.moves`).
extension RepairWorker {
    /// Extents of `region` with their copies but not where the hash puts them
    /// among the live servers: a rebalance is due (or a server is full).
    func misplacedExtents(in region: StoreRegion) -> Int {
        guard let copies = region.copies else { return 0 }
        let live = membership.live
        let wanted = min(placement.replicas, live.nonzeroBitCount)
        return (0..<copies.extentCount).reduce(0) { count, extent in
            let holders = copies.holders(extent) & live
            guard holders.nonzeroBitCount >= wanted, wanted > 0 else { return count }
            return count + (placement.replicaSet(region: region.id, extent: extent, among: live).mask & ~holders != 0 ? 1 : 0)
        }
    }

    /// Once nothing is under-replicated: an extent whose copies are not
    /// where the hash puts them among the live servers (a server rejoined,
    /// and its share comes back to it) is copied to the server the hash
    /// picks, as a repair does, and then dropped from the one it no longer
    /// picks. Paced like repairs; the move counter keeps reads honest. Not
    /// with four copies: a move needs a fifth write target for a while, and
    /// a replica list holds four.
    func rebalanceRound() {
        guard placement.replicas < 4 else { return }
        for region in regions() {
            guard let copies = region.copies else { continue }
            for extent in 0..<copies.extentCount {
                guard running.load(ordering: .relaxed) else { return }
                let live = membership.live
                let holders = copies.holders(extent) & live
                guard holders.nonzeroBitCount >= placement.replicas else { continue }   // lost, or a repair's job
                // Among all live servers, a full one included: leaving it out would
                // move its extents away and back round after round.
                let wanted = placement.replicaSet(region: region.id, extent: extent, among: live)
                guard wanted.count == placement.replicas else { continue }
                let missing = wanted.mask & ~holders, surplus = holders & ~wanted.mask
                guard missing != 0, surplus != 0 else { continue }
                let target = placement.replicaSet(region: region.id, extent: extent, among: missing)[0]
                guard unplaceable & (1 << UInt64(target)) == 0 else { continue }   // full this round
                guard repair(region, copies, extent: extent, to: target) else { continue }
                let source = ReplicaList(surplus)[0]
                // Only while the copies stay complete without it (the new one may have failed already).
                let others = copies.holders(extent) & membership.live & ~(1 << UInt64(source))
                guard others & (1 << UInt64(target)) != 0, others.nonzeroBitCount >= placement.replicas else { continue }
                dropCopy(region, copies, extent: extent, from: source)
                _ = extentsMoved.add(1, ordering: .relaxed)
                sleepSeconds(0.002)
            }
        }
    }

    /// Stops using `server`'s copy of the extent, then discards it there and
    /// gives back the reservation it no longer needs.
    private func dropCopy(_ region: StoreRegion, _ copies: ExtentCopies, extent: Int, from server: Int) {
        copies.removeHolder(extent, server)
        guard discardCopy(region, copies, extent: extent, on: server) else { return }
        releaseUnneeded(region, copies, on: server)
    }

    /// Lowers `server`'s reservation for the region to the extents placed on
    /// it (after a move away, or a repair that did not complete). Housekeeping:
    /// a failure here marks nothing down (real traffic tells), it is tried
    /// again after the next move or repair.
    func releaseUnneeded(_ region: StoreRegion, _ copies: ExtentCopies, on server: Int) {
        let needed = copies.pagesPlaced(on: server)
        guard needed < copies.reservation(server) else { return }
        do {
            copies.setReservation(server, try member(server).reserve(region, pages: needed, pageCount: copies.pageCount))
        } catch {
            logger.debug("the reservation on \(membership.servers[server]) stays at \(copies.reservation(server)) pages for now: \(error)")
        }
    }

    /// Discards `server`'s pages of an extent it is no longer a write target
    /// of. Writes that took the targets before may still be on their way
    /// there: the discard waits until no write to the extent is under way (up
    /// to the failover time-out and a bit, after which such a write has given
    /// up on the server). One that lands later anyway is refused or ignored
    /// (ReplicatedPageStore.write) and at worst leaves a stale page there that
    /// nothing reads; a later copy to the server empties the extent first.
    @discardableResult
    func discardCopy(_ region: StoreRegion, _ copies: ExtentCopies, extent: Int, on server: Int) -> Bool {
        let deadline = monotonicSeconds() + drainSeconds
        while copies.writesUnderWay(extent), monotonicSeconds() < deadline, running.load(ordering: .relaxed) { sleepSeconds(0.001) }
        do {
            try member(server).discard(region, first: extent * Placement.extentPages, count: copies.pages(in: extent))
            return true
        } catch {
            if case .regionGone = error { return false }
            membership.markDown(server, reason: "a discard of a copy it no longer holds failed: \(error)", incarnation: members.incarnations[server])
            return false
        }
    }
}

import FarMemProtocol
import FarMemSystem

/// Fetching: the faulting page and the pages the trend predicts in one
/// store read, prefetched pages installed in runs, and a batch kept when an
/// install met a pending event.
extension FaultHandler {
    /// Fetches the faulting page, and the pages the trend predicts, into
    /// `fetchedData` with one request, reconnecting within the retry window.
    /// Returns how many pages arrived (0: failed, and the page was poisoned so
    /// that the access raises SIGBUS instead of hanging forever).
    func fetch(region: RegionRecord, page: Int, trend: (stride: Int, window: Int)?, address: UInt) -> Int {
        // A kept batch waits for its own page (another thread's fault may come
        // first); its invalidation rules hold however long it waits.
        if let held = kept, held.region == region.slot, keptPages[0] == UInt64(page) {
            trace.record(page, .servedFromKept, extra: held.count)
            kept = nil
            swap(&fetchBuffer, &keptBuffer)
            swap(&fetchPages, &keptPages)
            fetchedData = UnsafeRawPointer(fetchBuffer)
            // Prefetched pages are still good while they live on the server
            // only; stop at the first that does not (installs stay in runs),
            // and never install past the budget.
            var count = 1
            let limit = min(held.count, max(1, budget.headroom))
            while count < limit {
                guard region.states[Int(fetchPages[count])].isOnServerOnly else { break }
                count += 1
            }
            return count
        }
        let count = predictPages(region: region, page: page, trend: trend)
        do {
            fetchedData = try store.read(region.store, pages: UnsafeBufferPointer(start: fetchPages, count: count), into: fetchBuffer)
            trace.record(page, .fetched, extra: count - 1)
            return count
        } catch {
            // The prefetched pages may be what failed (another extent, its copies
            // lost): the faulting page alone before giving up on it.
            if count > 1, let alone = try? store.read(region.store, pages: UnsafeBufferPointer(start: fetchPages, count: 1),
                                                      into: fetchBuffer) {
                fetchedData = alone
                return 1
            }
            logger.error("page \(page) of region \(region.store.id) could not be fetched (\(error)); the access raises SIGBUS")
        }
        counters.add(.poisoned)
        do { try uffd.poison(address, length: 4096) } catch {
            logger.critical("UFFDIO_POISON failed (\(error)); waking the thread, which will fault again")
            try? uffd.wake(address, length: 4096)
        }
        return 0
    }

    /// Puts the faulting page and the pages the trend predicts in
    /// `fetchPages`; returns how many. Predicted pages live on the server
    /// only, follow one another (stopping at the first that does not, so
    /// installs stay in runs), and fit in the room left under the budget.
    func predictPages(region: RegionRecord, page: Int, trend: (stride: Int, window: Int)?) -> Int {
        var count = 1
        fetchPages[0] = UInt64(page)
        let headroom = budget.headroom - 1
        guard let trend, headroom > 0 else { return count }
        var candidate = page
        for _ in 0..<min(trend.window, headroom) {
            candidate += trend.stride
            guard candidate >= 0, candidate < region.pageCount else { break }
            // A page with a probation copy comes back locally when it faults: not over the network now.
            guard region.states[candidate].isOnServerOnly, probationCopy(region: region, page: candidate) == nil else { break }
            fetchPages[count] = UInt64(candidate)
            count += 1
        }
        return count
    }

    /// Installs prefetched pages (slots 1...count of the fetched data):
    /// write-protected and clean, or writable and dirty when writes are
    /// predicted (`dirty`: the fault's one decision, see `WritePredictor`).
    /// Contiguous pages go in with one UFFDIO_COPY. A page that is already
    /// there or meets a pending event ends the run: the rest stay on the
    /// server, which is always correct.
    func installPrefetched(region: RegionRecord, count: Int, dirty: Bool) {
        var slot = 1
        while slot <= count {
            guard let (first, address, run) = prefetchRun(region: region, from: slot, count: count) else { return }
            for i in 0..<run {
                verifier.checkFetched(region, page: first + i, data: fetchedData + (slot + i) * 4096, how: "prefetched",
                                      source: self.store.lastReadSource)
                region.states[first + i] = region.states[first + i].installed(dirty: dirty)
            }
            let copied: Int
            do {
                copied = try uffd.copy(to: address, from: fetchedData + slot * 4096, length: run * 4096, writeProtect: !dirty) / 4096
            } catch {
                for i in 0..<run { region.states[first + i] = region.states[first + i].notInstalled() }
                if error == .again {
                    awaitingEvent = true
                    keepRemainder(region: region, from: slot, count: count)
                }
                return
            }
            for i in 0..<run {
                let page = first + i
                trace.record(page, i < copied ? .prefetchInstalled : .prefetchStopped, extra: dirty ? 1 : 0)
                if i >= copied { region.states[page] = region.states[page].notInstalled(); continue }
                budget.resident += 1
                if !region.states[page].isQueued {
                    region.states[page] = region.states[page].enqueued()
                    queue.push(EvictionQueue.pack(slot: region.slot, page: page))
                }
            }
            counters.add(.prefetched, UInt64(copied))
            // Fetched while a probation copy of theirs was still there: it is stale once they change.
            forgetProbation(region: region, pages: first..<(first + copied))
            if !dirty { writes.installedClean(copied) }
            if copied < run {
                keepRemainder(region: region, from: slot + copied, count: count)
                return
            }
            slot += run
        }
    }

    /// The fetched pages from `slot` on (of slots 1...count) that follow one
    /// another both in the region and in memory: the first, where it is
    /// mapped, and how many. Nil if the first is not mapped.
    func prefetchRun(region: RegionRecord, from slot: Int, count: Int) -> (first: Int, address: UInt, length: Int)? {
        let first = Int(fetchPages[slot])
        guard let address = region.address(of: first) else { return nil }
        var length = 1
        while slot + length <= count, Int(fetchPages[slot + length]) == first + length,
              region.address(of: first + length) == address + UInt(length * 4096) { length += 1 }
        return (first, address, length)
    }

    /// Keeps prefetched pages that could not be installed (an event was
    /// pending): in a scan the next fault is the first of them, and `fetch`
    /// then installs the kept copies (checked and invalidated like any kept
    /// batch) instead of crossing the network again.
    func keepRemainder(region: RegionRecord, from slot: Int, count: Int) {
        let n = count - slot + 1
        guard n > 0 else { return }
        keptBuffer.copyMemory(from: fetchedData + slot * 4096, byteCount: n * 4096)
        for i in 0..<n { keptPages[i] = fetchPages[slot + i] }
        kept = (region.slot, n)
    }
}

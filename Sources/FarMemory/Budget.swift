/// One shard's share of the local-memory budget: what it counts, and the
/// decisions that follow from the counts. Owned by the handler thread.
struct Budget: Equatable {
    /// Pages this shard may hold: resident, plus staged until their slots
    /// are emptied, plus the probation area's pages in use.
    let limit: Int
    /// Pages moved out per eviction round.
    let batchSize: Int
    /// Eviction starts above this many resident pages: two batches below
    /// what the probation area leaves of the limit, so eviction runs ahead of
    /// the throttle and staged pages still fit while the evictor catches up.
    var highWater: Int { max(limit - 2 * batchSize - probation, batchSize) }
    /// Installed by this handler and not moved out (unevictable ones excluded).
    var resident = 0
    /// Moved into staging; their slots are not emptied yet.
    var staged = 0
    /// Resident pages the kernel will not let FarMem move: outside the budget.
    var unevictable = 0
    /// Probation slots used so far (their memory is populated). The area
    /// grows only as eviction fills it, so a working set that fits the budget
    /// gives it nothing, and the resident set makes way as it grows.
    var probation = 0

    init(limit: Int, batchSize: Int) {
        self.limit = limit
        self.batchSize = batchSize
    }

    /// An eviction round is due.
    var needsEviction: Bool { resident > highWater }
    /// Where an eviction round stops: half a batch below the high-water mark.
    var evictionTarget: Int { highWater - batchSize / 2 }
    /// At the limit: a new page waits until eviction has made room.
    var isFull: Bool { resident + staged + probation >= limit }
    /// Pages that may still come in before the limit (room for prefetching).
    var headroom: Int { limit - resident - staged - probation }
    /// Pages held above the limit (write-backs draining), or 0.
    var overshoot: Int { max(0, resident + staged + probation - limit) }
    /// Memory is over the high-water mark once the pages set aside outside
    /// the budget are counted too: worth trying to move those again.
    var overHighWaterWithUnevictable: Bool { resident + unevictable > highWater }

    /// The gauges in the statistics.
    func publish(to counters: PagerCounters) {
        counters.set(.residentPages, UInt64(resident))
        counters.set(.stagedPages, UInt64(staged))
        counters.set(.unevictablePages, UInt64(unevictable))
        if overshoot > 0, UInt64(overshoot) > counters.get(.budgetOvershoot) { counters.set(.budgetOvershoot, UInt64(overshoot)) }
    }
}

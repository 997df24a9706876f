#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// The eviction worker: writes staged dirty pages to the page store, empties
/// their staging slots, and sends discards. It owns its own page store (and
/// links), so a write-back never delays a fault's fetch. It never touches a region's
/// memory; it reads only staging slots, which the handler filled by
/// UFFDIO_MOVE and nobody else maps, so they are always populated.
final class Evictor: @unchecked Sendable {
    enum Job {
        case evict(EvictionBatch)
        case discard(StoreRegion, first: Int, count: Int)
        /// Empty these staging slots (data no longer wanted) and return them.
        case release([Int32])
        /// Ask the server one cheap question (after a failed write-back: is it back?).
        case probe
        /// Signalled once every job submitted before it is done (a memfd
        /// region's second mapping is unmapped only after that: write-backs read it).
        case barrier(DispatchSemaphore)
        case stop
    }

    /// What the evictor tells the fault handler (through its inbox).
    enum Report {
        /// A write-back round is over (its failed entries are marked).
        case batchDone(EvictionBatch)
        /// These staging slots are empty again and free for reuse.
        case slotsReleased([Int32])
        /// The answer to `.probe`: whether the server answered.
        case serverAnswered(Bool)
        /// Staging slots could not be emptied (MADV_DONTNEED failed; they are
        /// retried) or, with false, all of them are empty again.
        case releaseFailing(Bool)
    }

    /// Write-backs, discards and probes go here (the handler fetches through its own store).
    private let store: PageStore
    private let staging: StagingArea
    /// Where batch entries with a probation slot are copied (their slots are
    /// the handler's to hand out; the evictor writes only those it was given).
    private let probation: ProbationArea?
    private let counters: PagerCounters
    private let logger: Logger
    /// Page verification: hash every staged page (see `PageVerifier`).
    private let verifiesPages: Bool
    private let jobs = Mutex<[Job]>([])
    private let condition: Condition
    /// Where reports go: the fault handler's inbox.
    private let report: @Sendable (Report) -> Void
    private var pageList: [UInt64] = []
    /// hugetlb pages are read into here from their file (`Entry.sourceFile`).
    private let fileReads = UnsafeMutableRawPointer.allocate(byteCount: ProtocolLimits.maxBatchPages * 4096, alignment: 4096)
    /// Written-back slots not yet emptied. Emptying is one MADV_DONTNEED per
    /// contiguous run, and each is a REMOVE event whose mmap_changing window
    /// makes the handler's installs fail with EAGAIN, so slots are emptied in
    /// large groups: a quarter of the staging area, or whenever the evictor
    /// has been idle for a millisecond (the handler may be waiting for them).
    private var pendingRelease: [Int32] = []
    private var releaseThreshold: Int { max(1, staging.slotCount / 4) }
    /// Slots whose MADV_DONTNEED failed: never handed back populated (a move
    /// into one would fail); tried again every 100 ms.
    private var unreleased: [Int32] = []
    private var nextUnreleasedRetry = 0.0

    init(store: PageStore, staging: StagingArea, probation: ProbationArea?, counters: PagerCounters, logger: Logger, verifiesPages: Bool = false,
         report: @escaping @Sendable (Report) -> Void) {
        self.verifiesPages = verifiesPages
        self.probation = probation
        self.store = store
        self.staging = staging
        self.counters = counters
        self.logger = logger
        self.report = report
        self.condition = Condition()
        pageList.reserveCapacity(ProtocolLimits.maxBatchPages)
    }

    deinit { fileReads.deallocate() }

    /// Set (under the jobs lock) once the evictor has stopped: a barrier
    /// submitted afterwards is signalled at once instead of waiting forever.
    private var stopped = false

    func submit(_ job: Job) {
        let lateBarrier: DispatchSemaphore? = jobs.withLock { jobs in
            if stopped, case .barrier(let done) = job { return done }
            jobs.append(job)
            return nil
        }
        lateBarrier?.signal()
        condition.signal()
    }

    func run() {
        var pending: [Job] = []
        while true {
            let timeout: Int? = !pendingRelease.isEmpty ? 1 : (!unreleased.isEmpty ? 100 : nil)
            let woken = condition.wait(until: { jobs.withLock { !$0.isEmpty } }, timeoutMilliseconds: timeout)
            // On a deadline, not only when idle: a steady stream of jobs must not starve it.
            if !unreleased.isEmpty, monotonicSeconds() >= nextUnreleasedRetry { retryUnreleased() }
            if !woken {
                releasePending()
                continue
            }
            jobs.withLock { swap(&pending, &$0) }
            for job in pending {
                switch job {
                case .stop:
                    releasePending()
                    // Nothing more will run: let waiters on barriers go.
                    let left = jobs.withLock { jobs in
                        stopped = true
                        defer { jobs.removeAll() }
                        return jobs
                    }
                    var afterStop = false
                    for job in pending + left {
                        if case .stop = job { afterStop = true }
                        if afterStop, case .barrier(let done) = job { done.signal() }
                    }
                    return
                case .evict(let batch):
                    writeBack(batch)
                case .discard(let region, let first, let count):
                    discard(region, first: first, count: count)
                case .release(let slots):
                    releaseAndHandBack(slots)
                case .probe:
                    report(.serverAnswered(store.probe()))
                case .barrier(let done):
                    done.signal()
                }
            }
            pending.removeAll(keepingCapacity: true)
            if pendingRelease.count >= releaseThreshold { releasePending() }
        }
    }

    private func releasePending() {
        guard !pendingRelease.isEmpty else { return }
        releaseAndHandBack(pendingRelease)
        pendingRelease.removeAll(keepingCapacity: true)
    }

    /// Writes the batch's dirty pages (grouped by region, up to the protocol's
    /// batch limit), reports the batch, and queues its written slots for release.
    private func writeBack(_ batch: EvictionBatch) {
        var index = 0
        let entries = batch.entries.count
        if let probation {
            // Copies kept for a second chance, before the staging slots can be emptied.
            for entry in batch.entries where entry.probationSlot >= 0 {
                UnsafeMutableRawPointer(bitPattern: probation.address(of: entry.probationSlot))!
                    .copyMemory(from: entry.bytes(in: staging), byteCount: 4096)
            }
        }
        if verifiesPages {
            // Every staged page, clean ones too (`PageVerifier.checkCleanDrop`); hugetlb pages once read below.
            for i in 0..<entries where batch.entries[i].sourceFile < 0 {
                batch.entries[i].hash = PageVerifier.hash(ofStaged: batch.entries[i].bytes(in: staging))
            }
        }
        while index < entries {
            let region = batch.entries[index].region
            var group: [Int] = []
            while index < entries, batch.entries[index].region.id == region.id, group.count < ProtocolLimits.maxBatchPages {
                if batch.entries[index].dirty { group.append(index) }
                index += 1
            }
            guard !group.isEmpty else { continue }
            pageList.removeAll(keepingCapacity: true)
            for i in group { pageList.append(UInt64(batch.entries[i].page)) }
            let fromFile = batch.entries[group[0]].sourceFile >= 0
            if fromFile, !readFromFile(batch, group) {
                // Not read (cannot happen short of a bad descriptor): the pages
                // stay resident and dirty, never written back as zeros.
                logger.error("hugetlb pages of region \(region.id) could not be read from their file; they stay resident")
                for i in group { batch.entries[i].failed = true }
                continue
            }
            let bytes = { (k: Int) -> UnsafeRawPointer in
                fromFile ? UnsafeRawPointer(self.fileReads + k * 4096) : batch.entries[group[k]].bytes(in: self.staging)
            }
            if verifiesPages, fromFile {
                for (k, i) in group.enumerated() { batch.entries[i].hash = PageVerifier.hash(ofStaged: bytes(k)) }
            }
            let outcome = outcome(of: "write-back of \(group.count) pages of region \(region.id)") { () throws(StoreError) in
                try pageList.withUnsafeBufferPointer { pages throws(StoreError) in
                    try store.write(region, pages: pages, source: bytes)
                }
            }
            switch outcome {
            case .done:
                counters.add(.writeBacks, UInt64(group.count))
            case .regionGone:
                // Closed here meanwhile (the handler then drops the slots), or lost
                // on the server (it restarted): either way the staged copy is
                // the one to keep, so the handler restores it if the region lives.
                for i in group { batch.entries[i].failed = true }
            case .failed:
                counters.add(.writeBackFailures, UInt64(group.count))
                for i in group { batch.entries[i].failed = true }
            case .lost:
                counters.add(.writeBackFailures, UInt64(group.count))
                for i in group {
                    batch.entries[i].failed = true
                    batch.entries[i].lost = true
                }
            }
        }
        // The pages are on the server: report now (parked faults wake); their
        // slots are emptied later, in a group, and returned then.
        for entry in batch.entries where !entry.failed && entry.stagingSlot >= 0 { pendingRelease.append(entry.stagingSlot) }
        report(.batchDone(batch))
    }

    /// Reads a group of hugetlb pages from their file into `fileReads` (a
    /// hole, a huge page the application removed meanwhile, reads as zeros).
    /// False if a read failed.
    private func readFromFile(_ batch: EvictionBatch, _ group: [Int]) -> Bool {
        for (k, i) in group.enumerated() {
            let entry = batch.entries[i]
            guard pread(entry.sourceFile, fileReads + k * 4096, 4096, off_t(entry.page) << 12) == 4096 else { return false }
        }
        return true
    }

    private func discard(_ region: StoreRegion, first: Int, count: Int) {
        let outcome = outcome(of: "discard of \(count) pages of region \(region.id)") { () throws(StoreError) in
            try store.discard(region, first: first, count: count)
        }
        if case .done = outcome { counters.add(.discards, UInt64(count)) }
    }

    /// Empties the slots, then hands those it emptied back to the fault
    /// handler for reuse; the others wait in `unreleased`.
    private func releaseAndHandBack(_ slots: [Int32]) {
        let (emptied, failed) = release(slots)
        if !emptied.isEmpty { report(.slotsReleased(emptied)) }
        guard !failed.isEmpty else { return }
        if unreleased.isEmpty {
            report(.releaseFailing(true))
            nextUnreleasedRetry = monotonicSeconds() + 0.1
        }
        unreleased += failed
    }

    private func retryUnreleased() {
        guard !unreleased.isEmpty else { return }
        nextUnreleasedRetry = monotonicSeconds() + 0.1
        let (emptied, failed) = release(unreleased)
        unreleased = failed
        if !emptied.isEmpty { report(.slotsReleased(emptied)) }
        if unreleased.isEmpty {
            logger.notice("staging slots can be emptied again")
            report(.releaseFailing(false))
        }
    }

    /// Empties staging slots with MADV_DONTNEED, one call per contiguous run.
    /// A locked staging area (an mlockall of the application's: EINVAL) is
    /// unlocked first; anything else that fails keeps the slots out of use.
    private func release(_ slots: [Int32]) -> (emptied: [Int32], failed: [Int32]) {
        guard !slots.isEmpty else { return ([], []) }
        let sorted = slots.sorted()
        var emptied: [Int32] = [], failed: [Int32] = []
        var runStart = sorted.startIndex
        for i in sorted.indices {
            guard i + 1 == sorted.endIndex || sorted[i + 1] != sorted[i] + 1 else { continue }
            let run = sorted[runStart...i]
            do {
                do {
                    try MemoryMapping.advise(staging.address(of: run.first!), length: run.count * 4096, .dontNeed)
                } catch .invalidArgument {
                    staging.unlock()   // an mlock or mlockall of the application's covered staging
                    try MemoryMapping.advise(staging.address(of: run.first!), length: run.count * 4096, .dontNeed)
                }
                emptied += run
            } catch {
                if failed.isEmpty, unreleased.isEmpty {
                    logger.error("staging slots could not be emptied (MADV_DONTNEED: \(error)); they are kept out of use and retried every 100 ms")
                }
                failed += run
            }
            runStart = i + 1
        }
        return (emptied, failed)
    }

    enum Outcome { case done, regionGone, failed, lost }

    /// Runs `body` (the store retries inside) and says what came of it.
    private func outcome(of what: String, _ body: () throws(StoreError) -> Void) -> Outcome {
        do {
            try body()
            return .done
        } catch {
            switch error {
            case .regionGone: return .regionGone
            case .lost:
                logger.error("\(what): \(error); those pages stay in local memory for good")
                return .lost
            case .refused, .unavailable:
                logger.error("\(what) failed: \(error)")
                return .failed
            }
        }
    }
}

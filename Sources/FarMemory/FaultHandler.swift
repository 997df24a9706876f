import CFarMemSys
import Dispatch
import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// The fault-handler thread. It alone owns page state, so the fault path takes
/// no lock: it reads userfaultfd events, installs pages (zero-filled, or
/// fetched from its own page store), resolves write-protect faults (dirty
/// tracking), applies the application's REMOVE/UNMAP/REMAP events, and keeps
/// the resident set under budget by moving victims into staging for the evictor.
///
/// One file per step of the data flow: this one has the state, the loop and
/// dispatch; FaultHandler+Faults, +Fetch, +Events, +Victims and +WriteBacks
/// the rest. Members are internal only so that those files can share them:
/// nothing but the handler thread may touch them.
///
/// Kernel rules it follows (shared/reference/uffd-facts.md):
/// - it never reads or writes region memory, and never madvises or munmaps;
/// - page state is updated before the ioctl that lets the faulting thread run;
/// - EAGAIN (an event is pending, mmap_changing) undoes the state change and
///   defers the fault until the event has been read. read() hands out pending
///   faults before pending events, so waking the thread instead would refault
///   ahead of the event, again and again;
/// - EEXIST means the page is already there: wake the waiters.
final class FaultHandler: @unchecked Sendable {
    enum Command {
        case add(RegionRecord, DispatchSemaphore)
        /// No new eviction rounds from now on (shutting down: the evictor stops next).
        case suspendEviction(DispatchSemaphore)
        /// Unregister and forget a region; `done` gets the extents to unmap.
        case remove(RegionRecord, @Sendable ([Extent]) -> Void)
        /// Where a region's pages are mapped now. Answered after every event
        /// already read (an mremap that returned before the question was sent
        /// is applied), so it doubles as a barrier.
        case extents(RegionRecord, @Sendable ([Extent]) -> Void)
        case stop
    }

    struct Inbox {
        var commands: [Command] = []
        var reports: [Evictor.Report] = []
    }

    let uffd: Userfaultfd
    /// Fetches go here (the evictor has a store of its own).
    let store: PageStore
    let staging: StagingArea
    /// Evicted anonymous pages kept locally for a while (nil: off, or a budget too small).
    let probation: ProbationArea?
    let counters: PagerCounters
    let configuration: FarMemoryConfiguration
    let logger: Logger
    let notifier: EventNotifier
    let inbox = Mutex(Inbox())
    /// Set with every inbox message: ends a spin so the inbox is drained promptly.
    let inboxPending = Atomic<Bool>(false)
    let spinNanoseconds: UInt64
    /// Spinning for faults while they come quickly (`adaptiveSpinning`, and no fixed spin).
    var spinPolicy: SpinPolicy?
    /// The last fetch brought a prefetch batch: the next fault is that far
    /// away, and a spin would only take the CPU the evictor and the server
    /// need to keep the stream going (a strided scan lost its stream that way).
    var lastFetchWasBatch = false
    /// When the handler last finished with faults (its userfaultfd read
    /// empty): the policy measures from there, whatever woke the loop since.
    var idleSince: UInt64 = 0
    var evictor: Evictor!

    /// By slot (eviction-queue entries and batches name regions by slot).
    var regions: [RegionRecord?] = []
    /// The same regions, live ones only: what the fault path scans.
    var liveRegions: [RegionRecord] = []
    var queue = EvictionQueue(capacity: 1024)
    /// Unevictable pages (the kernel refused to move them twice), tried again
    /// now and then: a pin ends, an area is munlocked. Not in `queue`.
    var setAside = EvictionQueue(capacity: 1024)
    /// When to try set-aside pages again (CLOCK_MONOTONIC ns; 0: at once).
    var nextSetAsideRetry: UInt64 = 0
    /// When a refused move may unlock staging again (see `moveOut`).
    var nextStagingUnlock: UInt64 = 0
    var spareBatches: [EvictionBatch] = []
    var budget: Budget
    /// Shutting down: no more eviction rounds.
    var evictionSuspended = false
    /// A write-back failed for good (the server did not answer within the
    /// retry window): eviction pauses, pages stay local and the budget is not
    /// kept, until the server answers a probe again.
    var writeBackOutage = false
    var nextOutageProbe: UInt64 = 0
    var probeInFlight = false
    /// Seconds before the first probe of an outage: doubles with each outage
    /// (a server that answers STATS but refuses writes must not make eviction
    /// bounce every second), back to 1 after a write-back succeeds.
    var outageBackoffSeconds: UInt64 = 1
    /// Staging slots cannot be emptied (the evictor says so): eviction cannot
    /// make room, so faults are not held for it.
    var stagingBlocked = false
    /// Failed write-backs whose move back met EAGAIN, retried after the event.
    var pendingRestores: [EvictionBatch.Entry] = []
    var running = true

    let messages = UserfaultfdMessages()
    /// Faults held back while the budget is full or an event is pending.
    var deferred = DeferredFaults(capacity: 1024)
    var heldFaultsPeak = 0
    /// An ioctl met EAGAIN: faults wait. mmap_changing clears only when the
    /// thread behind the event resumes after we read it, so the wait ends when
    /// the evictor reports (its madvise has returned), at the next event, or
    /// after a 1 ms poll for an application thread's madvise/munmap/mremap.
    var awaitingEvent = false
    /// Fetched pages land here: the faulting page first, then the prefetched ones.
    var fetchBuffer: UnsafeMutableRawPointer
    var fetchPages: UnsafeMutablePointer<UInt64>
    /// Where the last fetch's pages are: `fetchBuffer` over TCP, the RDMA
    /// channel's registered buffer over RDMA (installed from there, no copy).
    var fetchedData: UnsafeRawPointer
    var trends: StreamPrefetcher
    var writes: WritePredictor
    var recency: Recency
    let verifier: PageVerifier
    let trace: PageTrace
    /// A fetched batch whose first page's install met EAGAIN, kept (buffers
    /// swapped, no copy) for the retry so the deferred fault crosses the network
    /// once. Dropped if any of its pages is written back or discarded meanwhile.
    var keptBuffer: UnsafeMutableRawPointer
    var keptPages: UnsafeMutablePointer<UInt64>
    var kept: (region: Int, count: Int)?
    let zeroPage = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    /// Counted by `ForkGate` while this process forks; the handler answers
    /// each request (`forkAcknowledged`) and reads its userfaultfd into
    /// `forkStash` only, until none is left.
    let forkRequests = Atomic<Int>(0)
    let forkRequestNumber = Atomic<UInt64>(0)
    let forkAcknowledged = Atomic<UInt64>(0)
    let forkStash = UserfaultfdMessages(capacity: 4096)

    /// Forked children that map shared regions (`ForkedProcess`), their
    /// userfaultfds in `childEvents` (one descriptor for the poll).
    var children: [ForkedProcess] = []
    var childEvents: Epoll? {
        didSet { pollDescriptors = [uffd.descriptor.rawValue, notifier.descriptor.rawValue, childEvents?.descriptor.rawValue ?? -1] }
    }
    var pollDescriptors: [Int32] = []
    var nextOrigin: UInt32 = 1
    /// When to ask next whether each child still lives (CLOCK_MONOTONIC ns).
    var nextChildCheck: UInt64 = 0
    /// Where the fault being handled came from: this process's userfaultfd or
    /// a child's. The fault path's ioctls go there; eviction's go everywhere.
    var target: Userfaultfd

    init(uffd: Userfaultfd, store: PageStore, staging: StagingArea, probation: ProbationArea?, counters: PagerCounters,
         configuration: FarMemoryConfiguration, logger: Logger, batchSize: Int, budgetPages: Int) throws(Errno) {
        self.uffd = uffd
        target = uffd
        self.store = store
        self.staging = staging
        self.probation = probation
        self.counters = counters
        self.configuration = configuration
        self.logger = logger
        spinNanoseconds = UInt64(max(0, configuration.handlerSpinMicroseconds)) * 1000
        if spinNanoseconds == 0, configuration.adaptiveSpinning {
            spinPolicy = SpinPolicy(limitNanoseconds: UInt64(configuration.adaptiveSpinLimitMicroseconds) * 1000)
        }
        budget = Budget(limit: budgetPages, batchSize: batchSize)
        notifier = try EventNotifier()
        // Prefetch at most an eighth of the budget at once, and one protocol batch.
        let window = min(configuration.prefetchPages, budgetPages / 8, ProtocolLimits.maxBatchPages - 1)
        trends = StreamPrefetcher(maxWindow: window)
        writes = WritePredictor(enabled: configuration.predictsWrites)
        recency = Recency(budgetPages: budgetPages, enabled: configuration.keepsRefaultedPages)
        verifier = PageVerifier(enabled: configuration.verifiesPages, counters: counters, logger: logger)
        trace = PageTrace(pages: configuration.tracedPages)
        (store as? ReplicatedPageStore)?.recordsReadSource = configuration.verifiesPages
        fetchBuffer = .allocate(byteCount: (window + 1) * 4096, alignment: 4096)
        // Page lists hold a hugetlb unit's 512 page numbers too.
        fetchPages = .allocate(capacity: max(window + 1, 512))
        fetchedData = UnsafeRawPointer(fetchBuffer)
        keptBuffer = .allocate(byteCount: (window + 1) * 4096, alignment: 4096)
        keptPages = .allocate(capacity: max(window + 1, 512))   // swapped with fetchPages
        zeroPage.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        // Batches come back from the evictor; more are made only if rounds end short.
        for _ in 0..<(staging.slotCount / batchSize + 1) { spareBatches.append(EvictionBatch(capacity: batchSize)) }
    }

    deinit {
        deferred.deallocate()
        fetchBuffer.deallocate()
        fetchPages.deallocate()
        keptBuffer.deallocate()
        keptPages.deallocate()
        zeroPage.deallocate()
        queue.deallocate()
        setAside.deallocate()
        notifier.close()
        for child in children { child.close() }
        childEvents?.descriptor.close()
    }

    // MARK: Other threads talk to the handler through its inbox.

    func send(_ command: Command) {
        inbox.withLock { $0.commands.append(command) }
        inboxPending.store(true, ordering: .relaxed)
        notifier.signal()
    }

    func evictorReported(_ report: Evictor.Report) {
        inbox.withLock { $0.reports.append(report) }
        inboxPending.store(true, ordering: .relaxed)
        notifier.signal()
    }

    // MARK: The loop

    func run() {
        while running {
            if forkRequested { waitOutFork() }
            spinForMessages()
            // While waiting for an event, poll with a short time-out: should the
            // event never come (the change was abandoned), deferred faults still go on.
            probeIfOutage()
            let ready = poll()
            if ready < 0 {
                // Without its handler every far page would hang its thread forever:
                // stop loudly instead.
                fatalError("FarMemory: poll on userfaultfd failed: \(Errno(negated: Int32(truncatingIfNeeded: ready)))")
            }
            if ready == 0 { awaitingEvent = false }
            if ready & 1 != 0, spinPolicy != nil { spinPolicy!.observe(waited: fm_now_ns() &- idleSince, slept: true) }
            if ready & 2 != 0 {
                notifier.drain()
                drainInbox()
            }
            retryRestores()
            evictIfNeeded()
            serveDeferred()
            readMessages()   // evicts and serves deferred faults after each batch itself
            if !children.isEmpty { serveChildren() }
        }
        // Stopped: a fork under way (or to come) must not wait for this thread.
        forkAcknowledged.store(.max, ordering: .releasing)
    }

    /// Waits for a message: bit 0 our userfaultfd, bit 1 the inbox, bit 2 a child's userfaultfd.
    private func poll() -> Int64 {
        guard childEvents != nil else {
            return Int64(fm_poll2(uffd.descriptor.rawValue, notifier.descriptor.rawValue, pollTimeoutMilliseconds))
        }
        // Children are asked once a second whether they still live.
        let timeout = pollTimeoutMilliseconds
        return fm_poll_many(pollDescriptors, 3, timeout < 0 ? 1000 : min(timeout, 1000))
    }

    /// At the budget: the next fault waits until eviction has made room
    /// (eviction runs first whenever it can; it cannot while every staging slot
    /// is in flight or an event is pending). Not while eviction is paused or
    /// cannot empty staging: nothing would make room, and a fault held for it
    /// would wait forever.
    @inline(__always)
    var mustThrottle: Bool {
        !evictionSuspended && !writeBackOutage && !stagingBlocked && budget.isFull
    }

    /// Sleep in poll() until a message, or: 1 ms while waiting for an event
    /// (should it never come, the held faults still go on); until the next
    /// outage probe or set-aside retry is due.
    var pollTimeoutMilliseconds: Int32 {
        if awaitingEvent { return 1 }
        guard !evictionSuspended else { return -1 }
        var due: UInt64?
        if writeBackOutage, !probeInFlight { due = nextOutageProbe }
        // Only with a free slot: one coming back wakes the loop through the inbox.
        if !writeBackOutage, setAside.count > 0, staging.freeCount > 0, budget.overHighWaterWithUnevictable {
            due = min(due ?? .max, nextSetAsideRetry)
        }
        guard let due else { return -1 }
        let now = fm_now_ns()
        return due <= now ? 0 : Int32(min((due - now) / 1_000_000 + 1, 1000))
    }

    /// Serves held faults in order while there is room and no event is
    /// pending. A fault that meets EAGAIN is held again (at the back) and sets
    /// `awaitingEvent`, which ends the loop.
    func serveDeferred() {
        while !mustThrottle, !awaitingEvent, !forkRequested, let message = deferred.popFirst() {
            handleFault(message)
            evictIfNeeded()
        }
    }

    /// Handler placement: with `handlerSpinMicroseconds` > 0 the handler keeps
    /// reading (non-blocking) for that long after its last message before it
    /// sleeps in poll(), so a fault that follows soon is picked up without a
    /// wake-up (about 100 us across CPUs on small VMs), at the price of a busy
    /// CPU. With `adaptiveSpinning` it spins only while faults have been coming
    /// that quickly (`SpinPolicy`).
    /// A spin returns to the loop after at most a millisecond even while
    /// faults keep coming, so that children, restores and probes are served.
    /// How long to spin now: the fixed spin if one is set, else none after a
    /// prefetch batch, else what the policy says.
    private var spinLimit: UInt64 {
        spinNanoseconds > 0 ? spinNanoseconds : lastFetchWasBatch ? 0 : spinPolicy?.spinNanoseconds ?? 0
    }

    func spinForMessages() {
        var limit = spinLimit
        guard limit > 0 else { return }
        let start = fm_now_ns()
        let end = start + 1_000_000
        var deadline = start + limit
        while true {
            let now = fm_now_ns()
            guard now < deadline, now < end, !inboxPending.load(ordering: .relaxed), !awaitingEvent, running, !forkRequested else { return }
            let waited = now &- idleSince
            guard readMessages() > 0 else { continue }
            spinPolicy?.observe(waited: waited, slept: false)
            limit = spinLimit
            guard limit > 0 else { return }
            deadline = fm_now_ns() + limit
        }
    }

    /// Reads and handles every pending message; returns how many there were.
    ///
    /// A batch's events are handled before its faults. The kernel counts an
    /// event as done when read() hands it out: the thread behind a REMOVE
    /// goes on and zaps its pages while the batch is still being handled. A
    /// fault read in the same batch (faults come first) but handled before
    /// the REMOVE would install the page's data from before the discard after
    /// the zap, where nothing removes it again: discarded data served back.
    /// Handled after the event, it finds the page discarded (zeros). The
    /// faulting threads are blocked meanwhile, so no access is reordered.
    /// `child`: read a forked child's userfaultfd instead of ours.
    @discardableResult
    func readMessages(from child: ForkedProcess? = nil) -> Int {
        var total = 0
        while true {
            if forkRequested { return total }   // the loop waits the fork out first
            if child == nil { configuration.testHooks?.waitWhileHeld { running } }
            let count: Int
            do { count = try (child?.uffd ?? uffd).read(into: messages) } catch {
                guard let child else { fatalError("FarMemory: reading userfaultfd failed: \(error)") }
                logger.warning("reading a forked child's userfaultfd failed (\(error)): the child is no longer served")
                child.gone = true
                return total
            }
            if count == 0 {
                if total > 0, child == nil { idleSince = fm_now_ns() }
                return total
            }
            total += count
            handleBatch(messages, count: count, from: child)
        }
    }

    /// Handles messages read together: events first (see `readMessages`),
    /// then faults; then keeps the budget and serves held faults.
    func handleBatch(_ messages: UserfaultfdMessages, count: Int, from child: ForkedProcess?) {
        if let hooks = configuration.testHooks, (0..<count).contains(where: { !messages[$0].isPageFault }) {
            hooks.readBatchWithEvent()
        }
        var faults = 0
        for i in 0..<count {
            let message = messages[i]
            if case .pageFault = message {
                faults += 1
                continue
            }
            awaitingEvent = false
            if let child {
                handleChildEvent(message, child: child)
                continue
            }
            switch message {
            case .pageFault: break
            case .remove(let start, let end):
                handleRemove(start: start, end: end, unmapped: false)
            case .unmap(let start, let end):
                handleRemove(start: start, end: end, unmapped: true)
            case .remap(let from, let to, let length):
                handleRemap(from: from, to: to, length: length)
            case .fork(let descriptor):
                adoptChild(descriptor, forkedFrom: nil)
            case .unknown(let event):
                logger.warning("unexpected userfaultfd event \(event)")
            }
        }
        if faults > 0 {
            for i in 0..<count {
                guard case .pageFault(var fault) = messages[i] else { continue }
                if let child {
                    fault.origin = child.origin
                    counters.add(.childFaults)
                }
                // A write-protect fault needs no budget: only a pending event holds it.
                if awaitingEvent || (!fault.isWriteProtect && (mustThrottle || !deferred.isEmpty)) {
                    if !awaitingEvent, mustThrottle { counters.add(.budgetWaits) }
                    deferFault(fault)
                } else {
                    handleFault(fault)
                }
            }
        }
        // Keep the budget even while a burst of faults is being served.
        evictIfNeeded()
        serveDeferred()
    }

    /// Holds a fault for later; never serves it here (that once recursed
    /// without bound while an event was pending).
    func deferFault(_ fault: PageFault) {
        if !configuration.tracedPages.isEmpty, let (_, page) = locate(fault.page) {
            trace.record(page, .deferred, extra: fault.isWrite ? 1 : 0)
        }
        guard deferred.append(fault) else { return counters.add(.duplicateFaults) }
        if deferred.count > heldFaultsPeak {
            heldFaultsPeak = deferred.count
            counters.set(.heldFaultsPeak, UInt64(heldFaultsPeak))
        }
    }

    func drainInbox() {
        inboxPending.store(false, ordering: .relaxed)
        let taken = inbox.withLock { inbox -> Inbox in
            let taken = inbox
            inbox = Inbox()
            return taken
        }
        for report in taken.reports {
            switch report {
            case .batchDone(let batch):
                awaitingEvent = false   // the evictor's last madvise, if any, has returned
                finish(batch)
            case .slotsReleased(let slots):
                awaitingEvent = false
                for slot in slots {
                    staging.give(slot)
                    budget.staged -= 1
                }
            case .serverAnswered(let answered):
                probeInFlight = false
                if answered, writeBackOutage {
                    writeBackOutage = false
                    logger.notice("the server answers again: eviction resumed")
                } else {
                    nextOutageProbe = fm_now_ns() + 1_000_000_000
                }
            case .releaseFailing(let failing):
                stagingBlocked = failing
                if !failing { logger.notice("staging is usable again: eviction resumed") }
            }
        }
        for command in taken.commands { execute(command) }
        counters.set(.stagedPages, UInt64(budget.staged))
    }

    /// Every page this shard can ever queue, plus slack.
    var queueCapacity: Int { liveRegions.reduce(16) { $0 + $1.chunk.count } }

    func execute(_ command: Command) {
        switch command {
        case .add(let region, let done):
            if region.slot >= regions.count { regions.append(contentsOf: Array(repeating: nil, count: region.slot - regions.count + 1)) }
            regions[region.slot] = region
            liveRegions.append(region)
            addToChildren(region)
            queue.rebuild(capacity: queueCapacity) { _ in true }
            setAside.rebuild(capacity: max(setAside.capacity, setAside.count + 16)) { _ in true }
            done.signal()
        case .remove(let region, let done):
            for extent in region.extents {
                try? uffd.unregister(extent.start, length: extent.pageCount * 4096)
            }
            forgetInChildren(region)
            for page in region.chunk where region.states[page].isResident {
                if region.states[page].isUnevictable { budget.unevictable -= 1 } else { budget.resident -= 1 }
            }
            counters.set(.unevictablePages, UInt64(budget.unevictable))
            let slot = region.slot
            forgetProbation(regionSlot: slot)
            regions[slot] = nil
            liveRegions.removeAll { $0 === region }
            queue.rebuild(capacity: queueCapacity) { EvictionQueue.unpack($0).slot != slot }
            setAside.rebuild(capacity: setAside.capacity) { EvictionQueue.unpack($0).slot != slot }
            counters.set(.residentPages, UInt64(budget.resident))
            done(region.extents)
        case .extents(let region, let answer):
            answer(region.extents)
        case .suspendEviction(let done):
            evictionSuspended = true
            done.signal()
        case .stop:
            running = false
        }
    }
}

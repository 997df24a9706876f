import CFarMemSys
import Dispatch
import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// The fault-handler thread. It alone owns page state, so the fault path takes
/// no lock: it reads userfaultfd messages, installs pages (zero-filled, or
/// fetched over its own server link), resolves write-protect faults (dirty
/// tracking), applies the application's REMOVE/UNMAP/REMAP events, and keeps
/// the resident set under budget by moving victims into staging for the evictor.
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
        case stop
    }

    private struct Inbox {
        var commands: [Command] = []
        var reports: [Evictor.Report] = []
    }

    private let uffd: Userfaultfd
    /// Fetches go here (the evictor has a store of its own).
    private let store: PageStore
    private let staging: StagingArea
    private let counters: PagerCounters
    private let configuration: FarMemoryConfiguration
    private let logger: Logger
    private let notifier: EventNotifier
    private let inbox = Mutex(Inbox())
    /// Set with every inbox message: ends a spin so the inbox is drained promptly.
    private let inboxPending = Atomic<Bool>(false)
    private let spinNanoseconds: UInt64
    var evictor: Evictor!

    /// By slot (eviction-queue entries and batches name regions by slot).
    private var regions: [RegionRecord?] = []
    /// The same regions, live ones only: what the fault path scans.
    private var liveRegions: [RegionRecord] = []
    private var queue = EvictionQueue(capacity: 1024)
    /// Unevictable pages (the kernel refused to move them twice), tried again
    /// now and then: a pin ends, an area is munlocked. Not in `queue`.
    private var setAside = EvictionQueue(capacity: 1024)
    /// When to try set-aside pages again (CLOCK_MONOTONIC ns; 0: at once).
    private var nextSetAsideRetry: UInt64 = 0
    /// When a refused move may unlock staging again (see `moveOut`).
    private var nextStagingUnlock: UInt64 = 0
    private var spareBatches: [EvictionBatch] = []
    private var resident = 0
    /// Resident pages eviction cannot move (not counted in `resident`).
    private var unevictable = 0
    private var staged = 0
    private let budget: Int
    private let highWater: Int
    private let batchSize: Int
    /// Shutting down: no more eviction rounds.
    private var evictionSuspended = false
    /// A write-back failed for good (the server did not answer within the
    /// retry window): eviction pauses, pages stay local and the budget is not
    /// kept, until the server answers a probe again.
    private var writeBackOutage = false
    private var nextOutageProbe: UInt64 = 0
    private var probeInFlight = false
    /// Seconds before the first probe of an outage: doubles with each outage
    /// (a server that answers STATS but refuses writes must not make eviction
    /// bounce every second), back to 1 after a write-back succeeds.
    private var outageBackoffSeconds: UInt64 = 1
    /// Staging slots cannot be emptied (the evictor says so): eviction cannot
    /// make room, so faults are not held for it.
    private var stagingBlocked = false
    /// Failed write-backs whose move back met EAGAIN, retried after the event.
    private var pendingRestores: [EvictionBatch.Entry] = []
    private var running = true

    private let messages = UserfaultfdMessages()
    /// Faults held back while the budget is full or an event is pending.
    private var deferred = DeferredFaults(capacity: 1024)
    private var heldFaultsPeak = 0
    /// An ioctl met EAGAIN: faults wait. mmap_changing clears only when the
    /// thread behind the event resumes after we read it, so the wait ends when
    /// the evictor reports (its madvise has returned), at the next event, or
    /// after a 1 ms poll for an application thread's madvise/munmap/mremap.
    private var awaitingEvent = false
    /// Fetched pages land here: the faulting page first, then the prefetched ones.
    private var fetchBuffer: UnsafeMutableRawPointer
    private var fetchPages: UnsafeMutablePointer<UInt64>
    /// Where the last fetch's pages are: `fetchBuffer` over TCP, the RDMA
    /// channel's registered buffer over RDMA (installed from there, no copy).
    private var fetchedData: UnsafeRawPointer
    private var trends: TrendDetector
    /// A fetched batch whose first page's install met EAGAIN, kept (buffers
    /// swapped, no copy) for the retry so the deferred fault crosses the network
    /// once. Dropped if any of its pages is written back or discarded meanwhile.
    private var keptBuffer: UnsafeMutableRawPointer
    private var keptPages: UnsafeMutablePointer<UInt64>
    private var kept: (region: Int, count: Int)?
    private let zeroPage = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    init(uffd: Userfaultfd, store: PageStore, staging: StagingArea, counters: PagerCounters,
         configuration: FarMemoryConfiguration, logger: Logger, batchSize: Int, budgetPages: Int) throws(Errno) {
        self.uffd = uffd
        self.store = store
        self.staging = staging
        self.counters = counters
        self.configuration = configuration
        self.logger = logger
        self.batchSize = batchSize
        spinNanoseconds = UInt64(max(0, configuration.handlerSpinMicroseconds)) * 1000
        budget = budgetPages
        // Eviction starts two batches below the budget; staged pages still count
        // until the evictor frees them, and the throttle keeps resident + staged
        // within the budget while it catches up.
        highWater = max(budget - 2 * batchSize, batchSize)
        notifier = try EventNotifier()
        // Prefetch at most an eighth of the budget at once, and one protocol batch.
        let window = min(configuration.prefetchPages, budget / 8, ProtocolLimits.maxBatchPages - 1)
        trends = TrendDetector(maxWindow: window)
        fetchBuffer = .allocate(byteCount: (window + 1) * 4096, alignment: 4096)
        fetchPages = .allocate(capacity: window + 1)
        fetchedData = UnsafeRawPointer(fetchBuffer)
        keptBuffer = .allocate(byteCount: (window + 1) * 4096, alignment: 4096)
        keptPages = .allocate(capacity: window + 1)
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
            spinForMessages()
            // While waiting for an event, poll with a short time-out: should the
            // event never come (the change was abandoned), deferred faults still go on.
            probeIfOutage()
            let ready = fm_poll2(uffd.descriptor.rawValue, notifier.descriptor.rawValue, pollTimeoutMilliseconds)
            if ready < 0 {
                // Without its handler every far page would hang its thread forever:
                // stop loudly instead.
                fatalError("FarMemory: poll on userfaultfd failed: \(Errno(negated: ready))")
            }
            if ready == 0 { awaitingEvent = false }
            if ready & 2 != 0 {
                notifier.drain()
                drainInbox()
            }
            retryRestores()
            evictIfNeeded()
            serveDeferred()
            readMessages()   // evicts and serves deferred faults after each batch itself
        }
    }

    /// At the budget: the next fault waits until eviction has made room
    /// (eviction runs first whenever it can; it cannot while every staging slot
    /// is in flight or an event is pending). Not while eviction is paused or
    /// cannot empty staging: nothing would make room, and a fault held for it
    /// would wait forever.
    @inline(__always)
    private var mustThrottle: Bool {
        !evictionSuspended && !writeBackOutage && !stagingBlocked && resident + staged >= budget
    }

    /// Sleep in poll() until a message, or: 1 ms while waiting for an event
    /// (should it never come, the held faults still go on); until the next
    /// outage probe or set-aside retry is due.
    private var pollTimeoutMilliseconds: Int32 {
        if awaitingEvent { return 1 }
        guard !evictionSuspended else { return -1 }
        var due: UInt64?
        if writeBackOutage, !probeInFlight { due = nextOutageProbe }
        // Only with a free slot: one coming back wakes the loop through the inbox.
        if !writeBackOutage, setAside.count > 0, staging.freeCount > 0, resident + unevictable > highWater {
            due = min(due ?? .max, nextSetAsideRetry)
        }
        guard let due else { return -1 }
        let now = fm_now_ns()
        return due <= now ? 0 : Int32(min((due - now) / 1_000_000 + 1, 1000))
    }

    /// During a write-back outage, asks the server (through the evictor, whose
    /// link the failed write-backs used) once a second whether it answers again.
    private func probeIfOutage() {
        guard writeBackOutage, !probeInFlight, !evictionSuspended, fm_now_ns() >= nextOutageProbe else { return }
        probeInFlight = true
        evictor.submit(.probe)
    }

    /// Serves held faults in order while there is room and no event is
    /// pending. A fault that meets EAGAIN is held again (at the back) and sets
    /// `awaitingEvent`, which ends the loop.
    private func serveDeferred() {
        while !mustThrottle, !awaitingEvent, let message = deferred.popFirst() {
            handleFault(message)
            evictIfNeeded()
        }
    }

    /// Handler placement: with `handlerSpinMicroseconds` > 0 the handler keeps
    /// reading (non-blocking) for that long after its last message before it
    /// sleeps in poll(), so a fault that follows soon is picked up without a
    /// wake-up (about 100 us across CPUs on small VMs), at the price of a busy CPU.
    private func spinForMessages() {
        guard spinNanoseconds > 0 else { return }
        var deadline = fm_now_ns() + spinNanoseconds
        while fm_now_ns() < deadline, !inboxPending.load(ordering: .relaxed), !awaitingEvent, running {
            if readMessages() > 0 { deadline = fm_now_ns() + spinNanoseconds }
        }
    }

    /// Reads and handles every pending message; returns how many there were.
    @discardableResult
    private func readMessages() -> Int {
        var total = 0
        while true {
            let count: Int
            do { count = try uffd.read(into: messages) } catch {
                fatalError("FarMemory: reading userfaultfd failed: \(error)")
            }
            if count == 0 { return total }
            total += count
            for i in 0..<count {
                switch messages[i] {
                case .pageFault(let fault):
                    // A write-protect fault needs no budget: only a pending event holds it.
                    if awaitingEvent || (!fault.isWriteProtect && (mustThrottle || !deferred.isEmpty)) {
                        deferFault(fault)
                    } else {
                        handleFault(fault)
                    }
                case .remove(let start, let end):
                    awaitingEvent = false
                    handleRemove(start: start, end: end, unmapped: false)
                case .unmap(let start, let end):
                    awaitingEvent = false
                    handleRemove(start: start, end: end, unmapped: true)
                case .remap(let from, let to, let length):
                    awaitingEvent = false
                    handleRemap(from: from, to: to, length: length)
                case .fork(let child):
                    child.close()   // not asked for (regions are MADV_DONTFORK)
                    logger.warning("unexpected userfaultfd fork event")
                case .unknown(let event):
                    logger.warning("unexpected userfaultfd event \(event)")
                }
            }
            // Keep the budget even while a burst of faults is being served.
            evictIfNeeded()
            serveDeferred()
        }
    }

    /// Holds a fault for later; never serves it here (that once recursed
    /// without bound while an event was pending).
    private func deferFault(_ fault: PageFault) {
        guard deferred.append(fault) else { return counters.add(.duplicateFaults) }
        if deferred.count > heldFaultsPeak {
            heldFaultsPeak = deferred.count
            counters.set(.heldFaultsPeak, UInt64(heldFaultsPeak))
        }
    }

    // MARK: Faults

    @inline(__always)
    private func locate(_ address: UInt) -> (RegionRecord, Int)? {
        for region in liveRegions {
            if let page = region.page(at: address) { return (region, page) }
        }
        return nil
    }

    private func handleFault(_ fault: PageFault) {
        let started = fm_now_ns()
        let address = fault.page
        guard let (region, page) = locate(address) else {
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
        if fault.isWriteProtect {
            if !handleWriteProtectFault(region: region, page: page, address: address) { deferUntilEvent(fault) }
            return
        }
        counters.add(.faults)
        let state = region.states[page]
        if state.isInFlight {
            // Its write-back is in flight; the completion wakes this thread.
            counters.add(.parkedFaults)
            return
        }
        if state.isResident {
            // Usually a second thread faulting on a page just installed: EEXIST
            // below wakes it. If the page really is gone (the application
            // discarded it while we raced to install), zeros are what it asked for.
            counters.add(.duplicateFaults)
            switch install(zeroPage, at: address, writeProtect: true) {
            case .installed: region.states[page] = state.reinstalledAsZeros()
            case .eventPending: deferUntilEvent(fault)
            case .alreadyThere: break
            case .gone: try? uffd.wake(address, length: 4096)
            }
            return
        }
        let isWrite = fault.isWrite
        let trend = trends.record(thread: fault.thread, region: region.slot, page: page)
        var source = zeroPage
        let fromServer = state.isBacked
        var fetched = 0
        if fromServer {
            fetched = fetch(region: region, page: page, trend: trend, address: address)
            guard fetched > 0 else { return }
            source = UnsafeMutableRawPointer(mutating: fetchedData)
        }
        // A read installs the page write-protected (clean until written); a
        // write installs it writable and dirty, saving a second fault.
        let newState = state.installed(dirty: isWrite)
        region.states[page] = newState
        resident += 1
        switch install(source, at: address, writeProtect: !isWrite) {
        case .installed:
            counters.add(fromServer ? .fetches : .zeroFills)
            if !newState.isQueued {
                region.states[page] = newState.enqueued()
                queue.push(EvictionQueue.pack(slot: region.slot, page: page))
            }
            counters.faultService.record(nanoseconds: fm_now_ns() &- started)
            if fetched > 1 { installPrefetched(region: region, count: fetched - 1) }
        case .alreadyThere:
            // Mapped, yet not by us: the application discarded the page and the
            // kernel has not zapped it yet (MADV_DONTNEED's thread resumes when
            // we read REMOVE, then takes mmap_lock and zaps). Never adopt it:
            // its bytes are the discarded ones, and moving it out before the zap
            // would bring them back. The EEXIST woke the thread; it retries, and
            // faults again once the page is gone.
            region.states[page] = state
            resident -= 1
            counters.add(.discardWindowFaults)
        case .eventPending:
            region.states[page] = state
            resident -= 1
            if fromServer {
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
            resident -= 1
            try? uffd.wake(address, length: 4096)   // it faults again, or finds the range gone
        }
        counters.set(.residentPages, UInt64(resident))
    }

    private func deferUntilEvent(_ fault: PageFault) {
        counters.add(.eagain)
        awaitingEvent = true
        deferFault(fault)
    }

    /// Returns false when an event is pending and the fault must wait for it.
    private func handleWriteProtectFault(region: RegionRecord, page: Int, address: UInt) -> Bool {
        counters.add(.writeProtectFaults)
        let state = region.states[page]
        // Resident: mark it dirty. Not resident: a stale message (the page was
        // moved out; the thread retries and takes a missing fault), or a page
        // the application discarded and the kernel has not zapped yet (or never
        // will, if the madvise failed after its event): not ours, never moved
        // out, so letting the write through loses nothing. Resident and already
        // dirty: a duplicate. Unprotecting is right in every case, and a page
        // left protected would fault here forever.
        if state.isResident { region.states[page] = state.written() }
        do {
            try uffd.writeProtect(address, length: 4096, protect: false)
            return true
        } catch {
            region.states[page] = state
            if error == .again { return false }
            try? uffd.wake(address, length: 4096)
            return true
        }
    }

    private enum InstallResult { case installed, alreadyThere, eventPending, gone }

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

    /// Fetches the faulting page, and the pages the trend predicts, into
    /// `fetchedData` with one request, reconnecting within the retry window.
    /// Returns how many pages arrived (0: failed, and the page was poisoned so
    /// that the access raises SIGBUS instead of hanging forever).
    private func fetch(region: RegionRecord, page: Int, trend: (stride: Int, window: Int)?, address: UInt) -> Int {
        // A kept batch waits for its own page (another thread's fault may come
        // first); its invalidation rules hold however long it waits.
        if let held = kept, held.region == region.slot, keptPages[0] == UInt64(page) {
            kept = nil
            swap(&fetchBuffer, &keptBuffer)
            swap(&fetchPages, &keptPages)
            fetchedData = UnsafeRawPointer(fetchBuffer)
            // Prefetched pages are still good while they live on the server
            // only; stop at the first that does not (installs stay in runs),
            // and never install past the budget.
            var count = 1
            let limit = min(held.count, max(1, budget - resident - staged))
            while count < limit {
                guard region.states[Int(fetchPages[count])].isOnServerOnly else { break }
                count += 1
            }
            return count
        }
        var count = 1
        fetchPages[0] = UInt64(page)
        // Never prefetch past the budget: only into the room left under it.
        let headroom = budget - resident - staged - 1
        if let trend, headroom > 0 {
            // Consecutive predicted pages that live on the server, stopping at the
            // first that does not (so installs stay in runs).
            var candidate = page
            for _ in 0..<min(trend.window, headroom) {
                candidate += trend.stride
                guard candidate >= 0, candidate < region.pageCount else { break }
                guard region.states[candidate].isOnServerOnly else { break }
                fetchPages[count] = UInt64(candidate)
                count += 1
            }
        }
        do {
            fetchedData = try store.read(region.store, pages: UnsafeBufferPointer(start: fetchPages, count: count), into: fetchBuffer)
            return count
        } catch {
            logger.error("page \(page) of region \(region.store.id) could not be fetched (\(error)); the access raises SIGBUS")
        }
        counters.add(.poisoned)
        do { try uffd.poison(address, length: 4096) } catch {
            logger.critical("UFFDIO_POISON failed (\(error)); waking the thread, which will fault again")
            try? uffd.wake(address, length: 4096)
        }
        return 0
    }

    /// Installs prefetched pages (slots 1...count of the fetched data), write-protected
    /// and clean. Contiguous pages go in with one UFFDIO_COPY. A page that is
    /// already there or meets a pending event ends the run: the rest stay on the
    /// server, which is always correct.
    private func installPrefetched(region: RegionRecord, count: Int) {
        var slot = 1
        while slot <= count {
            let first = Int(fetchPages[slot])
            guard let address = region.address(of: first) else { return }
            // Extend the run while pages are adjacent in the region and in memory.
            var run = 1
            while slot + run <= count, Int(fetchPages[slot + run]) == first + run,
                  region.address(of: first + run) == address + UInt(run * 4096) { run += 1 }
            for i in 0..<run { region.states[first + i] = region.states[first + i].installed(dirty: false) }
            let copied: Int
            do {
                copied = try uffd.copy(to: address, from: fetchedData + slot * 4096, length: run * 4096, writeProtect: true) / 4096
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
                if i >= copied { region.states[page] = region.states[page].notInstalled(); continue }
                resident += 1
                if !region.states[page].isQueued {
                    region.states[page] = region.states[page].enqueued()
                    queue.push(EvictionQueue.pack(slot: region.slot, page: page))
                }
            }
            counters.add(.prefetched, UInt64(copied))
            if copied < run {
                keepRemainder(region: region, from: slot + copied, count: count)
                return
            }
            slot += run
        }
    }

    /// Keeps prefetched pages that could not be installed (an event was
    /// pending): in a scan the next fault is the first of them, and `fetch`
    /// then installs the kept copies (checked and invalidated like any kept
    /// batch) instead of crossing the network again.
    private func keepRemainder(region: RegionRecord, from slot: Int, count: Int) {
        let n = count - slot + 1
        guard n > 0 else { return }
        keptBuffer.copyMemory(from: fetchedData + slot * 4096, byteCount: n * 4096)
        for i in 0..<n { keptPages[i] = fetchPages[slot + i] }
        kept = (region.slot, n)
    }

    // MARK: Non-cooperative events

    /// The application dropped [start, end): MADV_DONTNEED/MADV_REMOVE (the
    /// pages read as zeros from now on) or munmap (they are gone). The server's
    /// copies are discarded so they can never be served stale.
    private func handleRemove(start: UInt, end: UInt, unmapped: Bool) {
        if staging.contains(start) { return }   // the evictor emptying staging slots
        if let held = kept, let region = regions[held.region],
           (0..<held.count).contains(where: { i in
               region.address(of: Int(keptPages[i])).map { $0 >= start && $0 < end } ?? false }) {
            kept = nil   // data being dropped: never install the kept copy
        }
        for region in liveRegions {
            for run in region.pageRuns(in: start, end) {
                var discardStart: Int?
                for page in run {
                    let state = region.states[page]
                    if state.isInFlight {
                        region.states[page] = state.discardedWhileInFlight()
                        continue
                    }
                    if state.isUnevictable {
                        unevictable -= 1
                    } else if state.isResident {
                        resident -= 1
                    }
                    region.states[page] = state.discarded()
                    if state.isBacked {
                        if discardStart == nil { discardStart = page }
                    } else if let first = discardStart {
                        evictor.submit(.discard(region.store, first: first, count: page - first))
                        discardStart = nil
                    }
                }
                if let first = discardStart {
                    evictor.submit(.discard(region.store, first: first, count: run.upperBound - first))
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
        counters.set(.residentPages, UInt64(resident))
        counters.set(.unevictablePages, UInt64(unevictable))
    }

    /// mremap moved [from, from+length) to `to`: the region follows, evicted
    /// pages included.
    private func handleRemap(from: UInt, to: UInt, length: UInt) {
        for region in liveRegions {
            region.move(from: from, to: to, length: length)
        }
        // Threads parked at the old addresses would be woken at the new ones:
        // wake them where they wait. They retry there (nothing is mapped now),
        // as they would have without FarMem had they come after the move.
        try? uffd.wake(from, length: Int(length))
    }

    // MARK: Eviction

    private func evictIfNeeded() {
        guard !evictionSuspended, !writeBackOutage else { return }
        if setAsideRetryDue { retrySetAsideRound() }
        guard resident > highWater else { return }
        let target = highWater - batchSize / 2
        while resident > target, staging.freeCount > 0, !awaitingEvent {
            let batch = spareBatches.popLast() ?? EvictionBatch(capacity: batchSize)
            let moved = fillBatch(batch, limit: min(batchSize, resident - target))
            if batch.entries.isEmpty {
                spareBatches.append(batch)
                break
            }
            evictor.submit(.evict(batch))
            if !moved { break }
        }
        let overshoot = resident + staged - budget
        if overshoot > 0, UInt64(overshoot) > counters.get(.budgetOvershoot) {
            counters.set(.budgetOvershoot, UInt64(overshoot))
        }
        counters.set(.residentPages, UInt64(resident))
        counters.set(.stagedPages, UInt64(staged))
    }

    /// Moves up to `limit` victims into staging. Returns false when it had to
    /// stop early (an event is pending, or staging is full).
    private func fillBatch(_ batch: EvictionBatch, limit: Int) -> Bool {
        batch.entries.removeAll(keepingCapacity: true)
        var examined = 0
        let maxExamined = queue.count
        while batch.entries.count < limit, examined < maxExamined, let entry = queue.pop() {
            examined += 1
            let (slot, page) = EvictionQueue.unpack(entry)
            guard slot < regions.count, let region = regions[slot] else { continue }
            let state = region.states[page]
            region.states[page] = state.dequeued()
            guard state.isResident, let address = region.address(of: page) else { continue }
            switch moveOut(region: region, page: page, state: state, address: address, into: batch) {
            case .moved:
                resident -= 1
            case .eventPending, .noFreeSlot:
                region.states[page] = state
                queue.push(entry)
                return false
            case .slotNotEmpty:
                region.states[page] = state
                queue.push(entry)
            case .notMapped:
                // Not mapped after all (discarded in a race): it reads as zeros now.
                region.states[page] = state.foundUnmapped()
                queue.push(entry)
                resident -= 1
            case .refused(let error):
                refused(region: region, page: page, state: state, error: error)
            }
        }
        return batch.entries.count == limit
    }

    private enum MoveOutcome { case moved, eventPending, noFreeSlot, slotNotEmpty, notMapped, refused(Errno) }

    /// Moves one resident page into a free staging slot and adds it to the
    /// batch (clean pages need no write-back; dirty ones are in flight until
    /// theirs is done). The caller fixes `resident`/`unevictable` and the queues.
    private func moveOut(region: RegionRecord, page: Int, state: PageState, address: UInt, into batch: EvictionBatch) -> MoveOutcome {
        guard let stagingSlot = staging.take() else { return .noFreeSlot }
        do {
            do {
                _ = try uffd.move(to: staging.address(of: stagingSlot), from: address, length: 4096)
            } catch .invalidArgument where fm_now_ns() >= nextStagingUnlock {
                // Perhaps the application locked staging (mlockall): unlock it
                // (at most once a second) and try once more before blaming the page.
                nextStagingUnlock = fm_now_ns() + 1_000_000_000
                staging.unlock()
                _ = try uffd.move(to: staging.address(of: stagingSlot), from: address, length: 4096)
            }
        } catch {
            switch error {
            case .exists:
                // The slot is not empty (its MADV_DONTNEED failed, or something
                // read the staging area): the page is not to blame. The evictor
                // empties the slot; until then it counts as staged.
                staged += 1
                evictor.submit(.release([stagingSlot]))
                return .slotNotEmpty
            case .again:
                staging.give(stagingSlot)
                counters.add(.eagain)
                awaitingEvent = true
                return .eventPending
            case .noEntry:
                staging.give(stagingSlot)
                return .notMapped
            default:
                staging.give(stagingSlot)
                return .refused(error)
            }
        }
        staged += 1
        counters.add(.evictions)
        let dirty = state.isDirty
        region.states[page] = state.movedOut()
        // Clean: the store (or nothing, for a zero page) already has it.
        if !dirty { counters.add(.cleanDrops) }
        batch.entries.append(.init(regionSlot: region.slot, region: region.store, page: page,
                                   stagingSlot: Int32(stagingSlot), dirty: dirty))
        return .moved
    }

    /// The kernel would not move a resident page: EBUSY, pinned (O_DIRECT,
    /// io_uring, an RDMA registration of the application's); EINVAL, its area
    /// differs from staging (mlock, mprotect). A first refusal is often a short
    /// pin, such as an O_DIRECT write in progress: the page goes to the back of
    /// the queue. A second sets it aside, outside the budget, so it can never
    /// wedge eviction (and with it every fault); set-aside pages are tried
    /// again later (`retrySetAside`).
    private func refused(region: RegionRecord, page: Int, state: PageState, error: Errno) {
        counters.add(.moveRefusals)
        if !state.wasRefusedOnce {
            region.states[page] = state.refusedOnceAndRequeued()
            queue.push(EvictionQueue.pack(slot: region.slot, page: page))
            return
        }
        region.states[page] = state.setAside()
        resident -= 1
        unevictable += 1
        if setAside.count == setAside.capacity {
            // Only stale entries (pages discarded since, or set aside twice since) can fill it.
            var seen = Set<UInt64>()
            setAside.rebuild(capacity: setAside.capacity * 2) { self.isSetAside($0) && seen.insert($0).inserted }
        }
        setAside.push(EvictionQueue.pack(slot: region.slot, page: page))
        counters.set(.unevictablePages, UInt64(unevictable))
        // Logged at 1, 2, 4, 8... such pages: an mlock of a large range must not flood the log.
        if unevictable & (unevictable - 1) == 0 {
            logger.warning("pages that cannot be evicted: \(unevictable) (latest: page \(page) of region \(region.store.id), \(error)); they stay resident, outside the budget, and are tried again now and then (statistics: unevictablePages)")
        }
    }

    /// Set-aside pages are outside the budget only while the kernel refuses
    /// them: while memory counting them is over the high-water mark, a batch
    /// of them is tried each second (at once again while tries succeed).
    private var setAsideRetryDue: Bool {
        setAside.count > 0 && resident + unevictable > highWater && fm_now_ns() >= nextSetAsideRetry
    }

    private func retrySetAsideRound() {
        guard staging.freeCount > 0, !awaitingEvent else { return }
        let batch = spareBatches.popLast() ?? EvictionBatch(capacity: batchSize)
        batch.entries.removeAll(keepingCapacity: true)
        _ = retrySetAside(batch, limit: batchSize)
        if batch.entries.isEmpty { spareBatches.append(batch) } else { evictor.submit(.evict(batch)) }
    }

    /// Whether a set-aside entry still names an unevictable page.
    private func isSetAside(_ entry: UInt64) -> Bool {
        let (slot, page) = EvictionQueue.unpack(entry)
        guard slot < regions.count, let region = regions[slot] else { return false }
        return region.states[page].isUnevictable
    }

    /// Tries up to `limit` set-aside pages again (a pin may have ended). While
    /// some move, the next try comes with the next round; when none does,
    /// after a second. Returns false when it had to stop (event, no slot).
    private func retrySetAside(_ batch: EvictionBatch, limit: Int) -> Bool {
        var tried = 0, moved = 0, left = setAside.count
        defer {
            nextSetAsideRetry = moved > 0 ? 0 : fm_now_ns() + 1_000_000_000
            counters.set(.unevictablePages, UInt64(unevictable))
        }
        while left > 0, tried < limit, batch.entries.count < limit, let entry = setAside.pop() {
            left -= 1
            guard isSetAside(entry) else { continue }   // discarded or unmapped since
            let (slot, page) = EvictionQueue.unpack(entry)
            let region = regions[slot]!
            let state = region.states[page]
            guard let address = region.address(of: page) else { setAside.push(entry); continue }
            tried += 1
            switch moveOut(region: region, page: page, state: state.retried(), address: address, into: batch) {
            case .moved:
                unevictable -= 1
                moved += 1
            case .eventPending, .noFreeSlot:
                setAside.push(entry)
                return false
            case .slotNotEmpty, .refused:
                setAside.push(entry)
            case .notMapped:
                region.states[page] = state.foundUnmapped()
                unevictable -= 1
            }
        }
        return true
    }

    private func drainInbox() {
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
                    staged -= 1
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
        counters.set(.stagedPages, UInt64(staged))
    }

    /// A write-back round is over: its pages are on the server (or, if the
    /// server could not take them, moved back into the region).
    private func finish(_ batch: EvictionBatch) {
        var keepSlots: [Int32] = []
        for entry in batch.entries {
            let region = entry.regionSlot < regions.count ? regions[entry.regionSlot] : nil
            guard entry.failed else {
                // Its slot comes back through `releasedSlots` once the evictor has emptied it.
                guard entry.dirty, let region else { continue }
                outageBackoffSeconds = 1
                if let held = kept, held.region == entry.regionSlot,
                   (0..<held.count).contains(where: { keptPages[$0] == UInt64(entry.page) }) {
                    kept = nil   // the server has newer data for a kept page
                }
                let state = region.states[entry.page]
                if state.wasDiscardedInFlight {
                    region.states[entry.page] = state.discarded()
                    evictor.submit(.discard(region.store, first: entry.page, count: 1))
                } else {
                    region.states[entry.page] = state.writtenBack()
                }
                if let address = region.address(of: entry.page) { try? uffd.wake(address, length: 4096) }
                continue
            }
            // The staged copy is the only one. Put it back where it belongs.
            if !writeBackOutage, region != nil {
                writeBackOutage = true
                nextOutageProbe = fm_now_ns() + outageBackoffSeconds * 1_000_000_000
                logger.error("write-back failed: eviction paused for at least \(outageBackoffSeconds) s, pages stay in local memory (the budget is not kept) until the server answers again")
                outageBackoffSeconds = min(outageBackoffSeconds * 2, 60)
            }
            if !restore(entry) { keepSlots.append(entry.stagingSlot) }   // the evictor empties it and returns it
        }
        batch.entries.removeAll(keepingCapacity: true)
        spareBatches.append(batch)
        if !keepSlots.isEmpty { evictor.submit(.release(keepSlots)) }
        counters.set(.residentPages, UInt64(resident))
    }

    /// Moves a page whose write-back failed from its staging slot back into
    /// the region. Returns false when the slot's data is not wanted any more
    /// (region closed, page discarded or unmapped): the caller empties the slot.
    /// EAGAIN (an event is pending) keeps the entry for a retry after it.
    private func restore(_ entry: EvictionBatch.Entry) -> Bool {
        guard entry.regionSlot < regions.count, let region = regions[entry.regionSlot] else { return false }
        let state = region.states[entry.page]
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
        region.states[entry.page] = state.restored()
        // Back in the eviction queue (it left it when it was moved out), or it
        // would stay resident for good once eviction resumes.
        if !state.isQueued { queue.push(EvictionQueue.pack(slot: region.slot, page: entry.page)) }
        resident += 1
        staging.give(entry.stagingSlot)
        staged -= 1
        return true
    }

    private func retryRestores() {
        guard !pendingRestores.isEmpty, !awaitingEvent else { return }
        let entries = pendingRestores
        pendingRestores.removeAll(keepingCapacity: true)
        var discard: [Int32] = []
        for entry in entries where !restore(entry) { discard.append(entry.stagingSlot) }
        if !discard.isEmpty { evictor.submit(.release(discard)) }
    }

    /// Every page this shard can ever queue, plus slack.
    private var queueCapacity: Int { liveRegions.reduce(16) { $0 + $1.chunk.count } }

    private func execute(_ command: Command) {
        switch command {
        case .add(let region, let done):
            if region.slot >= regions.count { regions.append(contentsOf: Array(repeating: nil, count: region.slot - regions.count + 1)) }
            regions[region.slot] = region
            liveRegions.append(region)
            queue.rebuild(capacity: queueCapacity) { _ in true }
            setAside.rebuild(capacity: max(setAside.capacity, setAside.count + 16)) { _ in true }
            done.signal()
        case .remove(let region, let done):
            for extent in region.extents {
                try? uffd.unregister(extent.start, length: extent.pageCount * 4096)
            }
            for page in region.chunk where region.states[page].isResident {
                if region.states[page].isUnevictable { unevictable -= 1 } else { resident -= 1 }
            }
            counters.set(.unevictablePages, UInt64(unevictable))
            let slot = region.slot
            regions[slot] = nil
            liveRegions.removeAll { $0 === region }
            queue.rebuild(capacity: queueCapacity) { EvictionQueue.unpack($0).slot != slot }
            setAside.rebuild(capacity: setAside.capacity) { EvictionQueue.unpack($0).slot != slot }
            counters.set(.residentPages, UInt64(resident))
            done(region.extents)
        case .suspendEviction(let done):
            evictionSuspended = true
            done.signal()
        case .stop:
            running = false
        }
    }
}

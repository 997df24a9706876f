import Dispatch
import FarMemSystem
import Logging
import Synchronization

/// One fault-handler thread and everything it owns: a userfaultfd, a staging
/// area, an evictor thread, a page store for fetches and one for write-backs
/// (each on its own connection), and a share of the budget. A FarMemory has one shard, or several when one handler thread
/// cannot keep up: each region is then split into contiguous chunks, one per
/// shard, each registered on its shard's userfaultfd, so no page is ever
/// handled by two threads and no state is shared between them.
final class PagerShard: @unchecked Sendable {
    let uffd: Userfaultfd
    let counters: PagerCounters
    /// Whether memfd regions can be registered here (the kernel's features).
    let servesSharedMemory: Bool
    /// Whether hugetlb regions can (minor faults on hugetlbfs too).
    let servesHugePages: Bool
    /// Whether forked children are followed (UFFD_FEATURE_EVENT_FORK, which
    /// needs CAP_SYS_PTRACE): shared regions then stay mapped across fork.
    let followsForks: Bool
    /// Shared (memfd, hugetlb) regions registered here: while there is one, a
    /// fork of this process may send a FORK event (`ForkGate`).
    let sharedRegions = Atomic<Int>(0)
    var mayGetForkEvents: Bool { followsForks && sharedRegions.load(ordering: .sequentiallyConsistent) > 0 }
    private let staging: StagingArea
    let handler: FaultHandler
    private let evictor: Evictor
    private let handlerThread: PosixThread
    /// Closed once both threads have stopped.
    private let faultStore: PageStore
    private let writeStore: PageStore
    private let evictorThread: PosixThread

    init(index: Int, budgetPages: Int, configuration: FarMemoryConfiguration, faultStore: PageStore, writeStore: PageStore,
         counters: PagerCounters, logger: Logger) throws(FarMemoryError) {
        self.counters = counters
        self.faultStore = faultStore
        self.writeStore = writeStore
        do {
            uffd = try Userfaultfd.open()
        } catch {
            throw .userfaultfdUnavailable(Userfaultfd.explain(error))
        }
        // memfd regions need three more features, where the kernel has them (5.19).
        let sharedMemory: Userfaultfd.Features = [.missingShmem, .minorShmem, .wpSharedMemory]
        let supported = (try? Userfaultfd.supportedFeatures()) ?? []
        servesSharedMemory = supported.isSuperset(of: sharedMemory)
        servesHugePages = servesSharedMemory && supported.contains(.minorHugetlbfs)
        let features = Userfaultfd.Features([.eventRemap, .eventRemove, .eventUnmap, .move, .poison, .pagefaultFlagWP, .threadID])
            .union(servesSharedMemory ? sharedMemory : []).union(servesHugePages ? .minorHugetlbfs : [])
        do {
            // Forks are followed where the kernel allows it (EPERM without
            // CAP_SYS_PTRACE; a refused UFFDIO_API may be asked again).
            var follows = servesSharedMemory && configuration.followsForks
            do {
                _ = try uffd.enable(follows ? features.union(.eventFork) : features)
            } catch .permissionDenied where follows {
                follows = false
                _ = try uffd.enable(features)
            }
            followsForks = follows
        } catch {
            uffd.close()
            throw .system("UFFDIO_API", error)
        }
        let stagingSlots = min(max(budgetPages / 4, 32), 1024)
        let batchSize = max(1, min(configuration.evictionBatchPages, stagingSlots / 2))
        do {
            staging = try StagingArea(slots: stagingSlots, uffd: uffd)
        } catch {
            uffd.close()
            throw .system("setting up the staging area", error)
        }
        // The probation area's pages count in the budget as they come into use (`Budget.probation`).
        let probationPages = ProbationArea.pages(budgetPages: budgetPages, share: configuration.probationShare)
        do {
            let probation = probationPages > 0 ? try ProbationArea(slots: probationPages) : nil
            handler = try FaultHandler(uffd: uffd, store: faultStore, staging: staging, probation: probation, counters: counters,
                                       configuration: configuration, logger: logger, batchSize: batchSize,
                                       budgetPages: budgetPages)
        } catch {
            staging.unmap(uffd: uffd)
            uffd.close()
            throw .system("setting up the fault handler", error)
        }
        let handler = self.handler
        evictor = Evictor(store: writeStore, staging: staging, probation: handler.probation, counters: counters, logger: logger,
                          verifiesPages: configuration.verifiesPages) { report in
            handler.evictorReported(report)
        }
        handler.evictor = evictor
        handlerThread = PosixThread.spawn(name: "farmem-fault\(index)") { handler.run() }
        let evictor = self.evictor
        evictorThread = PosixThread.spawn(name: "farmem-evict\(index)") { evictor.run() }
        if followsForks { ForkGate.register(self) }
    }

    /// Hands a registered chunk to the handler; returns once it knows it.
    func add(_ record: RegionRecord) {
        let added = DispatchSemaphore(value: 0)
        handler.send(.add(record, added))
        added.wait()
    }

    /// Unregisters the chunk; returns the extents still mapped (to unmap).
    func remove(_ record: RegionRecord) -> [Extent] { askForExtents { .remove(record, $0) } }

    /// Returns once the evictor has done every job submitted so far.
    func waitForEvictor() {
        let done = DispatchSemaphore(value: 0)
        evictor.submit(.barrier(done))
        done.wait()
    }

    /// Where the chunk's pages are mapped now, once every event already read is applied.
    func extents(of record: RegionRecord) -> [Extent] { askForExtents { .extents(record, $0) } }

    /// Sends the handler a command that answers with extents, and waits for the answer.
    private func askForExtents(_ command: (@escaping @Sendable ([Extent]) -> Void) -> FaultHandler.Command) -> [Extent] {
        let done = DispatchSemaphore(value: 0)
        let extents = Mutex<[Extent]>([])
        handler.send(command { answer in
            extents.withLock { $0 = answer }
            done.signal()
        })
        done.wait()
        return extents.withLock { $0 }
    }

    /// The fault handler's record of the traced pages (`PageTrace`).
    func pageTrace(page: Int?) -> [String] { handler.trace.lines(page: page) }

    func stop() {
        ForkGate.unregister(self)
        // No new eviction rounds, then the evictor (it finishes what it has; its
        // staging madvise needs the handler still reading events), then the handler.
        let suspended = DispatchSemaphore(value: 0)
        handler.send(.suspendEviction(suspended))
        suspended.wait()
        evictor.submit(.stop)
        evictorThread.join()
        handler.send(.stop)
        handlerThread.join()
        staging.unmap(uffd: uffd)
        uffd.close()
        faultStore.closeConnections()
        writeStore.closeConnections()
    }
}

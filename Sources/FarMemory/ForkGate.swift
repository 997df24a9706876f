#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys
import FarMemSystem
import Synchronization

/// fork() of this process while fault handlers follow forks.
///
/// A fork that copies a shared region's mapping sends each handler whose
/// userfaultfd covers it a FORK event, and waits in the kernel until the
/// event is read. glibc's fork() holds every malloc lock meanwhile (taken
/// after the atfork prepare handlers run): a handler that allocated then
/// would wait for the fork, which waits for it. So, from the prepare handler
/// to the parent's after-fork handler, the handlers that may get a FORK
/// event only read their userfaultfd into a buffer allocated beforehand
/// (`FaultHandler.waitOutFork`), and handle what they read once the fork
/// has returned. Faults that come meanwhile wait until then too. Threads
/// may fork at the same time: each handler counts the forks under way.
///
/// Only the process that made the handlers gates: a forked child has none
/// (its forks, a grandchild's FORK event, are the parent's handler's to read).
/// A shared region registered during a fork waits for the fork to end, so a
/// handler the fork did not stop never gets its FORK event.
enum ForkGate {
    private final class Entry: @unchecked Sendable {
        weak var shard: PagerShard?
        init(_ shard: PagerShard) { self.shard = shard }
    }
    private static let shards = Mutex<[Entry]>([])
    /// The handlers each forking thread stopped (its after-fork handler releases them).
    private static let held = Mutex<[UInt: [FaultHandler]]>([:])
    private static let installed = Atomic<Bool>(false)
    /// The process whose handler threads these are.
    private static let owner = Atomic<Int32>(0)
    /// Forks of the owner under way (from prepare to the parent's after-fork).
    private static let forksUnderWay = Atomic<Int>(0)

    static func register(_ shard: PagerShard) {
        owner.store(getpid(), ordering: .sequentiallyConsistent)
        shards.withLock { $0.append(Entry(shard)) }
        if installed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
            _ = fm_atfork({ ForkGate.prepare() }, { ForkGate.resumeAfterFork() }, nil)
        }
    }

    static func unregister(_ shard: PagerShard) {
        shards.withLock { $0.removeAll { $0.shard == nil || $0.shard === shard } }
    }

    private static var thisThread: UInt { UInt(pthread_self()) }

    /// Before fork: stops every handler that may get a FORK event, and waits
    /// until each is only reading. No time limit: a fork that went on without
    /// one could deadlock; a handler in the middle of a fetch finishes it
    /// first (bounded by the store's retry window), so the fork is only slowed.
    private static func prepare() {
        guard getpid() == owner.load(ordering: .sequentiallyConsistent) else { return }
        // Announced before the shards are asked: a region registered from now
        // on waits for this fork (`beforeRegisteringSharedRegion`).
        forksUnderWay.add(1, ordering: .sequentiallyConsistent)
        let handlers = shards.withLock { $0.compactMap(\.shard) }.filter(\.mayGetForkEvents).map(\.handler)
        guard !handlers.isEmpty else { return }
        held.withLock { $0[thisThread] = handlers }
        let requests = handlers.map { $0.requestForkWait() }
        for (handler, request) in zip(handlers, requests) {
            while handler.forkAcknowledged.load(ordering: .acquiring) < request { usleep(20) }
        }
    }

    /// After fork, in the parent: the handlers go on (once no other fork is
    /// under way), and handle what they read.
    private static func resumeAfterFork() {
        guard getpid() == owner.load(ordering: .sequentiallyConsistent) else { return }
        defer { forksUnderWay.subtract(1, ordering: .sequentiallyConsistent) }
        guard let handlers = held.withLock({ $0.removeValue(forKey: thisThread) }) else { return }
        for handler in handlers { handler.endForkWait() }
    }

    /// Called with a shard's shared-region count already raised, before the
    /// region is registered: a fork that did not see the count must not copy
    /// the registration, so a fork under way is waited out. (Raised count then
    /// checked here, against announced fork then counted there: one of the
    /// two sees the other.)
    static func beforeRegisteringSharedRegion() {
        while forksUnderWay.load(ordering: .sequentiallyConsistent) > 0 { usleep(50) }
    }
}

extension FaultHandler {
    /// Returns the request's number: the handler has stopped for it once
    /// `forkAcknowledged` reaches it. (The count goes up first, so a handler
    /// that sees the number sees the count too, and does not leave.)
    func requestForkWait() -> UInt64 {
        forkRequests.add(1, ordering: .acquiringAndReleasing)
        let request = forkRequestNumber.add(1, ordering: .acquiringAndReleasing).newValue
        notifier.signal()
        return request
    }

    func endForkWait() {
        forkRequests.subtract(1, ordering: .acquiringAndReleasing)
        notifier.signal()
    }

    /// A fork of this process is under way (see `ForkGate`).
    @inline(__always) var forkRequested: Bool { forkRequests.load(ordering: .acquiring) > 0 }

    /// While this process forks: reads our userfaultfd (a FORK event is done
    /// once read, and the fork goes on) into `forkStash`, allocating nothing;
    /// then handles it all as one batch.
    func waitOutFork() {
        var stashed = 0, droppedFaults = false
        let room = forkStash.capacity - UserfaultfdMessages.capacity
        while true {
            let request = forkRequestNumber.load(ordering: .acquiring)
            guard forkRequested else { break }
            forkAcknowledged.store(request, ordering: .releasing)
            var read = 0
            if stashed < room {
                read = (try? uffd.read(into: forkStash, at: stashed)) ?? 0
                stashed += read
            } else {
                // Full (thousands of faulting threads): events are kept, faults
                // dropped; their threads are woken after the fork and fault again.
                read = (try? uffd.read(into: messages)) ?? 0
                for i in 0..<read where !messages[i].isPageFault && stashed < forkStash.capacity {
                    messages.copy(i, to: forkStash, at: stashed)
                    stashed += 1
                }
                droppedFaults = droppedFaults || read > 0
            }
            if read == 0 {
                notifier.drain()   // the request's signal: poll would return at once, and spin
                _ = fm_poll2(uffd.descriptor.rawValue, notifier.descriptor.rawValue, 1)
            }
        }
        notifier.signal()   // an inbox message drained above is not lost
        if stashed > 0 { handleBatch(forkStash, count: stashed, from: nil) }
        if droppedFaults {
            for region in liveRegions {
                for extent in region.extents { try? uffd.wake(extent.start, length: extent.pageCount * 4096) }
            }
        }
    }
}

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
enum ForkGate {
    private final class Entry: @unchecked Sendable {
        weak var shard: PagerShard?
        init(_ shard: PagerShard) { self.shard = shard }
    }
    private static let shards = Mutex<[Entry]>([])
    /// The handlers each forking thread stopped (its after-fork handler releases them).
    private static let held = Mutex<[UInt: [FaultHandler]]>([:])
    private static let installed = Atomic<Bool>(false)

    static func register(_ shard: PagerShard) {
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
        guard let handlers = held.withLock({ $0.removeValue(forKey: thisThread) }) else { return }
        for handler in handlers { handler.endForkWait() }
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
        var stashed = 0
        while true {
            let request = forkRequestNumber.load(ordering: .acquiring)
            guard forkRequested else { break }
            forkAcknowledged.store(request, ordering: .releasing)
            let read = (try? uffd.read(into: forkStash, at: stashed)) ?? 0
            stashed += read
            if read == 0 || stashed == forkStash.capacity {
                _ = fm_poll2(uffd.descriptor.rawValue, notifier.descriptor.rawValue, 1)
            }
        }
        if stashed > 0 { handleBatch(forkStash, count: stashed, from: nil) }
    }
}

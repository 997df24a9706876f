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
/// has returned. Faults that come meanwhile wait until then too.
enum ForkGate {
    private final class Entry: @unchecked Sendable {
        weak var shard: PagerShard?
        init(_ shard: PagerShard) { self.shard = shard }
    }
    private static let shards = Mutex<[Entry]>([])
    /// The handlers stopped for the fork under way (the parent releases them).
    private static let held = Mutex<[FaultHandler]>([])
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

    /// Before fork: stops every handler that may get a FORK event, and waits
    /// until each is only reading (at most 10 s: a handler in the middle of a
    /// fetch finishes it first).
    private static func prepare() {
        let handlers = shards.withLock { $0.compactMap(\.shard) }.filter(\.mayGetForkEvents).map(\.handler)
        guard !handlers.isEmpty else { return }
        for handler in handlers { handler.requestForkWait() }
        let deadline = fm_now_ns() + 10_000_000_000
        for handler in handlers {
            while !handler.forkWaiting.load(ordering: .acquiring), fm_now_ns() < deadline { usleep(20) }
        }
        held.withLock { $0 = handlers }
    }

    /// After fork, in the parent: the handlers go on, and handle what they read.
    private static func resumeAfterFork() {
        let handlers = held.withLock { held in
            defer { held = [] }
            return held
        }
        for handler in handlers { handler.endForkWait() }
    }
}

extension FaultHandler {
    func requestForkWait() {
        forkRequested.store(true, ordering: .releasing)
        notifier.signal()
    }

    func endForkWait() {
        forkRequested.store(false, ordering: .releasing)
        notifier.signal()
    }

    /// While this process forks: reads our userfaultfd (a FORK event is done
    /// once read, and the fork goes on) into `forkStash`, allocating nothing;
    /// then handles it all as one batch.
    func waitOutFork() {
        var stashed = 0
        forkWaiting.store(true, ordering: .releasing)
        while forkRequested.load(ordering: .acquiring) {
            let read = (try? uffd.read(into: forkStash, at: stashed)) ?? 0
            stashed += read
            if read == 0 || stashed == forkStash.capacity {
                _ = fm_poll2(uffd.descriptor.rawValue, notifier.descriptor.rawValue, 1)
            }
        }
        forkWaiting.store(false, ordering: .releasing)
        if stashed > 0 { handleBatch(forkStash, count: stashed, from: nil) }
    }
}

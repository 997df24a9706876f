import FarMemSystem
import Synchronization

/// Testing only (`FarMemoryConfiguration.testHooks`, internal): lets a test
/// stop the fault handler before it reads its userfaultfd, so that messages
/// queued meanwhile arrive in one batch, and stretch the time between reading
/// a batch that holds an event and handling it, as if the handler had been
/// preempted there. Unset (nil), the handler pays one nil check per read.
final class HandlerTestHooks: Sendable {
    /// While true, the handler waits before reading its userfaultfd.
    let holdsReads = Atomic<Bool>(false)
    /// After reading a batch with an event in it, the handler sleeps this long.
    let eventBatchDelayNanoseconds = Atomic<UInt64>(0)
    /// Batches with an event read so far.
    let eventBatches = Atomic<Int>(0)

    init() {}

    func waitWhileHeld(_ running: () -> Bool) {
        while holdsReads.load(ordering: .acquiring) && running() { sleepSeconds(0.001) }
    }

    func readBatchWithEvent() {
        eventBatches.add(1, ordering: .relaxed)
        let delay = eventBatchDelayNanoseconds.load(ordering: .relaxed)
        if delay > 0 { sleepSeconds(Double(delay) / 1e9) }
    }
}

import CFarMemSys
#if canImport(Glibc)
import Glibc
#endif
import CFarMemTestSupport
import FarMemSystem
import FarMemWorkloads
@testable import FarMemory
import Foundation
import Synchronization
import XCTest

/// The pager against the application's own munmap, mremap and pins while
/// write-backs are in flight, and its budget bookkeeping when the kernel or
/// the server refuses for a while (issue 8, parts 2 and 4).
final class PagerEventTests: XCTestCase {
    private var server: ServerProcess!

    override func setUpWithError() throws { server = try ServerProcess(capacity: "128MiB") }
    override func tearDown() { server.stop() }

    /// The smallest budget (64 pages: eviction starts above 32 resident pages,
    /// 32 staging slots), and time-outs long enough that a paused server only
    /// delays write-backs.
    private func makeMemory(budgetPages: Int = 64, requestTimeout: Double = 30, retryWindow: Double = 30) throws -> FarMemory {
        try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: budgetPages * 4096,
                                                            requestTimeoutSeconds: requestTimeout,
                                                            retryWindowSeconds: retryWindow, prefetchPages: 0))
    }

    private func waitFor(_ what: String, timeout: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(5_000)
        }
        XCTFail("timed out waiting for \(what)")
        return false
    }

    /// Whether the kernel has a page mapped at `address` (mincore: no fault taken).
    private func isResident(_ address: UnsafeMutableRawPointer) -> Bool {
        var vector: UInt8 = 0
        precondition(mincore(address, 4096, &vector) == 0)
        return vector & 1 != 0
    }

    /// A thread that reads a far page inside the kernel (write(2) to a pipe
    /// from it), so a fault it cannot finish ends in EFAULT, not a signal.
    private final class KernelReader: @unchecked Sendable {
        private var pipe: [Int32] = [0, 0]
        let result = Atomic<Int>(Int.min)   // Int.min: still blocked
        private var thread: PosixThread!

        init(from address: UnsafeMutableRawPointer) {
            precondition(Glibc.pipe(&pipe) == 0)
            let fd = pipe[1], source = UInt(bitPattern: address)
            thread = PosixThread.spawn(name: "kernel-reader") { [self] in
                let written = write(fd, UnsafeRawPointer(bitPattern: source), 4096)
                self.result.store(written < 0 ? -Int(errno) : written, ordering: .releasing)
            }
        }

        var finished: Bool { result.load(ordering: .acquiring) != Int.min }

        func join() {
            thread.join()
            close(pipe[0])
            close(pipe[1])
        }
    }

    /// Pauses the server, then writes fresh pages until a write-back is in
    /// flight (the server cannot answer it): page 0, the first evicted, is in
    /// staging and its faults park. Returns how many pages were written.
    private func holdPageZeroInFlight(_ memory: FarMemory, _ region: FarRegion, _ pattern: PagePattern) -> Int {
        server.pause()
        var written = 0
        while memory.statistics.stagedPages == 0, written < region.pageCount {
            _ = pattern.write(page: written, at: region.baseAddress! + written * 4096)
            written += 1
        }
        XCTAssertGreaterThan(memory.statistics.stagedPages, 0)
        XCTAssertEqual(memory.statistics.writeBacks, 0, "the paused server took no write-back")
        return written
    }

    /// Parks a kernel reader on the page at `address` (its write-back held in
    /// flight), runs `event` (the application unmaps or moves the range),
    /// resumes the server, and returns what the reader's write(2) returned; nil
    /// (a failure recorded, the memory closed to free the thread) if it stayed blocked.
    private func parkedReaderResult(_ memory: FarMemory, at address: UnsafeMutableRawPointer, after what: String,
                                    event: () -> Void) -> Int? {
        let parked = memory.statistics.parkedFaults
        let reader = KernelReader(from: address)
        guard waitFor("the reader's fault to park", { memory.statistics.parkedFaults > parked }) else {
            server.resume()
            memory.close()
            reader.join()
            return nil
        }
        event()
        let released = waitFor("the parked reader to be released after \(what)") { reader.finished }
        server.resume()
        if !released { memory.close() }   // closing the userfaultfd frees the stuck thread (and unmaps the region)
        reader.join()
        return released ? reader.result.load(ordering: .acquiring) : nil
    }

    /// A fault and a REMOVE of the same page read in one batch (the handler
    /// was busy while both were queued; the kernel hands faults out first).
    /// The kernel counts the REMOVE as done when it is read, and the
    /// madvising thread zaps the page while the handler is still on the
    /// batch. Handled in the order read, the fault fetched the page from
    /// before the discard and installed it after the zap, where nothing
    /// removes it again: the discarded data came back for good (the rare
    /// failure of the discard race test, and a freed far block that a
    /// preloaded program's calloc finds dirty). The hooks hold the handler
    /// while both are queued and stretch the moment after the read, so the
    /// old order fails every time.
    func testAFaultReadInOneBatchWithARemoveOfItsPageNeverBringsTheDataBack() throws {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: 64 * 4096,
                                                   requestTimeoutSeconds: 30, retryWindowSeconds: 30, prefetchPages: 0)
        let hooks = HandlerTestHooks()
        configuration.testHooks = hooks
        let memory = try FarMemory(configuration: configuration)
        defer { memory.close() }
        let region = try memory.allocate(bytes: 256 * 4096)
        let base = region.baseAddress!
        base.storeBytes(of: 0x5EED_5EED, as: UInt64.self)
        // Page 0 goes first (FIFO); write on until it is out and its write-back landed.
        var next = 1
        while isResident(base) || memory.statistics.writeBacks == 0, next < region.pageCount {
            (base + next * 4096).storeBytes(of: UInt64(next), as: UInt64.self)
            next += 1
        }
        XCTAssertFalse(isResident(base), "page 0 evicted")
        guard waitFor("every write-back to land", { memory.statistics.stagedPages == 0 }) else { return }

        hooks.eventBatchDelayNanoseconds.store(50_000_000, ordering: .relaxed)
        hooks.holdsReads.store(true, ordering: .releasing)
        let address = UInt(bitPattern: base)
        let reader = PosixThread.spawn(name: "reader") {
            fm_sink(UnsafePointer<UInt64>(bitPattern: address)!.pointee)   // a fault on page 0
        }
        usleep(50_000)
        let discarder = PosixThread.spawn(name: "discarder") {
            madvise(UnsafeMutableRawPointer(bitPattern: address), 4096, MADV_DONTNEED)   // its REMOVE, behind the fault
        }
        usleep(50_000)
        let batches = hooks.eventBatches.load(ordering: .relaxed)
        hooks.holdsReads.store(false, ordering: .releasing)
        discarder.join()
        reader.join()
        XCTAssertGreaterThan(hooks.eventBatches.load(ordering: .relaxed), batches, "the REMOVE was read")
        XCTAssertEqual(base.load(as: UInt64.self), 0, "MADV_DONTNEED has returned: the page reads as zeros")
        XCTAssertEqual(memory.statistics.verificationFailures, 0)
    }

    /// Issue 8, part 2: a thread parked on a page whose write-back is in
    /// flight is woken when the application unmaps the range; the kernel does
    /// not wake it (shared/reference/experiments/unmap-wake.c).
    func testAThreadWaitingOnAPageInFlightIsReleasedWhenItsRangeIsUnmapped() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: 1 << 20)
        let pattern = PagePattern(seed: 81)
        let written = holdPageZeroInFlight(memory, region, pattern)
        let base = region.baseAddress!   // nil once page 0 is unmapped
        let result = parkedReaderResult(memory, at: base, after: "munmap") { XCTAssertEqual(munmap(base, 16 * 4096), 0) }
        guard let result else { return }
        XCTAssertEqual(result, -Int(EFAULT), "the range is gone: EFAULT, as without FarMem")
        let rest = (16..<written).filter { !pattern.verify(page: $0, at: base + $0 * 4096).ok }
        XCTAssertEqual(rest, [], "the pages left mapped keep their data")
    }

    /// The same for mremap: the parked thread waits at the old address; after
    /// the move it is woken there (EFAULT), and the page's data is at the new one.
    func testAThreadWaitingOnAPageInFlightIsReleasedWhenItsRangeIsRemapped() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: 1 << 20)
        let pattern = PagePattern(seed: 82)
        let written = holdPageZeroInFlight(memory, region, pattern)
        let old = region.baseAddress!
        let target = mmap(nil, region.length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        let result = parkedReaderResult(memory, at: old, after: "mremap") {
            let moved = fm_mremap(UInt64(UInt(bitPattern: old)), UInt64(region.length), UInt64(region.length),
                                  3 /* MREMAP_MAYMOVE | MREMAP_FIXED */, UInt64(UInt(bitPattern: target)))
            XCTAssertEqual(moved, Int64(Int(bitPattern: target)))
        }
        guard let result else { return }
        XCTAssertEqual(result, -Int(EFAULT), "nothing is mapped at the old address")
        let bad = (0..<written).filter { !pattern.verify(page: $0, at: target + $0 * 4096).ok }
        XCTAssertEqual(bad, [], "every page, the one in flight included, is at the new address")
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }

    /// Writes (or reads) `pages` through `pattern` until `done` holds or the deadline passes.
    private func churn(_ region: FarRegion, _ pages: Range<Int>, _ pattern: PagePattern, seconds: Double = 15,
                       until done: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            for page in pages { _ = pattern.write(page: page, at: region.baseAddress! + page * 4096) }
            if done() { return true }
        } while Date() < deadline
        return false
    }

    /// Issue 8, part 4: a page the kernel refuses to move while it is pinned
    /// (an io_uring fixed buffer: UFFDIO_MOVE says EBUSY) is kept outside the
    /// budget, and tried again later: once the pin is gone, it leaves.
    func testAPinnedPageIsKeptWhilePinnedAndEvictedOnceThePinIsDropped() throws {
        let memory = try makeMemory(requestTimeout: 2, retryWindow: 3)
        defer { memory.close() }
        let region = try memory.allocate(bytes: 2 << 20)
        let base = region.baseAddress!
        let pinned = PagePattern(seed: 84), others = PagePattern(seed: 85)
        _ = pinned.write(page: 0, at: base)
        let pin = fmt_pin(UInt64(UInt(bitPattern: base)), 4096)
        guard pin >= 0 else { throw XCTSkip("io_uring cannot pin here: \(Errno(negated: Int32(pin)))") }
        var unpinned = false
        defer { if !unpinned { _ = fmt_unpin(pin) } }
        XCTAssertTrue(churn(region, 1..<region.pageCount, others) { memory.statistics.unevictablePages == 1 },
                      "the pinned page is set aside: \(memory.statistics)")
        XCTAssertTrue(isResident(base))
        XCTAssertEqual(fmt_unpin(pin), 0)
        unpinned = true
        let left = churn(region, 1..<region.pageCount, others) { memory.statistics.unevictablePages == 0 && !isResident(base) }
        XCTAssertTrue(left, "once unpinned the page is evicted like any other: \(memory.statistics)")
        XCTAssertTrue(pinned.verify(page: 0, at: base).ok)
        let bad = (1..<region.pageCount).filter { !others.verify(page: $0, at: base + $0 * 4096).ok }
        XCTAssertEqual(bad, [])
        let stats = memory.statistics
        XCTAssertLessThanOrEqual(stats.residentPages + stats.stagedPages, 64, stats.description)
    }

    /// Issue 8, part 4: a write-back that fails (the server stopped answering)
    /// puts its pages back into the region. They are back in the eviction
    /// queue, and once the server answers again eviction resumes and they
    /// leave like any other page: the budget holds again.
    func testPagesPutBackAfterAFailedWriteBackAreEvictedOnceTheServerAnswersAgain() throws {
        let memory = try makeMemory(requestTimeout: 0.5, retryWindow: 1)
        defer { memory.close() }
        let region = try memory.allocate(bytes: 8 << 20)
        let base = region.baseAddress!
        let first = PagePattern(seed: 86), second = PagePattern(seed: 87), third = PagePattern(seed: 88)
        for page in 0..<512 { _ = first.write(page: page, at: base + page * 4096) }
        server.pause()
        // Fresh pages need no fetch: the writes go on while eviction's write-backs fail.
        var page = 512
        while memory.statistics.writeBackFailures == 0, page < 1024 {
            _ = second.write(page: page, at: base + page * 4096)
            page += 1
        }
        XCTAssertGreaterThan(memory.statistics.writeBackFailures, 0, "the paused server failed a write-back")
        server.resume()
        let secondEnd = page
        // Eviction must resume, and every page written before now must leave local memory.
        let evictedAgain = churn(region, 1024..<region.pageCount, third) {
            (0..<secondEnd).allSatisfy { !isResident(base + $0 * 4096) }
        }
        let stillResident = (0..<secondEnd).filter { isResident(base + $0 * 4096) }
        XCTAssertTrue(evictedAgain, "pages still resident: \(stillResident.prefix(20)); \(memory.statistics)")
        let bad = (0..<512).filter { !first.verify(page: $0, at: base + $0 * 4096).ok }
            + (512..<secondEnd).filter { !second.verify(page: $0, at: base + $0 * 4096).ok }
        XCTAssertEqual(bad, [], "no page lost")
        let stats = memory.statistics
        XCTAssertLessThanOrEqual(stats.residentPages + stats.stagedPages, 64, stats.description)
    }

    /// Issue 8, part 3: thousands of faults arrive at once while the handler is
    /// held in a fetch, with a REMOVE event queued behind them, so every
    /// install meets EAGAIN until the event is read. More faults than the
    /// handler's first deferral buffer holds must all wait and then be served:
    /// no recursion, no lost fault. (In the probe, since a stack overflow
    /// would take the test process with it.)
    func testMoreFaultsThanTheDeferralBufferWhileAnEventIsPendingAreAllServed() throws {
        let probe = try FailureProbe(port: server.endpoint.port, mode: "fault-burst", watchdogSeconds: 90)
        XCTAssertTrue(probe.readyLine.hasPrefix("READY"), "probe said: \(probe.readyLine)")
        server.pause()
        probe.go()
        let piled = probe.nextLine()
        server.resume()
        XCTAssertEqual(piled, "PILED\n")
        let done = probe.nextLine()
        let log = probe.finish()
        XCTAssertEqual(probe.process.terminationReason, .exit, "the probe died (signal \(probe.process.terminationStatus)): \(log.suffix(2000))")
        XCTAssertEqual(probe.process.terminationStatus, 0, log.suffix(2000).description)
        XCTAssertTrue(done.hasPrefix("DONE"), "probe said: \(done)")
        // Before the fix the buffer held 4,096 and the next fault recursed.
        let words = done.split(whereSeparator: { $0 == " " || $0 == "," })
        let peak = words.firstIndex(of: "peak").flatMap { Int(words[$0 + 1]) } ?? 0
        XCTAssertGreaterThan(peak, 4096, "more faults than the old buffer held were held at once: \(done)")
    }

    /// The mappings registered with userfaultfd for missing faults (smaps
    /// VmFlags "um"), as (start, length).
    private func userfaultfdMappings() throws -> [(start: UInt, length: Int)] {
        // Read to the end: /proc files report a size of 0.
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        var result: [(UInt, Int)] = [], current: (UInt, Int)?
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let start = UInt(line[..<dash], radix: 16), let end = UInt(line[line.index(after: dash)..<space], radix: 16) {
                current = (start, Int(end - start))
            } else if line.hasPrefix("VmFlags:"), line.split(separator: " ").contains("um"), let mapping = current {
                result.append(mapping)
            }
        }
        return result
    }

    /// Issue 8, part 4: when the application mlocks memory that covers the
    /// pager's staging area (an mlockall does), emptying staging slots fails
    /// and moves into them are refused. No page may be blamed for good, no
    /// fault may wait for room that cannot come, and once the lock is gone
    /// eviction recovers: the budget holds and no page stays unevictable.
    func testStagingThatCannotBeEmptiedForAWhileStallsNothingAndBlamesNoPage() throws {
        let memory = try makeMemory(requestTimeout: 2, retryWindow: 3)
        defer { memory.close() }
        let region = try memory.allocate(bytes: 2 << 20)
        let base = region.baseAddress!
        let first = PagePattern(seed: 89), second = PagePattern(seed: 90), third = PagePattern(seed: 91)
        for page in 0..<region.pageCount { _ = first.write(page: page, at: base + page * 4096) }
        let regionRange = UInt(bitPattern: base)..<UInt(bitPattern: base) + UInt(region.length)
        let staging = try userfaultfdMappings().filter { !regionRange.contains($0.start) && $0.length == 32 * 4096 }
        guard staging.count == 1, let area = UnsafeMutableRawPointer(bitPattern: staging[0].start) else {
            return XCTFail("expected one 128 KiB staging mapping, found \(staging)")
        }
        // The whole region rewritten, from a thread (so a hang fails instead of
        // blocking the suite), with the lock taken half-way: write-backs are in
        // flight then, and their slots cannot be emptied afterwards.
        let progress = Atomic<Int>(0)
        let writer = PosixThread.spawn(name: "rewriter") {
            for page in 0..<512 {
                _ = second.write(page: page, at: UnsafeMutableRawPointer(bitPattern: regionRange.lowerBound + UInt(page) * 4096)!)
                progress.store(page + 1, ordering: .releasing)
            }
        }
        _ = waitFor("the rewrite to get going", timeout: 30) { progress.load(ordering: .acquiring) >= 128 }
        // A short stall of the server's holds a write-back in flight across the
        // mlock (which waits for the handler, itself waiting on a fetch).
        server.pause()
        usleep(20_000)
        let locked = Atomic<Int32>(-2)
        let stagingAddress = staging[0].start, stagingLength = staging[0].length
        let locker = PosixThread.spawn(name: "locker") {
            locked.store(mlock(UnsafeRawPointer(bitPattern: stagingAddress), stagingLength), ordering: .releasing)
        }
        usleep(20_000)
        server.resume()
        locker.join()
        XCTAssertEqual(locked.load(ordering: .acquiring), 0, "mlock of the staging area")
        let finished = waitFor("the rewrite under the lock", timeout: 30) { progress.load(ordering: .acquiring) == 512 }
        XCTAssertEqual(memory.statistics.unevictablePages, 0, "no page is blamed for the lock on staging: \(memory.statistics)")
        munlock(area, staging[0].length)
        writer.join()
        guard finished else { return }
        let recovered = churn(region, 0..<region.pageCount, third) {
            let stats = memory.statistics
            return stats.unevictablePages == 0 && stats.residentPages + stats.stagedPages <= 64
        }
        XCTAssertTrue(recovered, "eviction recovers once staging can be emptied: \(memory.statistics)")
        let bad = (0..<region.pageCount).filter { !third.verify(page: $0, at: base + $0 * 4096).ok }
        XCTAssertEqual(bad, [])
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }
}

import CFarMemSys
import CFarMemTestSupport
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import Synchronization
import XCTest

/// fork with far regions mapped. memfd and hugetlb regions are shared memory:
/// a child keeps them (UFFD_FEATURE_EVENT_FORK) and its faults are served
/// through its own userfaultfd, from the same page cache and server copies;
/// its writes are the parent's. Anonymous regions are not inherited (see
/// README, "fork"; `PagerTests.testForkedChildCannotReachFarMemoryAndParentIsUnharmed`).
final class ForkTests: XCTestCase {
    private var server: ServerProcess!

    override func setUpWithError() throws { server = try ServerProcess(capacity: "256MiB") }
    override func tearDown() { server.stop() }

    func testAChildReadsAndWritesAMemfdRegionFourTimesTheBudget() throws {
        try forkReadsAndWrites(kind: .memfd, budget: 2 << 20, regionBytes: 8 << 20)
    }

    func testAChildReadsAndWritesAHugetlbRegionFourTimesTheBudget() throws {
        let pool = try HugePagePool(free: 24)
        defer { pool.restore() }
        try forkReadsAndWrites(kind: .hugetlb, budget: 16 << 20, regionBytes: 64 << 20)
    }

    /// A child that unmaps the region (after reading it, so that it faulted
    /// pages in) takes only its own mapping: the parent keeps every page.
    func testAChildsMunmapLeavesTheParentsPages() throws {
        let pattern = PagePattern(seed: 42)
        try forkChild(Int32(FMT_CHILD_UNMAPS), over: pattern) { memory, region, status in
            XCTAssertEqual(status, 0, "the child's wait status")
            XCTAssertEqual(region.mismatches(pattern, threads: 2), [])
            XCTAssertEqual(memory.statistics.verificationFailures, 0)
            XCTAssertEqual(memory.statistics.discards, 0, "a child's munmap discards nothing")
        }
    }

    /// An 8 MiB memfd region (4x the budget, page verification on) written
    /// with `pattern`, and a child forked over it that checks every page and
    /// then does what `mode` says; `check` sees its wait status.
    private func forkChild(_ mode: Int32, over pattern: PagePattern, _ check: (FarMemory, FarRegion, Int32) -> Void) throws {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: 2 << 20)
        configuration.verifiesPages = true
        let memory = try FarMemory(configuration: configuration)
        defer { memory.close() }
        guard memory.followsForks else { throw XCTSkip("forks are not followed here (CAP_SYS_PTRACE)") }
        let region = try memory.allocate(bytes: 8 << 20, kind: .memfd)
        region.write(pattern)
        let expected = hashes(of: pattern, pages: region.pageCount)
        var result = fmt_fork_result_t()
        let status = fmt_fork_check_and_write(UInt64(UInt(bitPattern: region.baseAddress!)), Int32(region.pageCount), expected,
                                              fm_page_hash, mode, &result)
        check(memory, region, status)
    }

    /// The parent unmaps half of a region (evicted pages) while a child still
    /// maps it: the child's view is its own, and it still reads the data.
    func testTheParentsMunmapLeavesAChildsPages() throws {
        let memory = try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: 2 << 20))
        defer { memory.close() }
        let region = try numberedMemfdRegion(memory)
        let base = region.baseAddress!
        var release: Int32 = -1
        let child = fmt_fork_waiting(UInt64(UInt(bitPattern: base + 5 * 4096)), &release)
        XCTAssertGreaterThan(child, 0)
        XCTAssertEqual(munmap(base, region.length / 2), 0)   // page 5 among them, evicted
        // A fault elsewhere: the handler has read the UNMAP by the time it is served.
        XCTAssertEqual(base.load(fromByteOffset: region.length - 4096, as: UInt8.self), UInt8((region.pageCount - 1) % 100 + 1))
        let status = fmt_release_and_wait(child, release)
        XCTAssertEqual(status, Int32(5 % 100 + 1) << 8, "the child reads page 5 as written (wait status \(status))")
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }

    /// The parent closes a region while a child still maps it: the child keeps
    /// what was in the page cache, and an evicted page raises SIGBUS there
    /// (never the file's zeros).
    func testAChildOutlivingTheRegionGetsSIGBUSForEvictedPagesNotZeros() throws {
        let memory = try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: 2 << 20))
        defer { memory.close() }
        let region = try numberedMemfdRegion(memory)
        let base = region.baseAddress!
        let last = region.pageCount - 1
        var evictedRelease: Int32 = -1, residentRelease: Int32 = -1
        let evictedChild = fmt_fork_waiting(UInt64(UInt(bitPattern: base)), &evictedRelease)
        let residentChild = fmt_fork_waiting(UInt64(UInt(bitPattern: base + last * 4096)), &residentRelease)
        XCTAssertGreaterThan(evictedChild, 0)
        XCTAssertGreaterThan(residentChild, 0)
        region.close()
        let evicted = fmt_release_and_wait(evictedChild, evictedRelease)
        let resident = fmt_release_and_wait(residentChild, residentRelease)
        XCTAssertEqual(evicted & 0x7f, SIGBUS, "an evicted page: SIGBUS (wait status \(evicted))")
        XCTAssertEqual(resident, Int32(last % 100 + 1) << 8, "a resident page keeps its data (wait status \(resident))")
    }

    /// Forks, one after another, while two threads fault on the region: a
    /// fork waits until the handler has read its FORK event, and the handler
    /// must not wait on anything the forking thread holds (glibc holds the
    /// malloc locks across fork: see `ForkGate`). Bounded: 40 forks.
    func testForksWhileOtherThreadsFaultNeitherHangNorLoseData() throws {
        let memory = try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: 2 << 20))
        defer { memory.close() }
        guard memory.followsForks else { throw XCTSkip("forks are not followed here (CAP_SYS_PTRACE)") }
        let region = try memory.allocate(bytes: 8 << 20, kind: .memfd)
        let pattern = PagePattern(seed: 43), churn = PagePattern(seed: 44)
        region.write(pattern)
        let checked = 64, pages = region.pageCount
        let expected = hashes(of: pattern, pages: checked)
        let base = UInt(bitPattern: region.baseAddress!)
        let stop = Atomic<Bool>(false)
        // The workers write the pages after the checked ones, and read the
        // checked ones as the children do: the same pages fault in both processes.
        let workers = (0..<2).map { t in
            PosixThread.spawn(name: "fork-churn-\(t)") {
                var round = 0
                while !stop.load(ordering: .relaxed), round < 50 {
                    for page in stride(from: checked + t, to: pages, by: 2) {
                        _ = churn.write(page: page, at: UnsafeMutableRawPointer(bitPattern: base + UInt(page * 4096))!)
                        if page % 32 == 0 { fm_sink(UnsafePointer<UInt64>(bitPattern: base + UInt((page / 32 % checked) * 4096))!.pointee) }
                    }
                    round += 1
                }
            }
        }
        for fork in 0..<40 {
            var result = fmt_fork_result_t()
            let status = fmt_fork_check_and_write(UInt64(base), Int32(checked), expected, fm_page_hash, Int32(FMT_CHILD_CHECKS), &result)
            XCTAssertEqual(status, 0, "fork \(fork): wait status \(status), first bad page \(result.first_bad_page)")
        }
        stop.store(true, ordering: .relaxed)
        workers.forEach { $0.join() }
        XCTAssertEqual(region.mismatches(pattern, pages: Array(0..<checked)), [])
        XCTAssertEqual(region.mismatches(churn, pages: Array(checked..<pages)), [])
    }

    /// An 8 MiB memfd region (4x the tests' budget) whose page N starts with
    /// the byte N % 100 + 1, written in order: under a FIFO budget the first
    /// pages are evicted, the last resident. Skips where forks are not followed.
    private func numberedMemfdRegion(_ memory: FarMemory) throws -> FarRegion {
        guard memory.followsForks else { throw XCTSkip("forks are not followed here (CAP_SYS_PTRACE)") }
        let region = try memory.allocate(bytes: 8 << 20, kind: .memfd)
        for page in 0..<region.pageCount { region.baseAddress!.storeBytes(of: UInt8(page % 100 + 1), toByteOffset: page * 4096, as: UInt8.self) }
        return region
    }

    /// A child that forks in turn: its fork is not gated (it has no handler
    /// threads of its own), and the grandchild's userfaultfd comes to the
    /// parent's handler through the child's, which serves it too.
    func testAGrandchildReadsTheRegionThroughItsOwnUserfaultfd() throws {
        try forkChild(Int32(FMT_CHILD_FORKS), over: PagePattern(seed: 45)) { memory, region, status in
            XCTAssertEqual(status, 0, "the child's wait status (the grandchild's exit status << 8)")
            XCTAssertGreaterThan(memory.statistics.childFaults, UInt64(region.pageCount / 2), memory.statistics.description)
            XCTAssertTrue(waitUntil("both userfaultfds to be closed", seconds: 5) { memory.statistics.forkedChildren == 0 },
                          memory.statistics.description)
        }
    }

    /// Each page's hash as `pattern` writes it (computed aside: the region is not touched).
    private func hashes(of pattern: PagePattern, pages: Int) -> [UInt64] {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { scratch.deallocate() }
        return (0..<pages).map { page -> UInt64 in
            _ = pattern.write(page: page, at: scratch)
            return fm_page_hash(scratch)
        }
    }

    /// The child checks every page (three quarters of them evicted at fork
    /// time), then writes every page twice while the parent's budget evicts
    /// them under it; the parent then sees the child's last writes, and the
    /// child's userfaultfd is closed once it has exited.
    private func forkReadsAndWrites(kind: RegionKind, budget: Int, regionBytes: Int) throws {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget)
        configuration.verifiesPages = true
        let memory = try FarMemory(configuration: configuration)
        defer { memory.close() }
        guard memory.followsForks else { throw XCTSkip("forks are not followed here (CAP_SYS_PTRACE)") }
        let region = try memory.allocate(bytes: regionBytes, kind: kind)
        let pattern = PagePattern(seed: 41)
        region.write(pattern, threads: 2)
        let pages = region.pageCount
        XCTAssertLessThanOrEqual(memory.statistics.residentPages, UInt64(pages / 2), "at least half evicted at fork time")
        let expected = hashes(of: pattern, pages: pages)
        let base = UInt64(UInt(bitPattern: region.baseAddress!))
        var result = fmt_fork_result_t()
        let status = fmt_fork_check_and_write(base, Int32(pages), expected, fm_page_hash, Int32(FMT_CHILD_WRITES), &result)
        XCTAssertEqual(status, 0, "the child's wait status (1 << 8: page \(result.first_bad_page) was not as written; a signal: it died)")
        XCTAssertEqual(result.first_bad_page, -1)
        // The child's writes are the parent's.
        let words = region.baseAddress!.assumingMemoryBound(to: UInt64.self)
        let wrong = (0..<pages).filter { page in
            [0, 1, 511].contains { w in words[page * 512 + w] != fmt_child_word(Int32(page), Int32(w), 2) }
        }
        XCTAssertEqual(wrong.prefix(5), [], "pages the parent does not see as the child last wrote them: \(wrong.count)")
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.childFaults, UInt64(pages / (kind == .hugetlb ? 512 : 1)), stats.description)
        XCTAssertGreaterThan(stats.writeProtectFaults, 0, "the child's writes to pages it read: \(stats)")
        XCTAssertEqual(stats.poisoned, 0)
        XCTAssertEqual(stats.verificationFailures, 0, stats.description)
        XCTAssertTrue(waitUntil("the exited child's userfaultfd to be closed", seconds: 5) { memory.statistics.forkedChildren == 0 },
                      memory.statistics.description)
        print("\(kind) region, \(regionBytes >> 20) MiB, budget \(budget >> 20) MiB: fork \(result.fork_ns / 1000) us, "
              + "the child's check of every page \(result.check_ns / 1_000_000) ms, child done after \(result.child_ns / 1_000_000) ms; \(stats)")
    }
}

import CFarMemSys
import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import Synchronization
import XCTest

/// FarMemory paging through a real farmemd process: real userfaultfd, real
/// madvise/munmap/mremap/fork, every byte verified.
final class PagerTests: XCTestCase {
    private var server: ServerProcess!
    private let budget = 2 << 20            // 512 pages
    private let regionBytes = 10 << 20      // 5x the budget

    override func setUpWithError() throws { server = try ServerProcess(capacity: "128MiB") }
    override func tearDown() { server.stop() }

    private func makeMemory(budget: Int? = nil) throws -> FarMemory {
        try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget ?? self.budget))
    }

    private func address(_ region: FarRegion, _ page: Int) -> UnsafeMutableRawPointer {
        region.baseAddress! + page * 4096
    }

    private func fill(_ region: FarRegion, _ pattern: PagePattern, threads: Int = 1) { region.write(pattern, threads: threads) }

    private func mismatches(_ region: FarRegion, _ pattern: PagePattern, pages: [Int]? = nil, threads: Int = 1) -> [Int] {
        region.mismatches(pattern, pages: pages, threads: threads)
    }

    private func isZero(_ pointer: UnsafeRawPointer) -> Bool {
        (0..<512).allSatisfy { pointer.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }
    }

    private func serverStats() throws -> ServerStats {
        let observer = try RawClient(server.endpoint)
        XCTAssertNil(try observer.hello().error)
        return try observer.call(.stats, []).body.withUnsafeBytes { try ServerStats.decode($0) }
    }

    private func waitFor(_ what: String, timeout: Double = 5, _ condition: () throws -> Bool) rethrows {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(20_000)
        }
        XCTFail("timed out waiting for \(what)")
    }

    func testRegionFiveTimesTheBudgetIsVerifiedWithFourThreads() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 1)
        fill(region, pattern, threads: 4)
        XCTAssertEqual(mismatches(region, pattern, threads: 4), [])
        XCTAssertEqual(mismatches(region, pattern, threads: 3), [], "second pass, other interleaving")
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.evictions, UInt64(region.pageCount), stats.description)
        XCTAssertGreaterThanOrEqual(stats.writeBacks, UInt64(region.pageCount - budget / 4096), stats.description)
        XCTAssertGreaterThan(stats.fetches + stats.prefetched, UInt64(region.pageCount), stats.description)
        XCTAssertEqual(stats.zeroFills, UInt64(region.pageCount), "each page zero-filled once, never fetched before it was written")
        XCTAssertLessThanOrEqual(stats.residentPages + stats.stagedPages, UInt64(budget / 4096), stats.description)
        XCTAssertEqual(stats.poisoned, 0)
        XCTAssertEqual(stats.budgetOvershoot, 0, "prefetching and eviction stay within the budget")
    }

    func testSeveralHandlerThreadsSplitTheRegionAndLoseNothing() throws {
        let memory = try FarMemory(configuration: FarMemoryConfiguration(
            server: server.endpoint, budgetBytes: budget, handlerThreads: 3))
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 21)
        fill(region, pattern, threads: 4)
        XCTAssertEqual(mismatches(region, pattern, threads: 4), [])
        // Application MADV_DONTNEED across the chunk boundaries reaches every handler.
        let pages = region.pageCount
        XCTAssertEqual(madvise(address(region, pages / 4), pages / 2 * 4096, MADV_DONTNEED), 0)
        XCTAssertTrue((pages / 4..<pages / 4 + pages / 2).allSatisfy { isZero(address(region, $0)) })
        XCTAssertEqual(mismatches(region, pattern, pages: Array(0..<pages / 4) + Array(pages / 4 + pages / 2..<pages)), [])
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.evictions, UInt64(pages), stats.description)
        XCTAssertEqual(stats.budgetOvershoot, 0)
        XCTAssertLessThanOrEqual(stats.residentPages + stats.stagedPages, UInt64(budget / 4096))
    }

    func testPagesTheKernelWillNotMoveStayOutsideTheBudgetAndNothingWedges() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 31)
        fill(region, pattern)
        // mlock faults the pages in and locks them: UFFDIO_MOVE refuses locked
        // pages (the area's flags differ from staging's), so eviction must skip them.
        let locked = 128
        XCTAssertEqual(mlock(region.baseAddress!, locked * 4096), 0, "mlock: \(String(cString: strerror(errno)))")
        defer { munlock(region.baseAddress!, locked * 4096) }
        XCTAssertEqual(mismatches(region, pattern), [], "all data intact, no fault left waiting")
        XCTAssertEqual(mismatches(region, pattern), [])
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.unevictablePages, 0, stats.description)
        XCTAssertLessThanOrEqual(stats.unevictablePages, UInt64(locked))
        XCTAssertLessThanOrEqual(stats.residentPages + stats.stagedPages, UInt64(budget / 4096))
    }

    func testManyThreadsFaultingOnTheSamePagesAllSeeTheData() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 2)
        fill(region, pattern)
        // Every thread walks the same pages in the same order: most faults race.
        let base = UInt(bitPattern: region.baseAddress!)
        let failures = Mutex(0)
        let workers = (0..<4).map { t in
            PosixThread.spawn(name: "same-\(t)") {
                var bad = 0
                for page in 0..<512 where !pattern.verify(page: page, at: UnsafeRawPointer(bitPattern: base + UInt(page) * 4096)!).ok {
                    bad += 1
                }
                failures.withLock { $0 += bad }
            }
        }
        workers.forEach { $0.join() }
        XCTAssertEqual(failures.withLock { $0 }, 0)
        XCTAssertEqual(mismatches(region, pattern), [])
    }

    func testCleanPagesAreDroppedWithoutWriteBackAndModifiedOnesPersist() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 3)
        fill(region, pattern)
        XCTAssertEqual(mismatches(region, pattern), [])   // every page now fetched clean
        let before = memory.statistics
        XCTAssertEqual(mismatches(region, pattern), [])   // read-only pass: evictions of clean pages only
        let after = memory.statistics
        XCTAssertGreaterThan(after.evictions - before.evictions, 1000, after.description)
        XCTAssertEqual(after.writeBacks, before.writeBacks, "a read-only pass writes nothing back")
        XCTAssertGreaterThan(after.cleanDrops - before.cleanDrops, 1000)

        // Read, then modify every 7th page in place: a write-protect fault makes it dirty.
        let modified = PagePattern(seed: 33)
        for page in stride(from: 0, to: region.pageCount, by: 7) {
            _ = pattern.verify(page: page, at: address(region, page))
            _ = modified.write(page: page, at: address(region, page))
        }
        let expected = { (page: Int) in page % 7 == 0 ? modified : pattern }
        let bad = (0..<region.pageCount).filter { !expected($0).verify(page: $0, at: address(region, $0)).ok }
        XCTAssertEqual(bad, [])
        let final = memory.statistics
        XCTAssertGreaterThan(final.writeProtectFaults, 0, "dirty tracking saw the first writes to clean pages")
        XCTAssertGreaterThan(final.writeBacks, after.writeBacks, "modified pages were written back")
    }

    /// An update pass (read each page, then rewrite it) over a region five
    /// times the budget: once most clean pages are seen to be written, the
    /// prefetched ones go in writable and dirty (no write-protect fault each),
    /// and every rewrite still reaches the server. Against the same pass with
    /// the prediction off, which takes a write-protect fault per page.
    func testPredictedWritesSkipTheWriteProtectFaultAndLoseNoWrite() throws {
        func updatePass(predictsWrites: Bool) throws -> (writeProtectFaults: UInt64, pages: Int) {
            var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget)
            configuration.predictsWrites = predictsWrites
            let memory = try FarMemory(configuration: configuration)
            defer { memory.close() }
            let region = try memory.allocate(bytes: regionBytes)
            let old = PagePattern(seed: 41), new = PagePattern(seed: 42)
            fill(region, old)
            let before = memory.statistics
            var stale = 0
            for page in 0..<region.pageCount {
                if !old.verify(page: page, at: address(region, page)).ok { stale += 1 }
                _ = new.write(page: page, at: address(region, page))
            }
            let after = memory.statistics
            XCTAssertEqual(stale, 0)
            XCTAssertEqual(mismatches(region, new), [], "every rewrite kept (predictsWrites: \(predictsWrites))")
            XCTAssertEqual(memory.statistics.poisoned, 0)
            return (after.writeProtectFaults - before.writeProtectFaults, region.pageCount)
        }
        let predicted = try updatePass(predictsWrites: true)
        let unpredicted = try updatePass(predictsWrites: false)
        XCTAssertGreaterThan(unpredicted.writeProtectFaults, UInt64(unpredicted.pages * 3 / 4), "without it: a fault per page")
        XCTAssertLessThan(predicted.writeProtectFaults, UInt64(predicted.pages / 4), "with it: most pages went in writable")
    }

    func testApplicationDontNeedReadsAsZerosAndDiscardsTheServerCopy() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 4)
        fill(region, pattern)
        let pages = region.pageCount
        let dropped = (pages / 4)..<(pages * 3 / 4)   // both evicted and resident pages
        XCTAssertEqual(madvise(address(region, dropped.lowerBound), dropped.count * 4096, MADV_DONTNEED), 0)
        for page in dropped {
            XCTAssertTrue(isZero(address(region, page)), "page \(page) must read as zeros after MADV_DONTNEED, never stale")
            if !isZero(address(region, page)) { break }
        }
        XCTAssertEqual(mismatches(region, pattern, pages: Array(0..<dropped.lowerBound) + Array(dropped.upperBound..<pages)), [])
        // And again, after the zero pages were evicted themselves.
        XCTAssertTrue(dropped.allSatisfy { isZero(address(region, $0)) })
        waitFor("discards") { memory.statistics.discards > 0 }
        // The range works as ordinary far memory afterwards.
        let rewrite = PagePattern(seed: 44)
        for page in dropped { _ = rewrite.write(page: page, at: address(region, page)) }
        XCTAssertEqual(mismatches(region, pattern, pages: Array(0..<dropped.lowerBound)), [])
        XCTAssertTrue(dropped.allSatisfy { rewrite.verify(page: $0, at: address(region, $0)).ok })
    }

    func testPartialMunmapKeepsTheRestAndFreesTheServerPages() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 5)
        fill(region, pattern)
        let half = region.pageCount / 2
        let storedBefore = try serverStats().storedPages
        XCTAssertEqual(munmap(address(region, half), (region.pageCount - half) * 4096), 0)
        XCTAssertEqual(mismatches(region, pattern, pages: Array(0..<half)), [])
        try waitFor("server copies of the unmapped half to be discarded") {
            try serverStats().storedPages <= storedBefore - UInt64(half) / 2
        }
        region.close()   // must not unmap the range it no longer owns
    }

    func testMremapMovesTheRegionWithItsEvictedPages() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 6)
        fill(region, pattern)
        XCTAssertGreaterThan(memory.statistics.evictions, 0)
        let old = UInt64(UInt(bitPattern: region.baseAddress!))
        let target = mmap(nil, region.length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        let moved = fm_mremap(old, UInt64(region.length), UInt64(region.length), 3 /* MREMAP_MAYMOVE | MREMAP_FIXED */,
                              UInt64(UInt(bitPattern: target)))
        XCTAssertEqual(moved, Int64(Int(bitPattern: target)))
        XCTAssertEqual(region.baseAddress, target, "the region follows its new address")
        XCTAssertEqual(mismatches(region, pattern), [], "evicted pages come back at the new address")
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }

    /// Pages fetched from the server so far (on faults and ahead of them).
    private func fetched(_ memory: FarMemory) -> UInt64 { memory.statistics.fetches + memory.statistics.prefetched }

    func testGrowingARegionReadsNoPageInPlaceOrMovedAndKeepsEveryOne() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pages = region.pageCount, length = region.length
        let pattern = PagePattern(seed: 9)
        fill(region, pattern)
        XCTAssertGreaterThan(memory.statistics.evictions, 0)
        // Put the region where 2 more lengths after it are free.
        let place = UInt(bitPattern: mmap(nil, 3 * length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!)
        XCTAssertEqual(fm_mremap(UInt64(UInt(bitPattern: region.baseAddress!)), UInt64(length), UInt64(length), 3 /* MAYMOVE | FIXED */,
                                 UInt64(place)), Int64(place))
        munmap(UnsafeMutableRawPointer(bitPattern: place + UInt(length)), 2 * length)
        let before = fetched(memory)

        XCTAssertEqual(UInt(bitPattern: try region.grow(to: 2 * length, mayMove: false)), place, "grown where it is")
        XCTAssertEqual(region.pageCount, 2 * pages)
        // Now something right after it: growing must move it, or fail if it may not.
        let blocker = mmap(UnsafeMutableRawPointer(bitPattern: place + UInt(2 * length)), 4096, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        XCTAssertNotEqual(blocker, MAP_FAILED)
        defer { munmap(blocker, 4096) }
        XCTAssertThrowsError(try region.grow(to: 3 * length, mayMove: false)) { error in
            guard case .system(_, .outOfMemory) = error as? FarMemoryError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(region.pageCount, 2 * pages, "a refused grow changes nothing")
        let moved = UInt(bitPattern: try region.grow(to: 3 * length))
        XCTAssertNotEqual(moved, place)
        XCTAssertEqual(region.baseAddress.map { UInt(bitPattern: $0) }, moved)
        XCTAssertEqual(region.pageCount, 3 * pages)
        XCTAssertEqual(fetched(memory), before, "growing read no page from the server")
        // The old place is free again: the region left nothing behind.
        let old = mmap(UnsafeMutableRawPointer(bitPattern: place), 2 * length, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        XCTAssertEqual(old.map { UInt(bitPattern: $0) }, place)
        munmap(old, 2 * length)

        XCTAssertEqual(mismatches(region, pattern, pages: Array(0..<pages)), [], "evicted and resident pages kept their data")
        XCTAssertEqual((pages..<3 * pages).filter { !isZero(address(region, $0)) }, [], "new pages read as zeros")
        // The new pages page like the old ones, and closing frees every part on the server.
        let second = PagePattern(seed: 10)
        fill(region, second)
        XCTAssertEqual(mismatches(region, second), [])
        XCTAssertEqual(memory.statistics.poisoned, 0)
        region.close()
        try waitFor("every part's pages to be freed") { try serverStats().storedPages == 0 }
    }

    func testGrowingARegionSplitBetweenHandlerThreadsKeepsEveryPage() throws {
        let memory = try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget, handlerThreads: 2))
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pages = region.pageCount
        let pattern = PagePattern(seed: 11)
        fill(region, pattern, threads: 2)
        let end = UInt(bitPattern: region.baseAddress!) + UInt(region.length)
        let blocker = mmap(UnsafeMutableRawPointer(bitPattern: end), 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        defer { if blocker != MAP_FAILED { munmap(blocker, 4096) } }
        let before = fetched(memory)
        try region.grow(to: 2 * regionBytes + 4096)   // each handler's chunk of each part moves on its own
        XCTAssertEqual(fetched(memory), before)
        XCTAssertEqual(mismatches(region, pattern, pages: Array(0..<pages), threads: 2), [])
        let second = PagePattern(seed: 12)
        fill(region, second, threads: 2)
        XCTAssertEqual(mismatches(region, second, threads: 2), [])
        // A region cut by munmap no longer grows: its pages are not all where the grown part would follow.
        munmap(address(region, 1), 4096)
        XCTAssertThrowsError(try region.grow(to: 3 * regionBytes)) { error in
            guard case .invalidArgument = error as? FarMemoryError else { return XCTFail("\(error)") }
        }
    }

    func testForkedChildCannotReachFarMemoryAndParentIsUnharmed() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let pattern = PagePattern(seed: 7)
        fill(region, pattern)
        // Anonymous regions are MADV_DONTFORK: the child has no mapping there and faults
        // with SIGSEGV instead of silently reading zeros for evicted pages.
        let status = fm_fork_and_read(UInt64(UInt(bitPattern: region.baseAddress!)))
        XCTAssertGreaterThanOrEqual(status, 0)
        XCTAssertEqual(status & 0x7f, SIGSEGV, "child must die of SIGSEGV, wait status \(status)")
        XCTAssertEqual(mismatches(region, pattern), [])
    }

    func testFullServerIsAClearErrorAtAllocation() throws {
        server.stop()
        server = try ServerProcess(capacity: "4MiB")
        let memory = try makeMemory()
        defer { memory.close() }
        XCTAssertThrowsError(try memory.allocate(bytes: 8 << 20)) { error in
            guard case .serverRefused(let refusal) = error as? FarMemoryError else { return XCTFail("\(error)") }
            XCTAssertEqual(refusal.code, .outOfCapacity)
            XCTAssertTrue("\(error)".contains("out of capacity"), "\(error)")
        }
        let fits = try memory.allocate(bytes: 2 << 20)   // still usable afterwards
        fits.baseAddress!.storeBytes(of: 42, as: UInt64.self)
        XCTAssertEqual(fits.baseAddress!.load(as: UInt64.self), 42)
    }

    func testUnreachableServerAndWrongTokenAreClearErrors() throws {
        let closedPort = try TCPSocket.listen(on: TCPSocket.Endpoint(host: "127.0.0.1", port: 0))
        let port = closedPort.localPort
        closedPort.close()
        XCTAssertThrowsError(try FarMemory(configuration: FarMemoryConfiguration(
            server: TCPSocket.Endpoint(host: "127.0.0.1", port: port), budgetBytes: budget))) { error in
            guard case .serverUnreachable = error as? FarMemoryError else { return XCTFail("\(error)") }
        }
        server.stop()
        server = try ServerProcess(capacity: "4MiB", token: "right")
        XCTAssertThrowsError(try FarMemory(configuration: FarMemoryConfiguration(
            server: server.endpoint, budgetBytes: budget, token: Array("wrong".utf8)))) { error in
            guard case .serverRefused(let refusal) = error as? FarMemoryError else { return XCTFail("\(error)") }
            XCTAssertEqual(refusal.code, .authenticationFailed)
        }
        let memory = try FarMemory(configuration: FarMemoryConfiguration(
            server: server.endpoint, budgetBytes: budget, token: Array("right".utf8)))
        memory.close()
    }

    func testClosingFreesEveryServerPage() throws {
        let memory = try makeMemory()
        let region = try memory.allocate(bytes: regionBytes)
        fill(region, PagePattern(seed: 8))
        XCTAssertGreaterThan(try serverStats().storedPages, 0)
        let second = try memory.allocate(bytes: 1 << 20)
        second.close()
        memory.close()
        memory.close()   // idempotent
        try waitFor("the server to free the session") {
            let stats = try serverStats()
            return stats.storedPages == 0 && stats.reservedPages == 0
        }
    }

    // MARK: Failures, in a separate process

    /// Kills `process` if it is still running after `seconds`: a hung probe fails
    /// its test instead of hanging the suite.
    private func watchdog(_ process: Process, seconds: Double) {
        let pid = process.processIdentifier
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
            if process.isRunning { kill(pid, SIGKILL) }
        }
    }

    func testDeadServerRaisesSIGBUSOnTheEvictedPageInsteadOfHanging() throws {
        let probe = try FailureProbe(port: server.endpoint.port, mode: "read-evicted", watchdogSeconds: 60)
        XCTAssertTrue(probe.readyLine.hasPrefix("READY"), "probe said: \(probe.readyLine)")
        server.kill()
        let started = Date()
        let log = probe.proceed()
        XCTAssertLessThan(Date().timeIntervalSince(started), 20, "bounded retry, then failure")
        XCTAssertEqual(probe.process.terminationReason, .uncaughtSignal)
        XCTAssertEqual(probe.process.terminationStatus, SIGBUS, "killed by SIGBUS, not by the watchdog's SIGKILL")
        XCTAssertTrue(log.contains("could not be fetched"), log)
    }

    /// The same with the Swift runtime's crash handling on (SWIFT_BACKTRACE
    /// unset): swift-backtrace stops "all other threads" and reads memory
    /// around the crashed thread's registers. The pager's threads block the
    /// signals it stops threads with, so far pages it reads are still served
    /// (here: fail at once, the server being gone), and the probe dies of SIGBUS
    /// after its backtrace instead of waiting for a handler that was stopped.
    func testDeadServerSIGBUSWithTheSwiftBacktracerOnDiesPromptly() throws {
        let probe = try FailureProbe(port: server.endpoint.port, mode: "read-evicted", watchdogSeconds: 30, backtrace: true)
        XCTAssertTrue(probe.readyLine.hasPrefix("READY"), "probe said: \(probe.readyLine)")
        server.kill()
        let started = Date()
        let log = probe.proceed()
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(probe.process.terminationStatus, SIGBUS, "killed by SIGBUS, not by the watchdog's SIGKILL: \(log.suffix(3000))")
        XCTAssertLessThan(elapsed, 20, log.suffix(3000).description)
        XCTAssertTrue(log.contains("Backtrace took"), "swift-backtrace ran: \(log.suffix(3000))")
        print("Swift probe with swift-backtrace: dead after \(String(format: "%.2f", elapsed)) s")
    }

    func testKilledClientsPagesAreFreedByTheServer() throws {
        let probe = try FailureProbe(port: server.endpoint.port, mode: "hold", watchdogSeconds: 60)
        XCTAssertTrue(probe.readyLine.hasPrefix("READY"), "probe said: \(probe.readyLine)")
        XCTAssertGreaterThan(try serverStats().storedPages, 0)
        kill(probe.process.processIdentifier, SIGKILL)
        probe.process.waitUntilExit()
        try waitFor("the server to free the killed client's pages") {
            let stats = try serverStats()
            return stats.storedPages == 0 && stats.reservedPages == 0
        }
    }

    func testDemoPrintsItsReportAndVerifiesTheDataOnEachRegionKind() throws {
        for kind in RegionKind.allCases {
            // A hugetlb region's budget holds at least 4 huge pages, which the pool must have.
            let pool = kind == .hugetlb ? try HugePagePool(free: 16) : nil
            defer { pool?.restore() }
            let demo = Process()
            demo.executableURL = URL(fileURLWithPath: BuiltProducts.path("farmem"))
            demo.arguments = ["demo", "--budget", kind == .hugetlb ? "8MiB" : "2MiB", "--random-reads", "2000", "--region-kind", kind.rawValue]
            let output = Pipe()
            demo.standardOutput = output
            try demo.run()
            watchdog(demo, seconds: 120)
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            demo.waitUntilExit()
            XCTAssertEqual(demo.terminationStatus, 0, text)
            XCTAssertTrue(text.contains("data verified"), text)
            XCTAssertTrue(text.contains("\(kind) region"), text)
            if kind != .anonymous { XCTAssertTrue(text.contains("fork:"), "shared kinds: the fork row\n\(text)") }
            let evictions = text.firstMatch(of: /evictions (\d+)/).map { Int($0.1)! } ?? 0
            let writeBacks = text.firstMatch(of: /write-backs (\d+)/).map { Int($0.1)! } ?? 0
            XCTAssertGreaterThan(evictions, 0, text)
            XCTAssertGreaterThan(writeBacks, 0, text)
        }
    }
}

import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import XCTest

/// memfd regions (`RegionKind.memfd`) paged through a real farmemd: pages
/// received into the page cache through a second mapping and mapped with
/// UFFDIO_CONTINUE, evicted by write-back and PUNCH_HOLE; every byte verified.
final class SharedRegionTests: XCTestCase {
    private var server: ServerProcess!
    private let budget = 2 << 20            // 512 pages
    private let regionBytes = 10 << 20      // 5x the budget

    override func setUpWithError() throws { server = try ServerProcess(capacity: "128MiB") }
    override func tearDown() { server.stop() }

    /// With page verification on: every page installed from the store must
    /// match its last write-back (`PageVerifier`).
    private func makeMemory(handlerThreads: Int = 1) throws -> FarMemory {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget, handlerThreads: handlerThreads)
        configuration.verifiesPages = true
        return try FarMemory(configuration: configuration)
    }

    private func serverStats() throws -> ServerStats {
        let observer = try RawClient(server.endpoint)
        XCTAssertNil(try observer.hello().error)
        return try observer.call(.stats, []).body.withUnsafeBytes { try ServerStats.decode($0) }
    }

    /// The bytes the region's memfd holds in memory (its page cache): the
    /// blocks allocated to the file, found through /proc/self/fd.
    private func pageCacheBytes(of region: FarRegion) throws -> Int {
        let directory = "/proc/self/fd"
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(name)"),
                  target.hasPrefix("/memfd:farmem-region-") else { continue }
            var info = stat()
            guard stat("\(directory)/\(name)", &info) == 0, info.st_size == region.length else { continue }
            return Int(info.st_blocks) * 512
        }
        throw NSError(domain: "no memfd of the region's size among this process's descriptors", code: 0)
    }

    func testAMemfdRegionFiveTimesTheBudgetIsPagedAndVerifiedWithFourThreads() throws {
        for handlerThreads in [1, 2] {
            let memory = try makeMemory(handlerThreads: handlerThreads)
            defer { memory.close() }
            let region = try memory.allocate(bytes: regionBytes, kind: .memfd)
            XCTAssertEqual(region.kind, .memfd)
            let first = PagePattern(seed: 21)
            region.write(first, threads: 4)
            XCTAssertEqual(region.mismatches(first, threads: 4), [], "handler threads: \(handlerThreads)")
            // Written again over pages fetched clean (write-protected): no write may be lost.
            let second = PagePattern(seed: 22)
            region.write(second, threads: 4)
            XCTAssertEqual(region.mismatches(second, threads: 4), [], "handler threads: \(handlerThreads)")
            let stats = memory.statistics
            XCTAssertGreaterThan(stats.evictions, UInt64(region.pageCount), stats.description)
            XCTAssertGreaterThan(stats.fetches, 0, stats.description)
            XCTAssertGreaterThan(stats.writeBacks, 0, stats.description)
            XCTAssertEqual(stats.poisoned, 0)
            XCTAssertEqual(stats.verificationFailures, 0)
            // The page cache, not only the mapping, is kept under the budget
            // (plus what is being written back).
            let held = try pageCacheBytes(of: region)
            XCTAssertLessThanOrEqual(held, budget + budget / 2, "the memfd holds more than the budget")
            print("memfd region, \(handlerThreads) handler thread(s): \(held >> 10) KiB in the page cache; \(stats)")
            region.close()
            waitUntil("the server to free the region's pages", seconds: 5) { (try? serverStats().storedPages) == 0 }
                .ifFalse { XCTFail("stored pages remain: \(String(describing: try? serverStats()))") }
        }
    }

    func testDontNeedKeepsAResidentPageAndRemoveOrAnEvictedPageReadsAsZeros() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes, kind: .memfd)
        let pattern = PagePattern(seed: 23)
        region.write(pattern)
        let pages = region.pageCount
        let base = region.baseAddress!
        func isZero(_ page: Int) -> Bool { (0..<512).allSatisfy { (base + page * 4096).load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 } }
        // Written in order under a FIFO budget: the last pages are resident, the first evicted.
        let resident = pages - 2, removed = pages - 3, evicted = 0
        XCTAssertEqual(madvise(base + resident * 4096, 4096, MADV_DONTNEED), 0)
        XCTAssertEqual(madvise(base + removed * 4096, 4096, MADV_REMOVE), 0)
        XCTAssertEqual(madvise(base + evicted * 4096, 4096, MADV_DONTNEED), 0)
        XCTAssertEqual(region.mismatches(pattern, pages: [resident]), [], "MADV_DONTNEED on shared memory keeps the data")
        XCTAssertTrue(isZero(removed), "MADV_REMOVE discards it")
        XCTAssertTrue(isZero(evicted), "an evicted page cannot tell: discarded (README: memfd regions)")
        // Pushed out and fetched back: the discarded pages stay zeros, the kept one keeps its data.
        let churn = PagePattern(seed: 24)
        region.write(churn, threads: 2)   // every page rewritten...
        _ = region.mismatches(churn)      // ...and read, so the three pages travel again
        XCTAssertEqual(region.mismatches(churn, pages: [resident, removed, evicted]), [])
        XCTAssertEqual(madvise(base + removed * 4096, 4096, MADV_REMOVE), 0)
        XCTAssertTrue(isZero(removed))

        // Not touched again but evicted: once the REMOVE has settled (a
        // second), eviction asks the page cache which call it was.
        let last = PagePattern(seed: 25)
        region.write(last)
        let kept = pages - 5, gone = pages - 6
        XCTAssertEqual(madvise(base + kept * 4096, 4096, MADV_DONTNEED), 0)
        XCTAssertEqual(madvise(base + gone * 4096, 4096, MADV_REMOVE), 0)
        usleep(1_200_000)
        let others = PagePattern(seed: 26)
        for page in 0..<pages - 10 { _ = others.write(page: page, at: base + page * 4096) }   // pushes both out
        XCTAssertEqual(region.mismatches(last, pages: [kept]), [], "kept by MADV_DONTNEED, written back, fetched again")
        XCTAssertTrue(isZero(gone), "removed by MADV_REMOVE: never served back")
        XCTAssertEqual(memory.statistics.poisoned, 0)
        XCTAssertEqual(memory.statistics.verificationFailures, 0)
    }
}

private extension Bool {
    func ifFalse(_ body: () -> Void) { if !self { body() } }
}

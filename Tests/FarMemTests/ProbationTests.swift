import FarMemWorkloads
import FarMemory
import Foundation
import XCTest

/// The probation area through a real farmemd: evicted pages that are
/// touched again soon come back without the network, and none of them is
/// ever served stale (written since, or discarded since).
final class ProbationTests: XCTestCase {
    private var server: ServerProcess!
    private let budget = 2 << 20            // 512 pages, 64 of them probation
    private let regionBytes = 10 << 20      // 5x the budget

    override func setUpWithError() throws { server = try ServerProcess(capacity: "128MiB") }
    override func tearDown() { server.stop() }

    private func makeMemory(probationShare: Double, keepsRefaultedPages: Bool = true, prefetchPages: Int = 0) throws -> FarMemory {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget, prefetchPages: prefetchPages)
        configuration.probationShare = probationShare
        configuration.keepsRefaultedPages = keepsRefaultedPages
        configuration.verifiesPages = true
        return try FarMemory(configuration: configuration)
    }

    /// A hot set that FIFO order keeps pushing out (a cold scan runs beside
    /// it, 40 pages a round) comes back from probation: its pages cross the
    /// network once, where with the area off they come back over it each
    /// time FIFO order evicts them (every 7 or 8 rounds; the refault second
    /// chance is off here, so that only probation keeps them).
    func testAHotSetPushedOutByAScanComesBackWithoutTheNetwork() throws {
        func run(probationShare: Double) throws -> PagerStatistics {
            let memory = try makeMemory(probationShare: probationShare, keepsRefaultedPages: false)
            defer { memory.close() }
            let region = try memory.allocate(bytes: regionBytes)
            let pattern = PagePattern(seed: 71)
            region.write(pattern)
            let base = region.baseAddress!
            let hot = stride(from: 0, to: region.pageCount, by: 80).map { $0 }   // 32 pages spread out
            var cold = 0, bad = 0
            let before = memory.statistics
            for _ in 0..<150 {
                for page in hot where !pattern.verify(page: page, at: base + page * 4096).ok { bad += 1 }
                for _ in 0..<40 {
                    let page = cold % region.pageCount
                    cold += 1
                    if !pattern.verify(page: page, at: base + page * 4096).ok { bad += 1 }
                }
            }
            XCTAssertEqual(bad, 0)
            let after = memory.statistics
            XCTAssertEqual(after.verificationFailures, 0, after.description)
            XCTAssertEqual(after.poisoned, 0)
            var delta = after
            delta.fetches = after.fetches - before.fetches
            delta.probationHits = after.probationHits - before.probationHits
            return delta
        }
        let with = try run(probationShare: 0.125)
        let without = try run(probationShare: 0)
        // 32 hot pages, each evicted about 20 times in 150 rounds: about 640 comebacks.
        XCTAssertGreaterThan(with.probationHits, 400, with.description)
        XCTAssertEqual(without.probationHits, 0)
        XCTAssertLessThan(with.fetches + 300, without.fetches, "with probation \(with.fetches) fetches, without \(without.fetches)")
    }

    /// Random reads, writes and discards, hot-skewed so that many faults are
    /// served from probation, and now and then a sequential sweep (prefetched,
    /// over pages some of which have probation copies), against a model of
    /// every page: a write to a page taken from probation is kept, and a page
    /// discarded, or fetched and rewritten, while a copy of it sat in
    /// probation never reads as that copy.
    func testReadsWritesAndDiscardsAgreeWithAModel() throws {
        let memory = try makeMemory(probationShare: 0.125, prefetchPages: 64)
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes)
        let base = region.baseAddress!
        let pages = region.pageCount
        // The pattern generation each page holds; 0: zeros (never written, or discarded).
        var generation = [UInt64](repeating: 0, count: pages)
        var random = SplitMix64(seed: 5)
        func check(_ page: Int) -> Bool {
            let address = base + page * 4096
            if generation[page] == 0 {
                return (0..<512).allSatisfy { address.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }
            }
            return PagePattern(seed: generation[page]).verify(page: page, at: address).ok
        }
        var bad: [Int] = []
        for step in 1...30_000 {
            let draw = random.next()
            // 70% among 120 hot pages, the rest anywhere.
            let page = draw % 10 < 7 ? Int(draw >> 8 % 120) * 21 % pages : Int(draw >> 8) % pages
            if draw >> 40 % 10 < 4 {
                generation[page] = UInt64(step)
                _ = PagePattern(seed: UInt64(step)).write(page: page, at: base + page * 4096)
            } else if !check(page) {
                bad.append(page)
            }
            if step % 1000 == 0 {
                // A sweep: a stream the prefetcher follows; every other page rewritten.
                let first = Int(random.next() % UInt64(pages - 200))
                for page in first..<(first + 200) {
                    if !check(page) { bad.append(page) }
                    if page % 2 == 0 {
                        generation[page] = UInt64(step) << 20 | UInt64(page)
                        _ = PagePattern(seed: generation[page]).write(page: page, at: base + page * 4096)
                    }
                }
            }
            if step % 400 == 0 {
                // Discard a few hot pages: some resident, some in probation, some on the server only.
                let first = Int(random.next() % 120) * 21 % pages
                XCTAssertEqual(madvise(base + first * 4096, 4096, MADV_DONTNEED), 0)
                generation[first] = 0
            }
        }
        bad += (0..<pages).filter { !check($0) }
        XCTAssertEqual(bad, [], "pages not as last written (or not zeros after a discard)")
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.probationHits, 500, stats.description)
        XCTAssertGreaterThan(stats.writeProtectFaults, 0, "some pages taken from probation clean were then written")
        XCTAssertGreaterThan(stats.prefetched, 0, "the sweeps were prefetched")
        XCTAssertEqual(stats.verificationFailures, 0, stats.description)
        XCTAssertEqual(stats.poisoned, 0)
    }
}

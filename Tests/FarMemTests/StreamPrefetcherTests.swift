import FarMemWorkloads
@testable import FarMemory
import XCTest

/// The prefetcher (pure logic): which fault sequences start a prefetch, how
/// far ahead, and which never do. The access simulations fetch what it asks
/// for, as the fault handler does, so only pages not fetched yet fault.
final class StreamPrefetcherTests: XCTestCase {
    /// Touches `accesses` (thread, page) in order; a page faults unless a
    /// fault or a prefetch fetched it. Returns the faults.
    private func simulate(_ prefetcher: inout StreamPrefetcher, _ accesses: [(thread: UInt32, page: Int)], pages: Int) -> Int {
        var present = [Bool](repeating: false, count: pages)
        var faults = 0
        for (thread, page) in accesses where !present[page] {
            faults += 1
            present[page] = true
            guard let (stride, window) = prefetcher.record(thread: thread, region: 0, page: page) else { continue }
            var next = page
            for _ in 0..<window {
                next += stride
                guard next >= 0, next < pages, !present[next] else { break }
                present[next] = true
            }
        }
        return faults
    }

    func testASequentialScanFaultsOnceAWindowOnceItsStreamIsFound() {
        var prefetcher = StreamPrefetcher(maxWindow: 64)
        let faults = simulate(&prefetcher, (0..<20_000).map { (7, $0) }, pages: 20_000)
        // 3 to find it, then 8, 16, 32 and windows of 64: about 20,000 / 65.
        XCTAssertLessThan(faults, 20_000 / 65 + 10, "faults: \(faults)")
    }

    func testTheWindowStartsAtEightAndDoublesUpToTheCap() {
        var prefetcher = StreamPrefetcher(maxWindow: 64)
        XCTAssertNil(prefetcher.record(thread: 1, region: 0, page: 100))
        XCTAssertNil(prefetcher.record(thread: 1, region: 0, page: 101), "two faults: a stride, not confirmed")
        var windows: [Int] = []
        var page = 102
        for _ in 0..<6 {
            let answer = prefetcher.record(thread: 1, region: 0, page: page)
            XCTAssertEqual(answer?.stride, 1)
            windows.append(answer?.window ?? 0)
            page += (answer?.window ?? 0) + 1   // the next fault is just past what was fetched
        }
        XCTAssertEqual(windows, [8, 16, 32, 64, 64, 64])
    }

    /// A quicksort partition in one thread: one scan up from the bottom, one
    /// down from the top, their faults interleaved. Both are followed.
    func testTwoScansTowardEachOtherInOneThreadAreBothFollowed() {
        var prefetcher = StreamPrefetcher(maxWindow: 64)
        let pages = 20_000
        var accesses: [(thread: UInt32, page: Int)] = []
        for i in 0..<pages / 2 { accesses.append((3, i)); accesses.append((3, pages - 1 - i)) }
        let faults = simulate(&prefetcher, accesses, pages: pages)
        XCTAssertLessThan(faults, pages / 65 + 20, "faults: \(faults)")
    }

    func testStridedAndDescendingScansAreFollowed() {
        var strided = StreamPrefetcher(maxWindow: 64)
        let columns = simulate(&strided, stride(from: 0, to: 80_000, by: 8).map { (1, $0) }, pages: 80_000)
        XCTAssertLessThan(columns, 10_000 / 65 + 10, "strided faults: \(columns)")
        var descending = StreamPrefetcher(maxWindow: 64)
        let down = simulate(&descending, (0..<20_000).reversed().map { (1, $0) }, pages: 20_000)
        XCTAssertLessThan(down, 20_000 / 65 + 10, "descending faults: \(down)")
    }

    func testRandomAccessDoesNotPrefetch() {
        var prefetcher = StreamPrefetcher(maxWindow: 64)
        var generator = SplitMix64(seed: 5)
        let prefetches = (0..<20_000).compactMap { _ in
            prefetcher.record(thread: 1, region: 0, page: Int.random(in: 0..<1_000_000, using: &generator))
        }
        XCTAssertEqual(prefetches.count, 0)
    }

    /// Random faults in between do not break a scan (they take other slots),
    /// and a new scan elsewhere starts small.
    func testAScanSurvivesRandomFaultsInBetweenAndANewOneStartsSmall() {
        var prefetcher = StreamPrefetcher(maxWindow: 64)
        var generator = SplitMix64(seed: 9)
        var page = 0
        var last: (stride: Int, window: Int)?
        for _ in 0..<10 {
            last = prefetcher.record(thread: 1, region: 0, page: page).map { $0 } ?? last
            page += (last?.window ?? 0) + 1
            _ = prefetcher.record(thread: 1, region: 0, page: Int.random(in: 1_000_000..<9_000_000, using: &generator))
        }
        XCTAssertEqual(last?.window, 64, "the scan kept growing")
        _ = prefetcher.record(thread: 1, region: 0, page: 500_000)
        _ = prefetcher.record(thread: 1, region: 0, page: 500_001)
        XCTAssertEqual(prefetcher.record(thread: 1, region: 0, page: 500_002)?.window, 8)
    }

    /// Two threads scanning their own stripes keep their own streams; a new
    /// region starts a thread's history afresh.
    func testThreadsAndRegionsAreToldApart() {
        var prefetcher = StreamPrefetcher(maxWindow: 32)
        var last: [UInt32: (stride: Int, window: Int)?] = [:]
        for i in 0..<3 {
            last[1] = prefetcher.record(thread: 1, region: 0, page: i)
            last[2] = prefetcher.record(thread: 2, region: 0, page: 10_000 + 4 * i)
        }
        XCTAssertEqual(last[1]??.stride, 1)
        XCTAssertEqual(last[2]??.stride, 4)
        XCTAssertNil(prefetcher.record(thread: 1, region: 1, page: 3), "another region: no stream there yet")
    }

    func testAWindowOfZeroTurnsPrefetchingOff() {
        var prefetcher = StreamPrefetcher(maxWindow: 0)
        XCTAssertTrue((0..<20).allSatisfy { prefetcher.record(thread: 1, region: 0, page: $0) == nil })
    }
}

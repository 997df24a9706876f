@testable import FarMemory
import XCTest

/// Which evicted pages count as hot when they come back (pure logic).
final class RecencyTests: XCTestCase {
    private let marks = UnsafeMutablePointer<UInt8>.allocate(capacity: 1024)
    override func setUp() { marks.initialize(repeating: 0, count: 1024) }
    deinit { marks.deallocate() }

    /// Evicts `count` other pages (the clock moves a quarter budget per epoch).
    private func evictOthers(_ recency: inout Recency, _ count: Int) {
        for i in 0..<count { recency.evicted(marks, 512 + i % 512) }
    }

    func testAPageBackSoonAfterItsEvictionIsHotAndGetsOneSecondChance() {
        var recency = Recency(budgetPages: 400, enabled: true)   // epochs of 100 evictions
        recency.evicted(marks, 7)
        evictOthers(&recency, 300)
        XCTAssertTrue(recency.refetched(marks, 7), "back within 3 epochs")
        XCTAssertTrue(recency.secondChance(marks, 7))
        XCTAssertFalse(recency.secondChance(marks, 7), "one chance per comeback")
    }

    /// A hugetlb unit's eviction moves the clock by its 512 pages: a unit
    /// back after more than a budget's worth of other units is not hot.
    func testAHugePageMovesTheClockByItsPages() {
        var recency = Recency(budgetPages: 4096, enabled: true)   // 8 huge pages; epochs of 1024 pages
        recency.evicted(marks, 0, pages: 512)
        for unit in 1...10 { recency.evicted(marks, unit, pages: 512) }
        XCTAssertFalse(recency.refetched(marks, 0), "5 epochs later: it had its turn")
        recency.evicted(marks, 11, pages: 512)
        recency.evicted(marks, 12, pages: 512)
        XCTAssertTrue(recency.refetched(marks, 11), "back within an epoch")
    }

    func testAPageBackLongAfterOrNeverEvictedIsNotHot() {
        var recency = Recency(budgetPages: 400, enabled: true)
        recency.evicted(marks, 7)
        evictOthers(&recency, 600)
        XCTAssertFalse(recency.refetched(marks, 7), "back after 6 epochs: it had its turn")
        XCTAssertFalse(recency.refetched(marks, 8), "never evicted")
        XCTAssertFalse(recency.secondChance(marks, 7))
    }

    /// Epochs wrap after 127: a page back after 100 is not hot, one evicted
    /// just before the wrap and back just after it is. (One back after exactly
    /// a multiple of 127 epochs looks hot: an extra second chance, harmless.)
    func testTheEpochWraps() {
        var recency = Recency(budgetPages: 4, enabled: true)   // one eviction per epoch
        recency.evicted(marks, 7)
        evictOthers(&recency, 100)
        XCTAssertFalse(recency.refetched(marks, 7))
        evictOthers(&recency, 24)
        recency.evicted(marks, 9)
        evictOthers(&recency, 2)
        XCTAssertTrue(recency.refetched(marks, 9), "across the wrap")
    }

    func testOffMeansPlainFIFO() {
        var recency = Recency(budgetPages: 400, enabled: false)
        recency.evicted(marks, 7)
        XCTAssertFalse(recency.refetched(marks, 7))
        XCTAssertFalse(recency.secondChance(marks, 7))
    }
}

@testable import FarMemory
import XCTest

/// The budget's counts and the decisions that follow from them (pure logic).
final class BudgetTests: XCTestCase {
    func testEvictionStartsTwoBatchesBelowTheLimitAndStopsHalfABatchLower() {
        var budget = Budget(limit: 512, batchSize: 64)
        XCTAssertEqual(budget.highWater, 384)
        XCTAssertEqual(budget.evictionTarget, 352)
        budget.resident = 384
        XCTAssertFalse(budget.needsEviction)
        budget.resident = 385
        XCTAssertTrue(budget.needsEviction)
        XCTAssertFalse(budget.isFull)
    }

    /// Probation slots in use count like resident pages: as the area fills,
    /// the high-water mark moves down and eviction makes room.
    func testProbationSlotsInUseMoveTheMarksDown() {
        var budget = Budget(limit: 512, batchSize: 64)
        budget.resident = 380
        XCTAssertFalse(budget.needsEviction)
        budget.probation = 64
        XCTAssertEqual(budget.highWater, 320)
        XCTAssertEqual(budget.evictionTarget, 288)
        XCTAssertTrue(budget.needsEviction)
        XCTAssertEqual(budget.headroom, 68)
        budget.resident = 448
        XCTAssertTrue(budget.isFull)
    }

    func testTheSmallestBudgetStillLeavesRoomForABatch() {
        let budget = Budget(limit: 64, batchSize: 16)   // the smallest: 64 pages, 32 staging slots
        XCTAssertEqual(budget.highWater, 32)
        XCTAssertEqual(Budget(limit: 64, batchSize: 64).highWater, 64, "never below one batch")
    }

    func testStagedPagesCountUntilTheirSlotsAreEmptied() {
        var budget = Budget(limit: 100, batchSize: 10)
        budget.resident = 70
        budget.staged = 29
        XCTAssertFalse(budget.isFull)
        XCTAssertEqual(budget.headroom, 1)
        budget.staged = 30
        XCTAssertTrue(budget.isFull, "a new page waits for eviction")
        XCTAssertEqual(budget.headroom, 0)
        budget.staged = 35
        XCTAssertEqual(budget.overshoot, 5)
    }

    func testUnevictablePagesAreOutsideTheBudgetButCountForRetries() {
        var budget = Budget(limit: 100, batchSize: 10)
        budget.resident = 50
        budget.unevictable = 40
        XCTAssertFalse(budget.needsEviction)
        XCTAssertFalse(budget.isFull)
        XCTAssertTrue(budget.overHighWaterWithUnevictable, "memory in use is over the mark: retry the set-aside pages")
    }

    func testPublishedGaugesKeepTheLargestOvershoot() {
        let counters = PagerCounters()
        var budget = Budget(limit: 10, batchSize: 2)
        budget.resident = 12
        budget.staged = 1
        budget.unevictable = 4
        budget.publish(to: counters)
        XCTAssertEqual(counters.get(.residentPages), 12)
        XCTAssertEqual(counters.get(.stagedPages), 1)
        XCTAssertEqual(counters.get(.unevictablePages), 4)
        XCTAssertEqual(counters.get(.budgetOvershoot), 3)
        budget.resident = 9
        budget.publish(to: counters)
        XCTAssertEqual(counters.get(.budgetOvershoot), 3, "the largest so far")
    }
}

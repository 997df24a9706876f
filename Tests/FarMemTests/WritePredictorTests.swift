@testable import FarMemory
import XCTest

/// When prefetched pages go in writable and dirty (pure logic).
final class WritePredictorTests: XCTestCase {
    func testNothingIsPredictedBeforeEnoughPagesWereSeen() {
        var predictor = WritePredictor(enabled: true)
        predictor.installedClean(WritePredictor.minimumSample - 1)
        for _ in 0..<WritePredictor.minimumSample - 1 { predictor.wroteCleanPage() }
        XCTAssertFalse(predictor.predictsWrites)
        predictor.installedClean(1)
        XCTAssertTrue(predictor.predictsWrites)
    }

    func testMostCleanPagesWrittenPredictsWritesAndOneBatchInEightStaysClean() {
        var predictor = WritePredictor(enabled: true)
        predictor.installedClean(1000)
        for _ in 0..<900 { predictor.wroteCleanPage() }
        let batches = (0..<16).map { _ in predictor.installGoesInDirty() }
        XCTAssertEqual(batches.filter { !$0 }.count, 2, "probes: \(batches)")
    }

    func testNearlyAllWrittenProbesOneBatchInThirtyTwo() {
        var predictor = WritePredictor(enabled: true)
        predictor.installedClean(1000)
        for _ in 0..<990 { predictor.wroteCleanPage() }
        let batches = (0..<64).map { _ in predictor.installGoesInDirty() }
        XCTAssertEqual(batches.filter { !$0 }.count, 2, "probes: \(batches)")
    }

    /// Rare probes, a shorter window: a read phase after a sure write phase
    /// turns prediction off after no more clean pages than before.
    func testAReadOnlyPhaseAfterASureOneTurnsItOffWithinAWindow() {
        var predictor = WritePredictor(enabled: true)
        predictor.installedClean(1000)
        for _ in 0..<1000 { predictor.wroteCleanPage() }
        var cleanPages = 0
        while predictor.predictsWrites, cleanPages < 100_000 {
            predictor.installedClean(64)
            cleanPages += 64
        }
        XCTAssertLessThanOrEqual(cleanPages, 2 * WritePredictor.window)
    }

    func testAReadOnlyPhaseTurnsItOffWithinAWindow() {
        var predictor = WritePredictor(enabled: true)
        predictor.installedClean(1000)
        for _ in 0..<1000 { predictor.wroteCleanPage() }
        XCTAssertTrue(predictor.predictsWrites)
        // Reads only from now on: the old writes decay away.
        for _ in 0..<3 { predictor.installedClean(WritePredictor.window) }
        XCTAssertFalse(predictor.predictsWrites)
    }

    func testHalfWrittenIsNotEnoughAndOffMeansOff() {
        var predictor = WritePredictor(enabled: true)
        predictor.installedClean(1000)
        for _ in 0..<500 { predictor.wroteCleanPage() }
        XCTAssertFalse(predictor.predictsWrites)
        var off = WritePredictor(enabled: false)
        off.installedClean(1000)
        for _ in 0..<1000 { off.wroteCleanPage() }
        XCTAssertFalse(off.installGoesInDirty())
    }
}

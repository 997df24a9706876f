@testable import FarMemory
import XCTest

/// When the handler and a fetch spin rather than sleep (pure logic).
final class SpinPolicyTests: XCTestCase {
    func testItSpinsOnlyAfterARunOfQuickWaitsAndStopsAfterSlowOnes() {
        var policy = SpinPolicy(limitNanoseconds: 50_000, wakeCostNanoseconds: 50_000)
        XCTAssertEqual(policy.spinNanoseconds, 0, "no spinning before anything is known")
        var quick = 0
        while policy.spinNanoseconds == 0, quick < 100 {
            policy.observe(waited: 10_000, slept: false)
            quick += 1
        }
        XCTAssertEqual(policy.spinNanoseconds, 50_000)
        XCTAssertLessThanOrEqual(quick, 8, "a burst of faults turns it on within a few")
        var slow = 0
        while policy.spinNanoseconds > 0, slow < 100 {
            policy.observe(waited: 5_000_000, slept: true)
            slow += 1
        }
        XCTAssertLessThanOrEqual(slow, 8, "a pause turns it off as fast")
    }

    /// A message that came 30 us after the thread went to sleep is measured
    /// with the wake-up in it: still quick, so a workload that never got to
    /// spin can start.
    func testASleepThatLastedUnderTheLimitPlusAWakeUpCountsAsQuick() {
        var policy = SpinPolicy(limitNanoseconds: 50_000, wakeCostNanoseconds: 50_000)
        for _ in 0..<10 { policy.observe(waited: 90_000, slept: true) }
        XCTAssertEqual(policy.spinNanoseconds, 50_000)
        for _ in 0..<10 { policy.observe(waited: 90_000, slept: false) }
        XCTAssertEqual(policy.spinNanoseconds, 0, "a spin that outlasted the limit was wasted")
    }

    /// Half quick, half slow, alternating: it settles near the middle and
    /// never flips on a single observation after a long run of one kind.
    func testOneOddWaitDoesNotFlipALongRun() {
        var policy = SpinPolicy(limitNanoseconds: 50_000)
        for _ in 0..<50 { policy.observe(waited: 1_000, slept: false) }
        policy.observe(waited: 10_000_000, slept: true)
        XCTAssertGreaterThan(policy.spinNanoseconds, 0)
        for _ in 0..<50 { policy.observe(waited: 10_000_000, slept: true) }
        policy.observe(waited: 1_000, slept: false)
        XCTAssertEqual(policy.spinNanoseconds, 0)
    }
}

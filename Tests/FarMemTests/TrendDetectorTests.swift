@testable import FarMemory
import XCTest

/// The prefetch trend detector (pure logic): which fault sequences start a
/// prefetch, how far ahead, and which never do.
final class TrendDetectorTests: XCTestCase {
    /// Feeds `pages` as one thread's faults and returns each answer.
    private func feed(_ detector: inout TrendDetector, _ pages: [Int], thread: UInt32 = 7, region: Int = 0) -> [(stride: Int, window: Int)?] {
        pages.map { detector.record(thread: thread, region: region, page: $0) }
    }

    func testASequentialScanIsFoundAfterFourFaultsAndItsWindowDoublesUpToTheCap() {
        var detector = TrendDetector(maxWindow: 64)
        let answers = feed(&detector, Array(100..<110))
        XCTAssertTrue(answers[0..<3].allSatisfy { $0 == nil }, "too few faults to tell")
        XCTAssertEqual(answers[3..<10].map { $0?.stride }, Array(repeating: 1, count: 7))
        XCTAssertEqual(answers[3..<10].map { $0?.window }, [8, 16, 32, 64, 64, 64, 64])
    }

    func testStridedAndBackwardScansKeepTheirStride() {
        var forward = TrendDetector(maxWindow: 16)
        XCTAssertEqual(feed(&forward, stride(from: 0, to: 80, by: 8).map { $0 }).last??.stride, 8)
        var backward = TrendDetector(maxWindow: 16)
        XCTAssertEqual(feed(&backward, stride(from: 500, to: 480, by: -1).map { $0 }).last??.stride, -1)
    }

    func testRandomAccessDoesNotPrefetch() {
        var detector = TrendDetector(maxWindow: 64)
        var generator = SeededGenerator(seed: 5)
        let pages = (0..<200).map { _ in Int.random(in: 0..<1_000_000, using: &generator) }
        XCTAssertEqual(feed(&detector, pages).compactMap { $0 }.count, 0)
    }

    /// A trend that breaks stops the prefetch and starts again small.
    func testABrokenTrendStopsAndStartsAgainSmall() {
        var detector = TrendDetector(maxWindow: 64)
        _ = feed(&detector, Array(0..<8))
        var generator = SeededGenerator(seed: 9)
        let jumps = feed(&detector, (0..<8).map { _ in Int.random(in: 10_000..<1_000_000, using: &generator) })
        XCTAssertNil(jumps.last!, "eight random faults: no majority left")
        let again = feed(&detector, Array(2000..<2008)).compactMap { $0 }
        XCTAssertEqual(again.first?.window, 8, "back to the smallest window")
    }

    /// Two threads scanning their own stripes keep their own trends; a new
    /// region starts a thread's history afresh.
    func testThreadsAndRegionsAreToldApart() {
        var detector = TrendDetector(maxWindow: 32)
        var last: [UInt32: (stride: Int, window: Int)?] = [:]
        for i in 0..<8 {
            last[1] = detector.record(thread: 1, region: 0, page: i)
            last[2] = detector.record(thread: 2, region: 0, page: 10_000 + 4 * i)
        }
        XCTAssertEqual(last[1]??.stride, 1)
        XCTAssertEqual(last[2]??.stride, 4)
        XCTAssertNil(detector.record(thread: 1, region: 1, page: 8), "another region: no history there yet")
    }

    func testAWindowOfZeroTurnsPrefetchingOff() {
        var detector = TrendDetector(maxWindow: 0)
        XCTAssertTrue(feed(&detector, Array(0..<20)).allSatisfy { $0 == nil })
    }
}

/// A small deterministic generator (splitmix64), so a failure can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

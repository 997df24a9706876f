@testable import FarMemory
import XCTest

/// The probation area's bookkeeping (pure logic): FIFO expiry by the clock
/// hand, pending claims passed by, lookups that survive deletions.
final class ProbationIndexTests: XCTestCase {
    private func key(_ page: Int, region: Int = 0) -> UInt64 { EvictionQueue.pack(slot: region, page: page) }

    func testPagesExpireOldestFirstAndAreFoundUntilThen() {
        var index = ProbationIndex(capacity: 4)
        defer { index.deallocate() }
        for page in 0..<4 {
            let (slot, expired) = index.claim()!
            XCTAssertNil(expired, "the area is not full yet")
            index.fill(slot, key: key(page))
        }
        XCTAssertEqual(index.count, 4)
        for page in 0..<4 { XCTAssertNotNil(index.lookup(key(page))) }
        let (slot, expired) = index.claim()!
        XCTAssertEqual(expired, key(0), "the oldest leaves first")
        XCTAssertNil(index.lookup(key(0)))
        index.fill(slot, key: key(4))
        XCTAssertEqual(index.claim()!.expired, key(1))
        XCTAssertEqual(index.count, 3, "one claimed, not filled yet")
        XCTAssertEqual(index.populated, 4, "slots in use: never more than the area")
    }

    func testAHitFreesItsSlotAndTheHandReusesIt() {
        var index = ProbationIndex(capacity: 3)
        defer { index.deallocate() }
        XCTAssertEqual(index.populated, 0, "nothing in use before the first eviction")
        var slots: [Int32] = []
        for page in 0..<3 {
            let slot = index.claim()!.slot
            index.fill(slot, key: key(page))
            slots.append(slot)
        }
        XCTAssertEqual(index.remove(key(0)), slots[0])
        XCTAssertNil(index.remove(key(0)), "gone once taken")
        let (slot, expired) = index.claim()!
        XCTAssertEqual(slot, slots[0])
        XCTAssertNil(expired, "a freed slot expires nobody")
        index.fill(slot, key: key(9))
        XCTAssertEqual(index.claim()!.expired, key(1))
    }

    func testPendingClaimsArePassedByAndCanRunOut() {
        var index = ProbationIndex(capacity: 2)
        defer { index.deallocate() }
        let first = index.claim()!.slot
        let second = index.claim()!.slot
        XCTAssertNil(index.claim(), "every slot pending: no claim, the page just goes to the server")
        index.cancel(first)
        XCTAssertEqual(index.claim()?.slot, first)
        index.fill(second, key: key(5))
        XCTAssertEqual(index.lookup(key(5)), second)
        XCTAssertNil(index.lookup(key(6)))
    }

    func testRemoveAllTakesOneRegionsPagesOnly() {
        var index = ProbationIndex(capacity: 8)
        defer { index.deallocate() }
        for page in 0..<8 {
            let slot = index.claim()!.slot
            index.fill(slot, key: key(page, region: page % 2))
        }
        XCTAssertEqual(index.removeAll { EvictionQueue.unpack($0).slot == 1 }, 4)
        for page in 0..<8 { XCTAssertEqual(index.lookup(key(page, region: page % 2)) != nil, page % 2 == 0, "page \(page)") }
        XCTAssertEqual(index.count, 4)
    }

    /// Many keys, random removals and refills against a dictionary: the
    /// table's backward-shift deletion never loses a key still in it.
    func testRandomClaimsHitsAndRemovalsAgreeWithAModel() {
        var index = ProbationIndex(capacity: 200)
        defer { index.deallocate() }
        var model: [UInt64: Int32] = [:]
        var random = SystemRandomNumberGenerator()
        var nextPage = 0
        for step in 0..<50_000 {
            if Bool.random(using: &random), !model.isEmpty {
                let victim = model.keys.randomElement(using: &random)!
                XCTAssertEqual(index.remove(victim), model[victim])
                model[victim] = nil
            } else if let (slot, expired) = index.claim() {
                if let expired {
                    XCTAssertEqual(model[expired], slot, "step \(step): the slot held what expired")
                    model[expired] = nil
                }
                let page = key(nextPage % 1000, region: nextPage / 1000 % 3)
                nextPage += 1
                if model[page] != nil {   // still in: a page is in once, so the claim is dropped
                    index.cancel(slot)
                    continue
                }
                index.fill(slot, key: page)
                model[page] = slot
            }
            XCTAssertEqual(index.count, model.count)
            if step % 997 == 0 {
                for (page, slot) in model { XCTAssertEqual(index.lookup(page), slot) }
            }
        }
    }
}

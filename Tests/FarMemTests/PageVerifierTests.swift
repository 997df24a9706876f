@testable import FarMemory
import Logging
import XCTest

/// Page verification flags exactly the pages whose data is not what the
/// pager last had (pure logic: hashes of buffers, no pager running).
final class PageVerifierTests: XCTestCase {
    private let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    override func tearDown() { page.deallocate() }

    private func fill(_ byte: UInt8) -> UnsafeRawPointer {
        page.initializeMemory(as: UInt8.self, repeating: byte, count: 4096)
        return UnsafeRawPointer(page)
    }

    private func make(enabled: Bool = true) -> (PageVerifier, RegionRecord, PagerCounters) {
        let counters = PagerCounters()
        let region = RegionRecord(store: StoreRegion(id: 7), pageCount: 4, slot: 0, base: 0x4000_0000, chunk: 0..<4,
                                  verifiesPages: enabled)
        return (PageVerifier(enabled: enabled, counters: counters, logger: Logger(label: "test")), region, counters)
    }

    func testAFetchMustReturnTheDataLastWrittenBack() {
        let (verifier, region, counters) = make()
        verifier.wroteBack(region, page: 1, hash: PageVerifier.hash(ofStaged: fill(0xA1)))
        verifier.checkFetched(region, page: 1, data: fill(0xA1), how: "fetched")
        XCTAssertEqual(counters.get(.verificationFailures), 0)
        // An older version served after a newer write-back: caught.
        verifier.wroteBack(region, page: 1, hash: PageVerifier.hash(ofStaged: fill(0xA2)))
        verifier.checkFetched(region, page: 1, data: fill(0xA1), how: "fetched")
        XCTAssertEqual(counters.get(.verificationFailures), 1)
    }

    func testACleanDropMustMatchTheStoreOrZeros() {
        let (verifier, region, counters) = make()
        verifier.checkCleanDrop(region, page: 0, wasBacked: false, hash: PageVerifier.hash(ofStaged: fill(0)))
        verifier.wroteBack(region, page: 2, hash: PageVerifier.hash(ofStaged: fill(0x33)))
        verifier.checkCleanDrop(region, page: 2, wasBacked: true, hash: PageVerifier.hash(ofStaged: fill(0x33)))
        XCTAssertEqual(counters.get(.verificationFailures), 0)
        // Written without a write-protect fault: the dropped data differs.
        verifier.checkCleanDrop(region, page: 0, wasBacked: false, hash: PageVerifier.hash(ofStaged: fill(1)))
        verifier.checkCleanDrop(region, page: 2, wasBacked: true, hash: PageVerifier.hash(ofStaged: fill(0x34)))
        XCTAssertEqual(counters.get(.verificationFailures), 2)
    }

    func testOffChecksNothing() {
        let (verifier, region, counters) = make(enabled: false)
        XCTAssertNil(region.hashes)
        verifier.checkCleanDrop(region, page: 0, wasBacked: false, hash: PageVerifier.hash(ofStaged: fill(1)))
        verifier.checkFetched(region, page: 0, data: fill(9), how: "fetched")
        XCTAssertEqual(counters.get(.verificationFailures), 0)
    }
}

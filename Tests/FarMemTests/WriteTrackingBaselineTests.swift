import CFarMemSys
import XCTest

/// The kernel facts behind the bench's write-tracking line: under
/// UFFD_FEATURE_WP_ASYNC the kernel resolves writes to protected pages by
/// itself, and one PAGEMAP_SCAN finds exactly the written pages.
final class WriteTrackingBaselineTests: XCTestCase {
    func testAsyncWriteProtectMarksEveryWrittenPageAndTheScanFindsThem() {
        var cost = fm_write_tracking_t()
        let pages: UInt64 = 256
        XCTAssertEqual(fm_baseline_write_tracking(pages, &cost), 0)
        XCTAssertEqual(cost.scan_written_pages, pages, "PAGEMAP_SCAN found every written page")
        XCTAssertGreaterThan(cost.sync_fault_ns, 0)
        XCTAssertGreaterThan(cost.async_write_ns, 0)
    }
}

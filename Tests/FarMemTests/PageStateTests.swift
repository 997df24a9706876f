@testable import FarMemory
import XCTest

/// A page's life through its named transitions (pure logic).
final class PageStateTests: XCTestCase {
    func testAPageWrittenEvictedAndFetchedBack() {
        var page = PageState.zeros
        XCTAssertFalse(page.isResident || page.isBacked || page.isOnServerOnly)
        page = page.installed(dirty: true).enqueued()            // a first write: zero-filled, writable
        XCTAssertTrue(page.isResident && page.isDirty && page.isQueued)
        page = page.dequeued().movedOut()                         // a victim: its write-back is in flight
        XCTAssertTrue(page.isInFlight)
        XCTAssertFalse(page.isResident || page.isOnServerOnly)
        page = page.writtenBack()
        XCTAssertTrue(page.isOnServerOnly)
        page = page.installed(dirty: false)                       // a read fault fetches it, write-protected
        XCTAssertTrue(page.isResident && page.isBacked && !page.isDirty)
        page = page.written()                                     // the first write (write-protect fault)
        XCTAssertTrue(page.isDirty)
        page = page.movedOut()
        XCTAssertTrue(page.isInFlight && page.isBacked)
    }

    func testACleanPageLeavesWithoutAWriteBack() {
        let fetched = PageState.zeros.installed(dirty: true).movedOut().writtenBack().installed(dirty: false)
        let out = fetched.movedOut()
        XCTAssertFalse(out.isInFlight, "nothing to write back")
        XCTAssertTrue(out.isOnServerOnly)
        XCTAssertFalse(PageState.zeros.installed(dirty: false).movedOut().isBacked, "a clean zero page leaves nothing behind")
    }

    func testDiscardingKeepsOnlyTheQueueEntry() {
        let resident = PageState.zeros.installed(dirty: true).movedOut().writtenBack().installed(dirty: true).enqueued()
        let gone = resident.discarded()
        XCTAssertEqual(gone, PageState.zeros.enqueued(), "zeros, its queue entry kept")
        let inFlight = PageState.zeros.installed(dirty: true).movedOut().discardedWhileInFlight()
        XCTAssertTrue(inFlight.wasDiscardedInFlight && inFlight.isInFlight)
        XCTAssertEqual(inFlight.discarded(), .zeros)
    }

    func testAFailedInstallLeavesThePageAsItWas() {
        let onServer = PageState.zeros.installed(dirty: true).movedOut().writtenBack().enqueued()
        XCTAssertEqual(onServer.installed(dirty: false).notInstalled(), onServer)
    }

    func testRestoredPagesAreDirtyResidentAndQueued() {
        let restored = PageState.zeros.installed(dirty: true).movedOut().restored()
        XCTAssertTrue(restored.isResident && restored.isDirty && restored.isQueued)
        XCTAssertFalse(restored.isInFlight)
    }

    func testTwoRefusalsSetAPageAsideAndARetryJudgesItAfresh() {
        let page = PageState.zeros.installed(dirty: true).enqueued().dequeued()
        let once = page.refusedOnceAndRequeued()
        XCTAssertTrue(once.wasRefusedOnce && once.isQueued && !once.isUnevictable)
        let aside = once.dequeued().setAside()
        XCTAssertTrue(aside.isUnevictable && aside.isResident && aside.isDirty)
        XCTAssertFalse(aside.isQueued || aside.wasRefusedOnce)
        XCTAssertEqual(aside.retried(), page)
        XCTAssertTrue(aside.retried().movedOut().isInFlight, "a retried dirty page still needs its write-back")
    }
}

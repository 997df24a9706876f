import CFarMemSys
@testable import FarMemSystem
import XCTest

/// Decoding userfaultfd messages into Swift events (pure logic).
final class UserfaultfdEventTests: XCTestCase {
    private func message(_ event: Int32, flags: UInt64 = 0, address: UInt64 = 0, arg1: UInt64 = 0, arg2: UInt64 = 0,
                         thread: UInt32 = 0) -> fm_uffd_msg {
        var m = fm_uffd_msg()
        m.event = UInt8(event)
        m.flags = flags
        m.address = address
        m.arg1 = arg1
        m.arg2 = arg2
        m.thread_id = thread
        return m
    }

    func testPageFaultsCarryAccessKindAndThread() {
        let read = UserfaultfdEvent(message(FM_UFFD_EVENT_PAGEFAULT, address: 0x7000_1234, thread: 42))
        XCTAssertEqual(read, .pageFault(PageFault(address: 0x7000_1234, thread: 42)))
        guard case .pageFault(let fault) = read else { return XCTFail() }
        XCTAssertEqual(fault.page, 0x7000_1000)
        let write = UserfaultfdEvent(message(FM_UFFD_EVENT_PAGEFAULT, flags: UInt64(FM_UFFD_PAGEFAULT_FLAG_WRITE), address: 0x5000))
        XCTAssertEqual(write, .pageFault(PageFault(address: 0x5000, isWrite: true)))
        let protected = UserfaultfdEvent(message(FM_UFFD_EVENT_PAGEFAULT,
                                                 flags: UInt64(FM_UFFD_PAGEFAULT_FLAG_WRITE | FM_UFFD_PAGEFAULT_FLAG_WP), address: 0x5000))
        XCTAssertEqual(protected, .pageFault(PageFault(address: 0x5000, isWrite: true, isWriteProtect: true)))
    }

    func testNonCooperativeEventsCarryTheirRanges() {
        XCTAssertEqual(UserfaultfdEvent(message(FM_UFFD_EVENT_REMOVE, address: 0x1000, arg1: 0x3000)), .remove(start: 0x1000, end: 0x3000))
        XCTAssertEqual(UserfaultfdEvent(message(FM_UFFD_EVENT_UNMAP, address: 0x1000, arg1: 0x2000)), .unmap(start: 0x1000, end: 0x2000))
        XCTAssertEqual(UserfaultfdEvent(message(FM_UFFD_EVENT_REMAP, address: 0x1000, arg1: 0x9000, arg2: 0x4000)),
                       .remap(from: 0x1000, to: 0x9000, length: 0x4000))
        XCTAssertEqual(UserfaultfdEvent(message(FM_UFFD_EVENT_FORK, arg1: 17)), .fork(child: FileDescriptor(rawValue: 17)))
        XCTAssertEqual(UserfaultfdEvent(message(0x7f)), .unknown(0x7f))
    }
}

import FarMemSystem
@testable import FarMemory
import XCTest

/// The handler's held faults: order, one per page, growth (pure logic).
final class DeferredFaultsTests: XCTestCase {
    private func fault(_ address: UInt, thread: UInt32 = 0) -> PageFault {
        PageFault(address: address, thread: thread)
    }

    private func drain(_ faults: inout DeferredFaults) -> [UInt] {
        var addresses: [UInt] = []
        while let message = faults.popFirst() { addresses.append(message.address) }
        return addresses
    }

    func testFaultsComeBackOldestFirst() {
        var faults = DeferredFaults(capacity: 4)
        defer { faults.deallocate() }
        for page in [3, 1, 2] as [UInt] { XCTAssertTrue(faults.append(fault(page << 12))) }
        XCTAssertEqual(drain(&faults), [3 << 12, 1 << 12, 2 << 12])
        XCTAssertTrue(faults.isEmpty)
    }

    func testASecondFaultOnAHeldPageIsDropped() {
        var faults = DeferredFaults(capacity: 4)
        defer { faults.deallocate() }
        XCTAssertTrue(faults.append(fault(0x5000 + 0x10, thread: 1)))
        XCTAssertFalse(faults.append(fault(0x5000 + 0x800, thread: 2)), "same page, other offset and thread")
        XCTAssertTrue(faults.append(fault(0x6000, thread: 2)))
        XCTAssertEqual(faults.count, 2)
        // Once taken out, the page can be held again (a fault served meets EAGAIN and waits anew).
        XCTAssertEqual(faults.popFirst()?.address, 0x5010)
        XCTAssertTrue(faults.append(fault(0x5010, thread: 1)))
        XCTAssertEqual(drain(&faults), [0x6000, 0x5010])
    }

    func testItGrowsPastItsCapacityKeepingTheOrder() {
        var faults = DeferredFaults(capacity: 4)
        defer { faults.deallocate() }
        // Wrap the ring first, so growth has to unroll it.
        for page in 0..<3 as Range<UInt> { faults.append(fault(page << 12)) }
        _ = faults.popFirst()
        _ = faults.popFirst()
        for page in 3..<10 as Range<UInt> { XCTAssertTrue(faults.append(fault(page << 12))) }
        XCTAssertGreaterThanOrEqual(faults.capacity, 8)
        XCTAssertEqual(drain(&faults), (2..<10).map { UInt($0) << 12 })
    }
}

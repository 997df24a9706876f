import CFarMemTestSupport
import XCTest

/// What a memfd (shmem) far region relies on, asked of the running kernel
/// (shared_memory_probe.c): a page missing from the page cache is written
/// through a second mapping and mapped with UFFDIO_CONTINUE; write-protect
/// works on shmem; MADV_DONTNEED keeps the page cache (the next access is a
/// MINOR fault) while MADV_REMOVE and fallocate(PUNCH_HOLE) empty it (the next
/// access is MISSING), and only the madvise calls send REMOVE events.
final class SharedMemoryKernelTests: XCTestCase {
    func testMinorFaultsContinueWriteProtectAndRemovalBehaveAsTheSharedMemoryPagerAssumes() throws {
        var events = [fmt_shm_event_t](repeating: fmt_shm_event_t(), count: Int(FMT_SHM_MAX_EVENTS))
        var count: Int32 = 0
        var values = [UInt8](repeating: 0, count: 7)
        let result = fmt_shared_memory_probe(&events, &count, &values)
        XCTAssertEqual(result, 0, "the probe's set-up or a handler ioctl failed: errno \(-result)")
        let names = [Int32(FMT_SHM_MISSING): "missing", Int32(FMT_SHM_MINOR): "minor",
                     Int32(FMT_SHM_WRITE_PROTECT): "wp", Int32(FMT_SHM_REMOVE): "remove"]
        let seen = events.prefix(Int(count)).map { "\(names[$0.kind] ?? "?") \($0.page)" }
        XCTAssertEqual(seen, [
            "missing 0",            // a read of a page the page cache lacks
            "wp 0",                 // continued write-protected: its first write faults
            "wp 0",                 // protected again (as eviction does): the next write faults
            "missing 1",            // a write that misses is continued writable: no second fault
            "remove 1", "minor 1",  // MADV_DONTNEED: an event, and the page cache keeps the page
            "remove 0", "missing 0",  // MADV_REMOVE: an event, and the page cache loses it
            "missing 2", "missing 2",  // fallocate(PUNCH_HOLE): no event, and the page is gone
            "minor 3",              // put in the page cache through the alias first
        ])
        XCTAssertEqual(values, [0xA0, 0x11, 0x21, 0xA0, 0xA2, 0xA2, 0x33], "each read saw the page it should")
    }
}

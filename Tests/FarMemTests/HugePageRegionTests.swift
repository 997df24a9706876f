import CFarMemSys
import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import Synchronization
import XCTest

/// hugetlb regions (`RegionKind.hugetlb`) paged through a real farmemd: 2 MiB
/// huge pages fetched whole into the page cache and mapped with
/// UFFDIO_CONTINUE, evicted by write-back and PUNCH_HOLE; every byte verified.
/// The tests reserve the huge pages they need (`vm.nr_hugepages`, as root)
/// and give the pool back as they found it.
final class HugePageRegionTests: XCTestCase {
    private var server: ServerProcess!
    private var pool: HugePagePool!
    private let budget = 16 << 20           // 8 huge pages
    private let regionBytes = 64 << 20      // 4x the budget

    override func setUpWithError() throws {
        pool = try HugePagePool(free: 24)
        server = try ServerProcess(capacity: "256MiB")
    }

    override func tearDown() {
        server?.stop()
        pool?.restore()
    }

    private func makeMemory(handlerThreads: Int = 1, budget: Int? = nil) throws -> FarMemory {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget ?? self.budget, handlerThreads: handlerThreads)
        configuration.verifiesPages = true
        return try FarMemory(configuration: configuration)
    }

    func testAHugetlbRegionFourTimesTheBudgetIsPagedAndVerifiedWithFourThreads() throws {
        for handlerThreads in [1, 2] {
            let freeBefore = HugePagePool.freePages
            let memory = try makeMemory(handlerThreads: handlerThreads)
            defer { memory.close() }
            let region = try memory.allocate(bytes: regionBytes, kind: .hugetlb)
            XCTAssertEqual(region.kind, .hugetlb)
            XCTAssertEqual(Int(bitPattern: region.baseAddress!) % (2 << 20), 0, "huge-page aligned")
            let first = PagePattern(seed: 31)
            region.write(first, threads: 4)
            XCTAssertEqual(region.mismatches(first, threads: 4), [], "handler threads: \(handlerThreads)")
            // Written again over huge pages fetched clean (write-protected): no write may be lost.
            let second = PagePattern(seed: 32)
            region.write(second, threads: 4)
            XCTAssertEqual(region.mismatches(second, threads: 4), [], "handler threads: \(handlerThreads)")
            // Each huge page read (fetched clean, write-protected), then written:
            // the write-protect fault marks the whole huge page dirty.
            let third = PagePattern(seed: 35), base = region.baseAddress!
            for unit in 0..<regionBytes >> 21 {
                let pages = Array(unit * 512..<(unit + 1) * 512)
                XCTAssertEqual(region.mismatches(second, pages: pages), [])
                for page in pages { _ = third.write(page: page, at: base + page * 4096) }
            }
            XCTAssertEqual(region.mismatches(third, threads: 4), [], "handler threads: \(handlerThreads)")
            let stats = memory.statistics
            XCTAssertGreaterThan(stats.writeProtectFaults, 0, stats.description)
            // Each huge page goes out and comes back whole: at least the region's
            // huge pages were evicted.
            XCTAssertGreaterThan(stats.evictions, UInt64(regionBytes >> 21), stats.description)
            XCTAssertGreaterThan(stats.fetches, 0, stats.description)
            // Written whole: at least every huge page that cannot stay resident, once.
            XCTAssertGreaterThanOrEqual(stats.writeBacks, UInt64(512 * ((regionBytes - budget) >> 21)), stats.description)
            XCTAssertEqual(stats.poisoned, 0)
            XCTAssertEqual(stats.verificationFailures, 0)
            // The huge pages held stay near the budget: one over it per handler
            // thread, plus those being written back.
            let held = freeBefore - HugePagePool.freePages
            XCTAssertLessThanOrEqual(held, budget >> 21 + 3 * handlerThreads, "huge pages held by the region")
            print("hugetlb region, \(handlerThreads) handler thread(s): \(held) huge pages held; \(stats)")
            region.close()
            XCTAssertEqual(HugePagePool.freePages, freeBefore, "closing gives every huge page back")
        }
    }

    func testDontNeedKeepsAResidentHugePageAndRemoveReadsAsZeros() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes, kind: .hugetlb)
        let pattern = PagePattern(seed: 33)
        region.write(pattern)
        let units = regionBytes >> 21, base = region.baseAddress!
        func isZero(_ unit: Int) -> Bool {
            stride(from: 0, to: 2 << 20, by: 4096).allSatisfy { (base + unit << 21).load(fromByteOffset: $0, as: UInt64.self) == 0 }
        }
        func pages(of unit: Int) -> [Int] { Array(unit * 512..<(unit + 1) * 512) }
        // Written in order under a FIFO budget: the last huge pages are resident, the first evicted.
        let resident = units - 1, removed = units - 2, evicted = 0
        XCTAssertEqual(madvise(base + resident << 21, 2 << 20, MADV_DONTNEED), 0)
        XCTAssertEqual(madvise(base + removed << 21, 2 << 20, MADV_REMOVE), 0)
        XCTAssertEqual(madvise(base + evicted << 21, 2 << 20, MADV_DONTNEED), 0)
        XCTAssertEqual(region.mismatches(pattern, pages: pages(of: resident)), [], "MADV_DONTNEED on shared memory keeps the data")
        XCTAssertTrue(isZero(removed), "MADV_REMOVE discards it")
        XCTAssertTrue(isZero(evicted), "an evicted page cannot tell: discarded (README: memfd regions)")
        // Pushed out and fetched back: the removed huge page stays zeros, the kept one keeps its data.
        let churn = PagePattern(seed: 34)
        region.write(churn)
        XCTAssertEqual(region.mismatches(churn), [])
        // munmap of a huge page in the middle: its page cache and store copy go.
        let freeBefore = HugePagePool.freePages
        XCTAssertEqual(munmap(base + (units - 1) << 21, 2 << 20), 0)   // resident
        // (UNMAP comes once munmap has returned: the handler frees the page cache then.)
        XCTAssertTrue(waitUntil("the unmapped huge page to be freed", seconds: 5) { HugePagePool.freePages == freeBefore + 1 },
                      "free huge pages: \(HugePagePool.freePages), before: \(freeBefore)")
        XCTAssertEqual(region.mismatches(churn, pages: Array(0..<(units - 1) * 512)), [])
        XCTAssertEqual(memory.statistics.poisoned, 0)
        XCTAssertEqual(memory.statistics.verificationFailures, 0)
    }

    /// mremap of huge pages in the middle of a region to another 2 MiB-aligned
    /// place: the handler follows them, resident and evicted, and their data
    /// survives being pushed out and fetched back at the new address.
    func testMremapMovesHugePagesWithTheirData() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes, kind: .hugetlb)
        let pattern = PagePattern(seed: 36)
        region.write(pattern)
        let base = region.baseAddress!
        // A free, huge-page-aligned place: reserved, then replaced by the move.
        let movedBytes = 8 << 20
        let reservation = mmap(nil, movedBytes + (2 << 20), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)!
        let target = (UInt(bitPattern: reservation) + (2 << 20) - 1) & ~UInt((2 << 20) - 1)
        // Huge pages 4 and 5 (evicted: written first) and the last two (resident).
        let evictedFirst = 4 << 21, residentFirst = regionBytes - movedBytes / 2
        for (first, offset) in [(evictedFirst, 0), (residentFirst, movedBytes / 2)] {
            let moved = fm_mremap(UInt64(UInt(bitPattern: base + first)), UInt64(movedBytes / 2), UInt64(movedBytes / 2),
                                  3 /* MREMAP_MAYMOVE | MREMAP_FIXED */, UInt64(target) + UInt64(offset))
            guard moved == Int64(target) + Int64(offset) else {
                munmap(reservation, movedBytes + (2 << 20))
                return XCTFail("mremap of huge pages failed: \(moved < 0 ? "\(Errno(negated: Int32(moved)))" : "moved to \(moved)")")
            }
        }
        defer { munmap(UnsafeMutableRawPointer(bitPattern: target), movedBytes) }
        let movedPages = (evictedFirst >> 12..<(evictedFirst + movedBytes / 2) >> 12).map { $0 } + (residentFirst >> 12..<regionBytes >> 12).map { $0 }
        func check(_ what: String) {
            let wrong = movedPages.enumerated().filter { i, page in
                !pattern.verify(page: page, at: UnsafeRawPointer(bitPattern: target + UInt(i * 4096))!).ok
            }
            XCTAssertEqual(wrong.count, 0, "\(what): moved pages not as written: \(wrong.prefix(3).map(\.1))")
        }
        check("right after the move")
        // Everything else read: the moved pages are pushed out, then fetched at their new place.
        let others = (0..<regionBytes >> 12).filter { page in !movedPages.contains(page) }
        XCTAssertEqual(region.mismatches(pattern, pages: others), [])
        check("after eviction")
        XCTAssertEqual(memory.statistics.verificationFailures, 0)
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }

    /// Three threads at random over their own huge pages: writes, reads,
    /// read-then-modify (write-protect faults) and MADV_REMOVE of a whole huge
    /// page, against a model of every 4 KiB page, with eviction all along.
    func testRandomMixOnAHugetlbRegionAgreesWithTheModel() throws {
        let memory = try makeMemory(budget: 8 << 20)   // 4 huge pages
        defer { memory.close() }
        let region = try memory.allocate(bytes: 32 << 20, kind: .hugetlb)   // 16 huge pages
        let base = UInt(bitPattern: region.baseAddress!)
        let units = 16, threads = 3
        let operations = ProcessInfo.processInfo.environment["FARMEM_STRESS_OPERATIONS"].flatMap { Int($0) } ?? 2000
        let failures = Mutex<[String]>([])
        let workers = (0..<threads).map { t in
            PosixThread.spawn(name: "huge-stress-\(t)") {
                let owned = Array(stride(from: t, to: units, by: threads))
                // version[u][p]: page p of owned unit u; 0 = zeros.
                var version = [[UInt64]](repeating: [UInt64](repeating: 0, count: 512), count: owned.count)
                var random = SplitMix64(seed: 0xB16 + UInt64(t))
                func next() -> UInt64 { random.next() }
                func pointer(_ u: Int, _ p: Int) -> UnsafeMutablePointer<UInt64> {
                    UnsafeMutablePointer<UInt64>(bitPattern: base + UInt(owned[u] << 21 + p * 4096))!
                }
                func check(_ u: Int, _ p: Int, _ what: String) {
                    let words = pointer(u, p), v = version[u][p]
                    for w in [0, 1, 255, 511] where words[w] != (v == 0 ? 0 : v ^ UInt64(w)) {
                        failures.withLock { $0.append("thread \(t) unit \(owned[u]) page \(p) word \(w) after \(what): got \(words[w]), want version \(v)") }
                        return
                    }
                }
                func write(_ u: Int, _ p: Int, _ v: UInt64) {
                    let words = pointer(u, p)
                    for w in 0..<512 { words[w] = v ^ UInt64(w) }
                    version[u][p] = v
                }
                var u = 0
                for op in 0..<operations {
                    if next() % 10 >= 7 { u = Int(next() % UInt64(owned.count)) }   // mostly stay on one huge page
                    let p = Int(next() % 512)
                    switch next() % 20 {
                    case 0..<8: write(u, p, (UInt64(op) << 8) | UInt64(t) | 1 << 60)
                    case 8..<16: check(u, p, "read")
                    case 16..<19:   // read, then modify in place (a write-protect fault on a clean huge page)
                        check(u, p, "read before modify")
                        if version[u][p] != 0 { write(u, p, version[u][p] &+ 2) }
                    default:
                        _ = madvise(UnsafeMutableRawPointer(pointer(u, 0)), 2 << 20, MADV_REMOVE)
                        version[u] = [UInt64](repeating: 0, count: 512)
                        check(u, p, "MADV_REMOVE")
                    }
                }
                for u in owned.indices { for p in 0..<512 { check(u, p, "the final pass") } }
            }
        }
        workers.forEach { $0.join() }
        let found = failures.withLock { $0 }
        XCTAssertEqual(found.count, 0, found.prefix(5).joined(separator: "\n"))
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.evictions, UInt64(units), stats.description)
        XCTAssertGreaterThan(stats.writeProtectFaults, 0, stats.description)
        XCTAssertEqual(stats.poisoned, 0)
        XCTAssertEqual(stats.verificationFailures, 0, stats.description)
        print("hugetlb random mix: \(stats)")
    }

    func testAHugetlbRegionIsRefusedClearlyWithoutHugePagesOrWithATinyBudget() throws {
        let memory = try makeMemory(budget: 4 << 20)
        XCTAssertThrowsError(try memory.allocate(bytes: regionBytes, kind: .hugetlb)) { error in
            XCTAssertTrue("\(error)".contains("at least 8 MiB"), "\(error)")
        }
        memory.close()
        let big = try makeMemory(budget: 256 << 20)   // 128 huge pages: more than reserved
        defer { big.close() }
        XCTAssertThrowsError(try big.allocate(bytes: 512 << 20, kind: .hugetlb)) { error in
            guard case FarMemoryError.hugePagesUnavailable(let text) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(text.contains("vm.nr_hugepages"), text)
        }
        // A region no bigger than the pool is fine whatever the budget.
        let small = try big.allocate(bytes: 8 << 20, kind: .hugetlb)
        XCTAssertEqual(small.length, 8 << 20)
        small.close()
    }
}

/// The system's pool of 2 MiB huge pages: grown for a test, given back after.
struct HugePagePool {
    private static let path = "/proc/sys/vm/nr_hugepages"
    private let before: Int

    static var freePages: Int { SharedMemoryFile.freeHugePages ?? 0 }

    /// Makes at least `free` huge pages free, or skips the test (not root, or no memory).
    init(free: Int) throws {
        before = Int((try? String(contentsOfFile: Self.path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        let missing = free - Self.freePages
        guard missing > 0 else { return }
        try? "\(before + missing)\n".write(toFile: Self.path, atomically: false, encoding: .utf8)
        guard Self.freePages >= free else {
            restore()
            throw XCTSkip("needs \(free) free 2 MiB huge pages and could not reserve them (root: sysctl vm.nr_hugepages)")
        }
    }

    func restore() {
        try? "\(before)\n".write(toFile: Self.path, atomically: false, encoding: .utf8)
    }
}

import CFarMemSys
import Logging

/// Page verification, a debugging aid (`FarMemoryConfiguration.verifiesPages`):
/// it checks the pager's promise that no page is lost or served stale, page by
/// page, on the fault handler thread.
/// - A page written back: its hash (taken by the evictor from the staging slot)
///   is kept in the region's `hashes`.
/// - A page about to be installed from the store (fetched, prefetched or kept):
///   its data must hash to the kept hash. Otherwise the store served something
///   else (a late write-back applied over a newer one, a lost write, a wrong page).
/// - A page dropped as clean (the evictor hashed its staging slot): its data
///   must be what the store has (or zeros when it has nothing). Otherwise the
///   page was written without a write-protect fault: a write FarMem did not see.
struct PageVerifier {
    let enabled: Bool
    private let zeroHash: UInt64
    private let counters: PagerCounters
    private let logger: Logger

    init(enabled: Bool, counters: PagerCounters, logger: Logger) {
        self.enabled = enabled
        self.counters = counters
        self.logger = logger
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        zeroHash = fm_page_hash(zeros)
        zeros.deallocate()
    }

    /// The evictor's side: the hash of a staged page (0 when verification is off).
    static func hash(ofStaged page: UnsafeRawPointer) -> UInt64 { fm_page_hash(page) }

    /// A write-back of `page` landed with data hashing to `hash`.
    func wroteBack(_ region: RegionRecord, page: Int, hash: UInt64) {
        guard enabled, let hashes = region.hashes else { return }
        hashes[page] = hash
    }

    /// `data` is about to be installed as `page`, read from the store.
    func checkFetched(_ region: RegionRecord, page: Int, data: UnsafeRawPointer, how: StaticString, source: @autoclosure () -> String = "") {
        guard enabled, let hashes = region.hashes else { return }
        let actual = fm_page_hash(data)
        guard actual != hashes[page] else { return }
        let from = source()
        fail("page \(page) of region \(region.store.id) (\(how)) is not the data last written back: hash \(hex(actual)), "
             + "expected \(hex(hashes[page]))\(actual == zeroHash ? " (it reads as zeros)" : "")\(from.isEmpty ? "" : "; read \(from)")")
    }

    /// A clean page was dropped; the evictor hashed its data.
    func checkCleanDrop(_ region: RegionRecord, page: Int, wasBacked: Bool, hash: UInt64) {
        guard enabled, let hashes = region.hashes else { return }
        let expected = wasBacked ? hashes[page] : zeroHash
        guard hash != expected else { return }
        fail("page \(page) of region \(region.store.id) was dropped as clean but changed since it was installed "
             + "(a write without a write-protect fault): hash \(hex(hash)), expected \(hex(expected))\(wasBacked ? "" : " (zeros)")")
    }

    private func fail(_ message: String) {
        counters.add(.verificationFailures)
        logger.critical("page verification: \(message)")
    }

    private func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}

import CFarMemRDMA
import FarMemProtocol
import FarMemSystem

/// One region's pages on the server: a contiguous NORESERVE mapping, so the
/// kernel commits memory only for pages written, a never-written page reads as
/// zeros, and an RDMA transport can register the region as one memory region.
/// Not thread-safe: its session's lock guards it.
final class RegionStore {
    let pageCount: Int
    /// Capacity promised to this region (CREATE_REGION, RESERVE): at most
    /// `pageCount`, never below `writtenCount`. A write that would hold more
    /// pages than this is refused.
    var reservedPages: Int
    let base: UInt
    /// Pages that were written and not discarded (for statistics).
    private var written: [UInt64]
    private(set) var writtenCount = 0
    /// The RDMA memory registration (ibv_mr) while exposed; deregistered before the memory is freed.
    var registration: UnsafeMutableRawPointer?
    /// True while an RDMA client may access the memory directly: it is pinned,
    /// so discards zero it instead of giving it back to the kernel.
    var pinned: Bool { registration != nil }
    private static let pageSize = ProtocolLimits.pageSize

    init(pageCount: Int, reservedPages: Int) throws(Errno) {
        self.pageCount = pageCount
        self.reservedPages = reservedPages
        base = try MemoryMapping.anonymous(length: pageCount * Self.pageSize, noReserve: true)
        written = Array(repeating: 0, count: (pageCount + 63) / 64)
    }

    deinit {
        if let registration { _ = fm_rdma_deregister(registration) }
        MemoryMapping.unmap(base, length: pageCount * Self.pageSize)
    }

    var length: Int { pageCount * Self.pageSize }

    @inline(__always) func pointer(_ page: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: base + UInt(page * Self.pageSize))!
    }

    func isWritten(_ page: Int) -> Bool { written[page >> 6] & (UInt64(1) << UInt64(page & 63)) != 0 }

    /// Records that `page` holds data; returns true the first time.
    @discardableResult
    func markWritten(_ page: Int) -> Bool {
        let bit = UInt64(1) << UInt64(page & 63)
        guard written[page >> 6] & bit == 0 else { return false }
        written[page >> 6] |= bit
        writtenCount += 1
        return true
    }

    /// Forgets pages [first, first+count): they read as zeros. Returns how many held data.
    func discard(first: Int, count: Int) -> Int {
        var dropped = 0
        for page in first..<first + count {
            let bit = UInt64(1) << UInt64(page & 63)
            if written[page >> 6] & bit != 0 {
                written[page >> 6] &= ~bit
                dropped += 1
            }
        }
        writtenCount -= dropped
        if pinned {
            pointer(first).initializeMemory(as: UInt8.self, repeating: 0, count: count * Self.pageSize)
        } else {
            try? MemoryMapping.advise(base + UInt(first * Self.pageSize), length: count * Self.pageSize, .dontNeed)
        }
        return dropped
    }
}

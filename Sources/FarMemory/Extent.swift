/// A run of a region's pages at some address. A region starts as one extent;
/// mremap and partial munmap move or cut extents.
struct Extent {
    var start: UInt
    var pageCount: Int
    var firstPage: Int
    var end: UInt { start + UInt(pageCount * 4096) }
}

/// Where a region's pages are mapped in one address space (the process's
/// own, or a forked child's): its extents, and the address-space changes
/// that move or cut them.
extension [Extent] {
    /// The page at `address`, if one of the extents covers it.
    @inline(__always)
    func page(at address: UInt) -> Int? {
        for extent in self where address >= extent.start && address < extent.end {
            return extent.firstPage + Int((address - extent.start) >> 12)
        }
        return nil
    }

    /// Where `page` is mapped, if it is.
    @inline(__always)
    func address(of page: Int) -> UInt? {
        for extent in self where page >= extent.firstPage && page < extent.firstPage + extent.pageCount {
            return extent.start + UInt((page - extent.firstPage) << 12)
        }
        return nil
    }

    /// Pages inside [start, end), as runs of page numbers.
    func pageRuns(in start: UInt, _ end: UInt) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        for extent in self {
            let lo = Swift.max(start, extent.start), hi = Swift.min(end, extent.end)
            guard lo < hi else { continue }
            let first = extent.firstPage + Int((lo - extent.start) >> 12)
            runs.append(first..<first + Int((hi - lo + 4095) >> 12))
        }
        return runs
    }

    /// Removes [start, end) (munmap).
    mutating func cut(_ start: UInt, _ end: UInt) {
        var result: [Extent] = []
        for extent in self {
            guard start < extent.end && end > extent.start else { result.append(extent); continue }
            if start > extent.start {
                result.append(Extent(start: extent.start, pageCount: Int((start - extent.start) >> 12), firstPage: extent.firstPage))
            }
            if end < extent.end {
                let skipped = Int((end - extent.start) >> 12)
                result.append(Extent(start: end, pageCount: extent.pageCount - skipped, firstPage: extent.firstPage + skipped))
            }
        }
        self = result
    }

    /// Moves the part in [from, from+length) to start at `to` (mremap).
    mutating func move(from: UInt, to: UInt, length: UInt) {
        let end = from + length
        var result: [Extent] = []
        for extent in self {
            guard from < extent.end && end > extent.start else { result.append(extent); continue }
            let lo = Swift.max(from, extent.start), hi = Swift.min(end, extent.end)
            if lo > extent.start {
                result.append(Extent(start: extent.start, pageCount: Int((lo - extent.start) >> 12), firstPage: extent.firstPage))
            }
            let firstMoved = extent.firstPage + Int((lo - extent.start) >> 12)
            result.append(Extent(start: to + (lo - from), pageCount: Int((hi - lo) >> 12), firstPage: firstMoved))
            if hi < extent.end {
                let skipped = Int((hi - extent.start) >> 12)
                result.append(Extent(start: hi, pageCount: extent.pageCount - skipped, firstPage: extent.firstPage + skipped))
            }
        }
        self = result
    }
}

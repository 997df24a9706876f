import FarMemSystem

/// What backs a far region's pages locally.
public enum RegionKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Private anonymous memory: pages are installed with UFFDIO_COPY and
    /// evicted with UFFDIO_MOVE.
    case anonymous
    /// A memfd (shared memory): fetched pages are received straight into its
    /// page cache through a second mapping and mapped with UFFDIO_CONTINUE;
    /// evicted pages are written back from there and punched out of the file.
    case memfd

    public var description: String { rawValue }
}

/// A memfd region's file and its second mapping, which only the pager uses
/// (it is not registered with userfaultfd, so touching it never faults to
/// the pager): fetched pages are received there, written-back pages read there.
struct SharedBacking: Sendable {
    let file: SharedMemoryFile
    /// Where page 0 is in the second mapping; pages keep their place there
    /// whatever the application does with the registered mapping.
    let alias: UInt

    @inline(__always) func alias(of page: Int) -> UInt { alias + UInt(page) << 12 }

    /// Frees pages' memory (the page cache); the registered mapping faults as missing there next.
    func punch(first: Int, count: Int) throws(Errno) {
        try file.punchHole(offset: first << 12, length: count << 12)
    }

    /// Whether the page cache holds the page now.
    func isInPageCache(_ page: Int) -> Bool { (try? SharedMemoryFile.isInMemory(alias(of: page))) ?? true }

    /// Fills a page of the page cache with zeros through the second mapping.
    func zero(_ page: Int) {
        UnsafeMutableRawPointer(bitPattern: alias(of: page))!.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
    }

    func release() {
        MemoryMapping.unmap(alias, length: file.length)
        file.close()
    }
}

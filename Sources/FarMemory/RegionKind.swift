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
    /// A memfd on hugetlbfs: as `memfd`, but in 2 MiB pages from the
    /// system's pool (`vm.nr_hugepages`): one fault fetches and maps a whole
    /// huge page, and eviction writes back and frees whole huge pages.
    case hugetlb

    public var description: String { rawValue }

    /// Bytes the kernel maps and frees at once in such a region.
    public var pageBytes: Int { self == .hugetlb ? 2 << 20 : 4096 }
}

/// A memfd region's file and its second mapping, which only the pager uses
/// (it is not registered with userfaultfd, so touching it never faults to
/// the pager): fetched pages are received there, written-back pages read there.
///
/// Page numbers are 4 KiB everywhere (page state, the store, the
/// protocol), but the kernel maps and frees a hugetlb region's pages a
/// *unit* (2 MiB, 512 pages) at a time: the handler keeps a unit's pages in
/// one state, queues only its first page, and never punches part of a unit
/// (hugetlbfs zeroes a partial punch in place).
struct SharedBacking: Sendable {
    let file: SharedMemoryFile
    /// Where page 0 is in the second mapping; pages keep their place there
    /// whatever the application does with the registered mapping.
    let alias: UInt
    /// 4 KiB pages per unit: 1 for a memfd region, 512 for a hugetlb one.
    let pagesPerUnit: Int

    init(file: SharedMemoryFile, alias: UInt) {
        self.file = file
        self.alias = alias
        pagesPerUnit = file.hugePages ? 512 : 1
    }

    @inline(__always) func alias(of page: Int) -> UInt { alias + UInt(page) << 12 }

    /// The first page of the unit holding `page`.
    @inline(__always) func unitStart(of page: Int) -> Int { page & ~(pagesPerUnit - 1) }

    /// Frees pages' memory (the page cache); the registered mapping faults as
    /// missing there next. Whole units only.
    func punch(first: Int, count: Int) throws(Errno) {
        assert(first % pagesPerUnit == 0 && count % pagesPerUnit == 0, "a partial punch zeroes part of a huge page")
        try file.punchHole(offset: first << 12, length: count << 12)
    }

    /// Gives the unit at `first` memory before the pager writes it: a huge page
    /// from the pool (`ENOSPC` if none is free, where touching it would raise
    /// SIGBUS in the pager). Nothing to do for 4 KiB pages.
    func prepareUnit(_ first: Int) throws(Errno) {
        guard pagesPerUnit > 1 else { return }
        try file.allocate(offset: first << 12, length: pagesPerUnit << 12)
    }

    /// Whether the page cache holds the page now.
    func isInPageCache(_ page: Int) -> Bool { (try? SharedMemoryFile.isInMemory(alias(of: page))) ?? true }

    /// Fills the unit at `first` of the page cache with zeros through the second
    /// mapping (after `prepareUnit`).
    func zero(_ first: Int) {
        UnsafeMutableRawPointer(bitPattern: alias(of: first))!.initializeMemory(as: UInt8.self, repeating: 0, count: pagesPerUnit << 12)
    }

    func release() {
        MemoryMapping.unmap(alias, length: file.length)
        file.close()
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys

/// A memfd: anonymous shared memory with a file descriptor, so it can be
/// mapped twice (a memfd far region: one mapping registered with
/// userfaultfd for the application, one the pager fills pages through) and
/// its pages freed by offset.
public struct SharedMemoryFile: Sendable {
    public let descriptor: FileDescriptor
    public let length: Int

    /// Whether its pages are 2 MiB huge pages (hugetlbfs) rather than 4 KiB.
    public let hugePages: Bool

    /// A new memfd of `length` bytes, all holes (reading as zeros); with
    /// `hugePages`, on hugetlbfs (2 MiB pages from the `vm.nr_hugepages` pool;
    /// `length` a multiple of 2 MiB).
    public static func create(name: String, length: Int, hugePages: Bool = false) throws(Errno) -> SharedMemoryFile {
        let fd = try checkedShim { fm_memfd_create(name, UInt64(length), hugePages ? 1 : 0) }
        return SharedMemoryFile(descriptor: FileDescriptor(rawValue: fd), length: length, hugePages: hugePages)
    }

    /// Maps all of it, shared and read-write, where the kernel chooses (a
    /// huge-page file 2 MiB-aligned). A huge-page file is mapped without a
    /// reservation: a far region is bigger than the pages it may hold at once,
    /// which `allocate` takes from the pool one by one.
    public func map() throws(Errno) -> UInt {
        while true {
            let result = fm_map_shared(descriptor.rawValue, UInt64(length), hugePages ? 1 : 0)
            if result >= 0 { return UInt(result) }
            if result != -Int64(EINTR) { throw Errno(rawValue: Int32(-result)) }
        }
    }

    /// Frees the pages of [offset, offset + length) (fallocate PUNCH_HOLE):
    /// every mapping reads zeros there afterwards, or faults as missing where
    /// userfaultfd watches. Sends no userfaultfd event.
    public func punchHole(offset: Int, length: Int) throws(Errno) {
        _ = try checkedShim { fm_punch_hole(descriptor.rawValue, UInt64(offset), UInt64(length)) }
    }

    /// Gives [offset, offset + length) memory now (fallocate): for a huge-page
    /// file, `ENOSPC` when the pool has no free huge page, where touching the
    /// page would raise SIGBUS instead.
    public func allocate(offset: Int, length: Int) throws(Errno) {
        _ = try checkedShim { fm_allocate_range(descriptor.rawValue, UInt64(offset), UInt64(length)) }
    }

    /// Free 2 MiB huge pages in the system's pool (`vm.nr_hugepages`), nil if unknown.
    public static var freeHugePages: Int? {
        readTextFile("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .flatMap { text in text.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } }
    }

    /// Whether the page at `address` of a mapping of it is in memory
    /// (mincore: for a shared mapping, whether the page cache holds it).
    public static func isInMemory(_ address: UInt) throws(Errno) -> Bool {
        try checkedShim { fm_page_in_memory(UInt64(address)) } == 1
    }

    /// Whether the kernel gives shared memory huge pages whatever a mapping
    /// asks (shmem_enabled "force"): 4 KiB punches and page-cache checks
    /// would then not mean what they say.
    public static var hugePagesForced: Bool {
        (readTextFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled") ?? "").contains("[force]")
    }

    public func close() { descriptor.close() }
}

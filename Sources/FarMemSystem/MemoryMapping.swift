#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys

/// Anonymous private memory obtained with mmap; the unit FarMem registers with
/// userfaultfd (regions, the staging area) or fills itself (server pool).
public enum MemoryMapping {
    public static let pageSize = 4096

    /// Maps `length` bytes of anonymous, private, read-write memory.
    public static func anonymous(length: Int, noReserve: Bool = false) throws(Errno) -> UInt {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | (noReserve ? MAP_NORESERVE : 0)
        guard let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, flags, -1, 0),
              pointer != MAP_FAILED else { throw Errno.current }
        return UInt(bitPattern: pointer)
    }

    public static func unmap(_ address: UInt, length: Int) {
        _ = munmap(UnsafeMutableRawPointer(bitPattern: address), length)
    }

    /// munlock(2): the range may be paged again (undoes an mlock or mlockall there).
    public static func unlock(_ address: UInt, length: Int) throws(Errno) {
        guard munlock(UnsafeRawPointer(bitPattern: address), length) == 0 else { throw Errno.current }
    }

    public enum Advice: Int32 {
        case dontNeed = 4      // MADV_DONTNEED
        case remove = 9        // MADV_REMOVE
        case dontFork = 10     // MADV_DONTFORK
        case noHugePage = 15   // MADV_NOHUGEPAGE
    }

    public static func advise(_ address: UInt, length: Int, _ advice: Advice) throws(Errno) {
        _ = try checkedShim { fm_madvise(UInt64(address), UInt64(length), advice.rawValue) }
    }
}

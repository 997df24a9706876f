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

    /// Maps `length` bytes of anonymous memory exactly at `address`, or
    /// throws `.exists` if anything is mapped there (MAP_FIXED_NOREPLACE:
    /// never replaces a mapping).
    public static func anonymous(at address: UInt, length: Int, noReserve: Bool = false) throws(Errno) -> UInt {
        while true {
            let result = fm_map_anonymous_at(UInt64(address), UInt64(length), noReserve ? 1 : 0)
            if result >= 0 { return UInt(result) }
            if result != -Int64(EINTR) { throw Errno(rawValue: Int32(-result)) }
        }
    }

    /// Moves the pages of [from, from + length) to `to`, replacing what was
    /// mapped there (mremap with MREMAP_MAYMOVE | MREMAP_FIXED): page tables
    /// move, no byte is copied. On a range registered with userfaultfd the
    /// monitor gets a REMAP event and the caller waits until it is read.
    public static func move(_ from: UInt, length: Int, to: UInt) throws(Errno) {
        _ = try checkedShim { fm_mremap_fixed(UInt64(from), UInt64(length), UInt64(to)) }
    }

    /// Anonymous memory only FarMem itself uses (staging, the probation
    /// area): 4 KiB pages (no huge page to split under a single-page move)
    /// and not inherited by a forked child. Unmapped again if either advice fails.
    public static func pagerArea(length: Int) throws(Errno) -> UInt {
        let base = try anonymous(length: length)
        do {
            try advise(base, length: length, .noHugePage)
            try advise(base, length: length, .dontFork)
        } catch {
            unmap(base, length: length)
            throw error
        }
        return base
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

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

    /// A new memfd of `length` bytes, all holes (reading as zeros).
    public static func create(name: String, length: Int) throws(Errno) -> SharedMemoryFile {
        let fd = try checkedShim { fm_memfd_create(name, UInt64(length)) }
        return SharedMemoryFile(descriptor: FileDescriptor(rawValue: fd), length: length)
    }

    /// Maps all of it, shared and read-write, where the kernel chooses.
    public func map() throws(Errno) -> UInt {
        while true {
            let result = fm_map_shared(descriptor.rawValue, UInt64(length))
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

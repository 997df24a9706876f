import CFarMemSys

/// A userfaultfd descriptor with the ioctls FarMem uses. All calls are thin:
/// one syscall each, no allocation, safe on the fault path.
public struct Userfaultfd: Sendable {
    public let descriptor: FileDescriptor

    public struct Features: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let pagefaultFlagWP = Features(rawValue: FM_UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        public static let eventFork = Features(rawValue: FM_UFFD_FEATURE_EVENT_FORK)
        public static let eventRemap = Features(rawValue: FM_UFFD_FEATURE_EVENT_REMAP)
        public static let eventRemove = Features(rawValue: FM_UFFD_FEATURE_EVENT_REMOVE)
        public static let eventUnmap = Features(rawValue: FM_UFFD_FEATURE_EVENT_UNMAP)
        public static let missingShmem = Features(rawValue: FM_UFFD_FEATURE_MISSING_SHMEM)
        public static let sigbus = Features(rawValue: FM_UFFD_FEATURE_SIGBUS)
        public static let threadID = Features(rawValue: FM_UFFD_FEATURE_THREAD_ID)
        public static let minorShmem = Features(rawValue: FM_UFFD_FEATURE_MINOR_SHMEM)
        public static let minorHugetlbfs = Features(rawValue: FM_UFFD_FEATURE_MINOR_HUGETLBFS)
        public static let wpUnpopulated = Features(rawValue: FM_UFFD_FEATURE_WP_UNPOPULATED)
        /// Write-protect on shmem and hugetlbfs mappings (Linux 5.19).
        public static let wpSharedMemory = Features(rawValue: FM_UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
        public static let poison = Features(rawValue: FM_UFFD_FEATURE_POISON)
        public static let wpAsync = Features(rawValue: FM_UFFD_FEATURE_WP_ASYNC)
        public static let move = Features(rawValue: FM_UFFD_FEATURE_MOVE)
    }

    public struct RegisterMode: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let missing = RegisterMode(rawValue: FM_UFFD_REGISTER_MODE_MISSING)
        public static let writeProtect = RegisterMode(rawValue: FM_UFFD_REGISTER_MODE_WP)
        public static let minor = RegisterMode(rawValue: FM_UFFD_REGISTER_MODE_MINOR)
    }

    /// Why opening a userfaultfd failed, worded for the person running the program.
    public static func explain(_ error: Errno) -> String {
        switch error {
        case .permissionDenied, .accessDenied:
            return "userfaultfd is not permitted for this process (\(error)). FarMem needs Linux >= 6.1 "
                + "with userfaultfd, and one of: root or CAP_SYS_PTRACE, read-write access to "
                + "/dev/userfaultfd, or sysctl vm.unprivileged_userfaultfd=1. Container runtimes' "
                + "default seccomp profiles (Docker's) block the userfaultfd syscall."
        case .notImplemented:
            return "this kernel has no userfaultfd (\(error)): FarMem needs Linux >= 6.1 built with "
                + "CONFIG_USERFAULTFD."
        default:
            return "userfaultfd could not be opened: \(error)"
        }
    }

    /// A userfaultfd the kernel handed over: a forked child's (UFFD_EVENT_FORK),
    /// already enabled with this one's features and flags.
    public init(adopting descriptor: FileDescriptor) { self.descriptor = descriptor }

    /// Opens a descriptor (O_CLOEXEC | O_NONBLOCK), through the syscall, or
    /// through /dev/userfaultfd when the syscall is not permitted.
    public static func open() throws(Errno) -> Userfaultfd {
        let fd = fm_uffd_open(0)
        if fd >= 0 { return Userfaultfd(descriptor: FileDescriptor(rawValue: fd)) }
        let viaDevice = fm_uffd_open_dev()
        if viaDevice >= 0 { return Userfaultfd(descriptor: FileDescriptor(rawValue: viaDevice)) }
        throw Errno(negated: fd)
    }

    /// What the kernel supports. UFFDIO_API may be called once per descriptor,
    /// so this probes on a throw-away one.
    public static func supportedFeatures() throws(Errno) -> Features {
        let probe = try open()
        defer { probe.close() }
        var features: UInt64 = 0
        _ = try checkedShim { fm_uffd_api(probe.descriptor.rawValue, &features, nil) }
        return Features(rawValue: features)
    }

    public init(descriptor: FileDescriptor) { self.descriptor = descriptor }

    /// UFFDIO_API handshake; returns the features granted.
    @discardableResult
    public func enable(_ features: Features) throws(Errno) -> Features {
        var raw = features.rawValue
        _ = try checkedShim { fm_uffd_api(descriptor.rawValue, &raw, nil) }
        return Features(rawValue: raw)
    }

    public func register(_ start: UInt, length: Int, mode: RegisterMode) throws(Errno) {
        _ = try checkedShim { fm_uffd_register(descriptor.rawValue, UInt64(start), UInt64(length), mode.rawValue, nil) }
    }

    public func unregister(_ start: UInt, length: Int) throws(Errno) {
        _ = try checkedShim { fm_uffd_unregister(descriptor.rawValue, UInt64(start), UInt64(length)) }
    }

    /// UFFDIO_COPY from an unregistered buffer. Returns the bytes copied; a
    /// partial copy throws nothing and returns less than `length`.
    public func copy(to destination: UInt, from source: UnsafeRawPointer, length: Int,
                     writeProtect: Bool, wake: Bool = true) throws(Errno) -> Int {
        var copied: Int64 = 0
        let result = fm_uffd_copy(descriptor.rawValue, UInt64(destination), source, UInt64(length),
                                  writeProtect ? 1 : 0, wake ? 0 : 1, &copied)
        if result >= 0 { return Int(result) }
        if copied > 0 { return Int(copied) }
        throw Errno(negated: result)
    }

    /// UFFDIO_CONTINUE: maps pages the page cache of a shared mapping already
    /// holds (write-protected if asked). Returns the bytes mapped; throws
    /// `.badAddress` when the page cache lacks a page.
    public func continueMapping(_ start: UInt, length: Int, writeProtect: Bool, wake: Bool = true) throws(Errno) -> Int {
        var mapped: Int64 = 0
        let result = fm_uffd_continue(descriptor.rawValue, UInt64(start), UInt64(length), writeProtect ? 1 : 0, wake ? 0 : 1, &mapped)
        if result >= 0 { return Int(result) }
        if mapped > 0 { return Int(mapped) }
        throw Errno(negated: result)
    }

    public func writeProtect(_ start: UInt, length: Int, protect: Bool, wake: Bool = true) throws(Errno) {
        _ = try checkedShim { fm_uffd_writeprotect(descriptor.rawValue, UInt64(start), UInt64(length), protect ? 1 : 0, wake ? 0 : 1) }
    }

    public func wake(_ start: UInt, length: Int) throws(Errno) {
        _ = try checkedShim { fm_uffd_wake(descriptor.rawValue, UInt64(start), UInt64(length)) }
    }

    /// Marks the range so that an access raises SIGBUS (6.6+).
    public func poison(_ start: UInt, length: Int) throws(Errno) {
        _ = try checkedShim { fm_uffd_poison(descriptor.rawValue, UInt64(start), UInt64(length), 0) }
    }

    /// UFFDIO_MOVE; returns bytes moved (a partial move returns less than `length`).
    public func move(to destination: UInt, from source: UInt, length: Int,
                     allowSourceHoles: Bool = false, wake: Bool = false) throws(Errno) -> Int {
        var moved: Int64 = 0
        let result = fm_uffd_move(descriptor.rawValue, UInt64(destination), UInt64(source), UInt64(length),
                                  allowSourceHoles ? 1 : 0, wake ? 0 : 1, &moved)
        if result >= 0 { return Int(result) }
        if moved > 0 { return Int(moved) }
        throw Errno(negated: result)
    }

    /// Reads pending messages into `messages` (up to its capacity) and returns
    /// how many there are; 0 when none are pending. Pending faults come
    /// before pending events.
    public func read(into messages: UserfaultfdMessages) throws(Errno) -> Int {
        try read(into: messages, at: 0)
    }

    /// The same, into `messages` from slot `offset` on (at most 64 a call).
    /// Allocates nothing: safe while another thread of the process forks.
    public func read(into messages: UserfaultfdMessages, at offset: Int) throws(Errno) -> Int {
        let room = min(messages.capacity - offset, UserfaultfdMessages.capacity)
        guard room > 0 else { return 0 }
        return Int(try checkedShim { fm_uffd_read(descriptor.rawValue, messages.raw + offset, Int32(room)) })
    }

    public func close() { descriptor.close() }
}

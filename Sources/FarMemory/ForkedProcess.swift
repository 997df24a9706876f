import FarMemSystem

/// A child process that forked while memfd or hugetlb regions were mapped
/// (UFFD_EVENT_FORK): the kernel gave it a userfaultfd of its own, registered
/// like ours, and handed it to the fault handler. The child maps the same
/// files, so it shares the regions' page cache, page states and server
/// copies with this process: its faults are served from them through its
/// userfaultfd, and eviction write-protects and wakes there too. Only the
/// address-space layout is its own (it may munmap or mremap without us).
///
/// Owned by one fault handler; anonymous regions are never inherited
/// (MADV_DONTFORK), so a child's userfaultfd only ever covers shared ones.
final class ForkedProcess {
    /// Tags the child's faults (`PageFault.origin`); never 0 (this process).
    let origin: UInt32
    let uffd: Userfaultfd
    /// Where each region (by handler slot) is mapped in the child.
    var extents: [Int: [Extent]]
    /// The child exited or exec'd: its userfaultfd answers ESRCH. Dropped at
    /// the next check.
    var gone = false

    init(origin: UInt32, uffd: Userfaultfd, extents: [Int: [Extent]]) {
        self.origin = origin
        self.uffd = uffd
        self.extents = extents
    }

    /// The region (slot) and page at `address` in the child, if it maps one.
    @inline(__always)
    func locate(_ address: UInt) -> (slot: Int, page: Int)? {
        for (slot, extents) in extents {
            if let page = extents.page(at: address) { return (slot, page) }
        }
        return nil
    }

    /// Whether the child's address space still exists. A userfaultfd keeps
    /// no process alive; once its memory is gone (exit, exec) every ioctl
    /// answers ESRCH. Asked with a probe that changes nothing: a
    /// UFFDIO_CONTINUE at an address the child does not map (the staging
    /// area, never inherited) fails with ENOENT while it lives.
    func isAlive(probeAddress: UInt) -> Bool {
        do {
            // Write-protected, should the child map a page there after all: never writable unseen.
            _ = try uffd.continueMapping(probeAddress, length: 4096, writeProtect: true, wake: false)
        } catch {
            if error == .noSuchProcess { gone = true }
        }
        return !gone
    }

    func close() { uffd.close() }
}

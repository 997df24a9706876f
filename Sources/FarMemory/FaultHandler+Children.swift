import CFarMemSys
import FarMemSystem

/// Forked children (`ForkedProcess`): memfd and hugetlb regions stay mapped
/// across fork when the kernel lets us follow it (UFFD_FEATURE_EVENT_FORK,
/// CAP_SYS_PTRACE). The FORK event hands over the child's userfaultfd, already
/// registered like ours; its faults are served from the shared page cache and
/// page states, its writes are ours. Kernel facts (SharedMemoryKernelTests):
/// the child inherits the parent's page-table entries of these mappings,
/// write-protect bits included; a page only in the page cache faults there
/// as minor; once the child has exited or exec'd, its userfaultfd answers ESRCH.
extension FaultHandler {
    /// Whether the fault being handled is a child's.
    var servingChild: Bool { target.descriptor.rawValue != uffd.descriptor.rawValue }

    /// A FORK event (ours, or a child's forking in turn): the new child maps
    /// the shared regions where its parent did when it forked.
    func adoptChild(_ descriptor: FileDescriptor, forkedFrom parent: ForkedProcess?) {
        var extents: [Int: [Extent]] = [:]
        if let parent {
            extents = parent.extents
        } else {
            for region in liveRegions where region.shared != nil { extents[region.slot] = region.extents }
        }
        let child = ForkedProcess(origin: nextOrigin, uffd: Userfaultfd(adopting: descriptor), extents: extents)
        nextOrigin = nextOrigin == .max ? 1 : nextOrigin + 1
        do {
            if childEvents == nil { childEvents = try Epoll() }
            try childEvents!.add(descriptor, for: .readable, token: UInt64(child.origin))
        } catch {
            // Unserved, its faults would hang: without its userfaultfd the kernel
            // unregisters its mappings instead (evicted pages then read as zeros there).
            logger.error("a forked child cannot be served (\(error)): its far pages that are not resident read as zeros")
            child.close()
            return
        }
        children.append(child)
        counters.set(.forkedChildren, UInt64(children.count))
        nextChildCheck = fm_now_ns() + 1_000_000_000
    }

    /// An event from a child's userfaultfd: its own address space changed.
    /// munmap and mremap change only where it maps the regions; MADV_DONTNEED
    /// and MADV_REMOVE follow the rule for ours (the page cache decides).
    func handleChildEvent(_ event: UserfaultfdEvent, child: ForkedProcess) {
        switch event {
        case .pageFault: break
        case .remove(let start, let end):
            for (slot, extents) in child.extents {
                guard slot < regions.count, let region = regions[slot], let shared = region.shared else { continue }
                for run in extents.pageRuns(in: start, end) {
                    handleSharedRemove(region: region, shared: shared, run: run, unmapped: false)
                }
            }
        case .unmap(let start, let end):
            for slot in child.extents.keys { child.extents[slot]!.cut(start, end) }
            // Its threads parked there (a write-back in flight) would never be woken at an address it no longer maps.
            try? child.uffd.wake(start, length: Int(end - start))
        case .remap(let from, let to, let length):
            for slot in child.extents.keys { child.extents[slot]!.move(from: from, to: to, length: length) }
            try? child.uffd.wake(from, length: Int(length))
        case .fork(let descriptor):
            adoptChild(descriptor, forkedFrom: child)
        case .unknown(let event):
            logger.warning("unexpected userfaultfd event \(event) from a forked child")
        }
    }

    /// Reads every child's messages, and once a second drops the children
    /// that have exited (closing their userfaultfds).
    func serveChildren() {
        for child in children where !child.gone { readMessages(from: child) }
        let now = fm_now_ns()
        guard now >= nextChildCheck || children.contains(where: \.gone) else { return }
        nextChildCheck = now + 1_000_000_000
        children.removeAll { child in
            guard !child.isAlive(probeAddress: staging.address(of: 0)) else { return false }
            childEvents?.remove(child.uffd.descriptor)
            child.close()
            return true
        }
        counters.set(.forkedChildren, UInt64(children.count))
    }

    /// A shared region registered while a fork was under way may have been
    /// inherited before its handler knew it: every child is told where it is
    /// (a child that did not inherit it never faults there).
    func addToChildren(_ region: RegionRecord) {
        guard region.shared != nil else { return }
        for child in children where child.extents[region.slot] == nil { child.extents[region.slot] = region.extents }
    }

    /// A child's fault where it maps no region of ours (cannot happen: see
    /// `addToChildren`). A wake would refault forever: the page raises SIGBUS.
    func refuseUnknownChildFault(_ fault: PageFault) {
        logger.error("a forked child faulted at \(fault.page), where it maps no far region known here: SIGBUS there")
        if (try? target.poison(fault.page, length: 4096)) == nil { try? target.wake(fault.page, length: 4096) }
    }

    /// Whether a child maps the page (the parent's munmap then leaves it be).
    func mappedInChildren(_ region: RegionRecord, _ page: Int) -> Bool {
        children.contains { !$0.gone && $0.extents[region.slot]?.address(of: page) != nil }
    }

    /// Write-protects a page (unit) wherever a child maps it. EAGAIN (the
    /// child has an event pending) is thrown: the caller tries later.
    func writeProtectInChildren(region: RegionRecord, page: Int, pages: Int) throws(Errno) {
        for child in children where !child.gone {
            guard let address = child.extents[region.slot]?.address(of: page) else { continue }
            do {
                try child.uffd.writeProtect(address, length: pages * 4096, protect: true)
            } catch {
                switch error {
                case .noSuchProcess: child.gone = true
                case .noEntry: break   // not mapped there any more (an UNMAP not read yet)
                default: throw error
                }
            }
        }
    }

    /// Wakes a child's threads waiting on a page (its write-back is over).
    func wakeInChildren(region: RegionRecord, page: Int, pages: Int) {
        for child in children where !child.gone {
            guard let address = child.extents[region.slot]?.address(of: page) else { continue }
            try? child.uffd.wake(address, length: pages * 4096)
        }
    }

    /// A region is closed while children still map it: their mappings become
    /// plain mappings of its file. Pages in the page cache (resident, or being
    /// written back) keep their data there; evicted pages are poisoned first,
    /// so that the child gets SIGBUS there rather than the file's zeros (see
    /// README, "fork"). Our own exit cannot do that: a child that outlives
    /// this process reads zeros there.
    func forgetInChildren(_ region: RegionRecord) {
        for child in children {
            guard let extents = child.extents.removeValue(forKey: region.slot) else { continue }
            for extent in extents {
                var page = extent.firstPage
                let end = extent.firstPage + extent.pageCount
                while page < end {
                    guard region.states[page].isOnServerOnly else { page += 1; continue }
                    var run = 1
                    while page + run < end, region.states[page + run].isOnServerOnly { run += 1 }
                    // Evicted pages keep a write-protect marker (it outlives the punch)
                    // that poisoning would not replace: cleared first.
                    let address = extent.start + UInt(page - extent.firstPage) << 12
                    try? child.uffd.writeProtect(address, length: run * 4096, protect: false)
                    try? child.uffd.poison(address, length: run * 4096)
                    page += run
                }
                try? child.uffd.unregister(extent.start, length: extent.pageCount * 4096)
            }
        }
    }
}

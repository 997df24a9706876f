import FarMemProtocol
import Synchronization

/// One tenant's use of the server: capacity its sessions hold reserved, pages
/// they store, and its quota. Lives as long as the tenant is in the keys file
/// (a reload keeps the account, and so the usage, of a tenant it keeps).
final class TenantAccount: Sendable {
    let name: String
    private struct Usage {
        var quotaPages: Int
        var reservedPages = 0
    }
    private let usage: Mutex<Usage>
    private let stored = Atomic<Int>(0)
    /// Sessions of this tenant now.
    let sessions = Atomic<Int>(0)

    init(name: String, quotaPages: Int) {
        self.name = name
        usage = Mutex(Usage(quotaPages: quotaPages))
    }

    var quotaPages: Int { usage.withLock { $0.quotaPages } }
    var reservedPages: Int { usage.withLock { $0.reservedPages } }
    var storedPages: Int { stored.load(ordering: .relaxed) }

    /// A reload changed the quota. Reservations already held stay (nothing is
    /// taken back); new ones must fit under the new quota.
    func setQuota(_ pages: Int) { usage.withLock { $0.quotaPages = pages } }

    /// Reserves `pages` under the quota; nil on success, else why not.
    func reserve(_ pages: Int) -> String? {
        usage.withLock { usage in
            guard pages <= usage.quotaPages - usage.reservedPages else {
                return "tenant '\(name)' would go over its quota of \(formatByteSize(usage.quotaPages * 4096)) "
                    + "(\(usage.quotaPages) pages): \(usage.reservedPages) reserved, \(pages) more asked"
            }
            usage.reservedPages += pages
            return nil
        }
    }

    func release(_ pages: Int) { usage.withLock { $0.reservedPages -= pages } }
    func addStored(_ delta: Int) { stored.add(delta, ordering: .relaxed) }
}

/// Recency without access bits: the refault. An unprivileged process cannot
/// read its pages' accessed bits on Linux 6.18, but the pager sees a page
/// come back. A page fetched again soon after it was evicted (within
/// `hotDistance` epochs, an epoch being a quarter of the budget's worth of
/// evictions) would have stayed with a little more room: it is marked hot,
/// and the next time FIFO order makes it a victim it gets a second chance
/// instead (back to the end of the queue, mark cleared). A page touched once
/// (a scan) is never hot, so it leaves in FIFO order as before.
///
/// One byte per page, in the region record: bit 7 hot, bits 0-6 the epoch of
/// its last eviction (1...127, 0: never evicted; a page back after a whole
/// multiple of 127 epochs looks recent: one extra second chance, harmless).
/// Owned by the fault handler.
struct Recency {
    static let hotDistance = 4
    private static let hotBit: UInt8 = 0x80
    private static let epochs = 127

    /// The current epoch, 1...127.
    private(set) var epoch = 1
    private var evictionsThisEpoch = 0
    private let epochLength: Int
    let enabled: Bool

    init(budgetPages: Int, enabled: Bool) {
        epochLength = max(1, budgetPages / 4)
        self.enabled = enabled
    }

    /// `page` was evicted: remember when (its hot mark is spent). `pages`:
    /// how many 4 KiB pages it stands for (a hugetlb unit's 512), so that
    /// epochs stay a quarter of the budget whatever the page size.
    mutating func evicted(_ marks: UnsafeMutablePointer<UInt8>, _ page: Int, pages: Int = 1) {
        marks[page] = UInt8(epoch)
        evictionsThisEpoch += pages
        while evictionsThisEpoch >= epochLength {
            evictionsThisEpoch -= epochLength
            epoch = epoch % Self.epochs + 1
        }
    }

    /// `page` was fetched back from the store: hot if it left recently.
    /// Returns whether it was marked.
    @discardableResult
    func refetched(_ marks: UnsafeMutablePointer<UInt8>, _ page: Int) -> Bool {
        let left = Int(marks[page] & ~Self.hotBit)
        guard enabled, left != 0 else { return false }
        let distance = (epoch - left + Self.epochs) % Self.epochs
        guard distance <= Self.hotDistance else { return false }
        marks[page] = marks[page] | Self.hotBit
        return true
    }

    /// A victim candidate: true when it gets a second chance (it was hot;
    /// the mark is cleared, so it gets one only).
    func secondChance(_ marks: UnsafeMutablePointer<UInt8>, _ page: Int) -> Bool {
        guard marks[page] & Self.hotBit != 0 else { return false }
        marks[page] &= ~Self.hotBit
        return true
    }
}

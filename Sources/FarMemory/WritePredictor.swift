/// Predicts whether the pages a fault handler fetches for a read (the
/// faulting page and the prefetched ones) will be written, so they can be
/// installed writable and dirty and spare the application a write-protect
/// fault each (another wake-up of the handler and another ioctl: in an
/// in-place sort, nearly every page read took one).
///
/// The signal: of the pages installed clean (write-protected), how many took
/// a write-protect fault since. Both counts decay (halved every `window`
/// clean installs), so a phase change shows within a few thousand pages.
/// While pages go in dirty they are not observed, so one fault in
/// `probeEvery` (its page and its prefetched batch) still goes in clean to
/// keep the estimate honest; one in `sureProbeEvery` while nearly every
/// clean page gets written (a sort), with the window shortened as much, so
/// that a phase of reads still shows as soon. A wrong guess costs a write-back of a page that was not
/// written; never a lost write: a page installed dirty is written back
/// before it is dropped.
struct WritePredictor {
    static let window = 4096
    static let minimumSample = 64
    static let probeEvery = 8
    static let sureProbeEvery = 32

    private var cleanInstalls = 0
    private var writeProtectFaults = 0
    private var batches = 0
    let enabled: Bool

    init(enabled: Bool) { self.enabled = enabled }

    /// Pages went in write-protected and clean.
    mutating func installedClean(_ pages: Int) {
        cleanInstalls += pages
        if cleanInstalls >= (isSure ? Self.window * Self.probeEvery / Self.sureProbeEvery : Self.window) {
            cleanInstalls /= 2
            writeProtectFaults /= 2
        }
    }

    /// A clean page was written (its write-protect fault).
    mutating func wroteCleanPage() { writeProtectFaults += 1 }

    /// Nearly every clean page gets written (15 in 16): probes can be rarer.
    private var isSure: Bool { cleanInstalls >= Self.minimumSample && writeProtectFaults * 16 >= cleanInstalls * 15 }

    /// Whether most clean pages get written: the next prefetch goes in dirty.
    var predictsWrites: Bool {
        enabled && cleanInstalls >= Self.minimumSample && writeProtectFaults * 2 > cleanInstalls
    }

    /// Decides for one fault's pages (the faulting one and its prefetched
    /// batch): dirty when writes are predicted, except every `probeEvery`-th
    /// fault (clean, to keep measuring).
    mutating func installGoesInDirty() -> Bool {
        guard predictsWrites else { return false }
        batches += 1
        return batches % (isSure ? Self.sureProbeEvery : Self.probeEvery) != 0
    }
}

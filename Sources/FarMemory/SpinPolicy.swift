/// Adaptive spinning: whether to poll for the next message (a fault, a
/// fetch's reply) rather than sleep for it. Sleeping costs a wake-up (about
/// 50 us across CPUs on these VMs) when the message comes; spinning costs a
/// CPU for as long as it waits. So spin only while messages have been coming
/// within the spin limit, and never past it.
///
/// Each wait is one observation: did the message come within the limit?
/// (Measured from when the thread went idle; after a sleep the wake-up itself
/// is in the measurement, so a sleep counts as quick when it lasted under the
/// limit plus a wake-up.) The decision follows the share of quick waits among
/// the recent ones (an exponential average over about 8): a burst of faults
/// turns spinning on after about six, a pause turns it off as fast. Pure logic.
struct SpinPolicy {
    let limitNanoseconds: UInt64
    let wakeCostNanoseconds: UInt64
    /// Quick waits among the recent ones, in 1/256ths.
    private(set) var quickShare: Int = 0
    private static let spinAbove = 128

    init(limitNanoseconds: UInt64, wakeCostNanoseconds: UInt64 = 50_000) {
        self.limitNanoseconds = limitNanoseconds
        self.wakeCostNanoseconds = wakeCostNanoseconds
    }

    /// How long to spin before sleeping: the limit while recent waits were
    /// mostly quick, else 0.
    var spinNanoseconds: UInt64 { quickShare >= Self.spinAbove ? limitNanoseconds : 0 }

    /// A wait ended after `waited` ns; `slept`: the thread slept for it.
    mutating func observe(waited: UInt64, slept: Bool) {
        let quick = waited <= limitNanoseconds + (slept ? wakeCostNanoseconds : 0)
        quickShare += ((quick ? 256 : 0) - quickShare) / 8
    }
}

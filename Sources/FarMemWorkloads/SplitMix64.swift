/// A small deterministic random generator (splitmix64): workloads, the demo
/// and the tests draw reproducible sequences from it, so a run can be replayed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 { splitmix(&state) }
}

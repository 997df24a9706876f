/// Finds sequential and strided access in a thread's recent faults: a
/// majority vote over the deltas between its last 8 faulting pages. Random
/// access rarely produces a majority, so it does not trigger prefetching.
/// Faults are told apart per thread (userfaultfd reports the thread id), so
/// threads scanning their own stripes each keep their trend.
struct TrendDetector {
    static let history = 8
    private struct Stream {
        var thread: UInt32 = 0
        var region = -1
        var pages: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var next = 0
        /// Pages to fetch ahead; grows while the trend holds.
        var window = 0
    }
    private var streams = [Stream](repeating: Stream(), count: 16)
    let maxWindow: Int

    init(maxWindow: Int) { self.maxWindow = max(0, maxWindow) }

    /// Records a fault; returns (stride, window) when a trend holds.
    mutating func record(thread: UInt32, region: Int, page: Int) -> (stride: Int, window: Int)? {
        guard maxWindow > 0 else { return nil }
        let index = Int(thread % 16)
        var stream = streams[index]
        if stream.thread != thread || stream.region != region {
            stream = Stream(thread: thread, region: region)
        }
        withUnsafeMutableBytes(of: &stream.pages) { $0.storeBytes(of: page, toByteOffset: stream.next * 8, as: Int.self) }
        stream.next = (stream.next + 1) % TrendDetector.history
        stream.count = min(stream.count + 1, TrendDetector.history)
        defer { streams[index] = stream }
        guard stream.count >= 4 else { return nil }
        // Deltas between consecutive faults, oldest first; the most frequent wins if it has a majority.
        var deltas = (0, 0, 0, 0, 0, 0, 0)
        let n = stream.count - 1
        withUnsafeBytes(of: stream.pages) { pages in
            withUnsafeMutableBytes(of: &deltas) { out in
                for i in 0..<n {
                    let a = pages.load(fromByteOffset: ((stream.next - stream.count + i + 16) % 8) * 8, as: Int.self)
                    let b = pages.load(fromByteOffset: ((stream.next - stream.count + i + 17) % 8) * 8, as: Int.self)
                    out.storeBytes(of: b - a, toByteOffset: i * 8, as: Int.self)
                }
            }
        }
        var best = 0, bestVotes = 0
        withUnsafeBytes(of: deltas) { d in
            for i in 0..<n {
                let candidate = d.load(fromByteOffset: i * 8, as: Int.self)
                guard candidate != 0 else { continue }
                var votes = 0
                for j in 0..<n where d.load(fromByteOffset: j * 8, as: Int.self) == candidate { votes += 1 }
                if votes > bestVotes { best = candidate; bestVotes = votes }
            }
        }
        guard bestVotes * 2 > n else {
            stream.window = 0
            return nil
        }
        stream.window = stream.window == 0 ? min(8, maxWindow) : min(stream.window * 2, maxWindow)
        return (best, stream.window)
    }
}

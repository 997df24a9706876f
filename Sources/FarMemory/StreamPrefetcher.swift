/// Finds the streams in a thread's faults and says what to fetch ahead.
/// Each thread (userfaultfd reports its id) has a few streams: a quicksort
/// partition scans up from one end and down from the other in one thread, a
/// merge reads two runs and writes a third. A stream starts from two faults
/// near each other and is confirmed by a third one stride further; from
/// then on a fault anywhere in what it predicted (or just past it) continues
/// it, and its window doubles up to the cap. Faults that fit no stream start
/// new ones in place of the least recently used, so random access never
/// confirms one and never prefetches.
///
/// The prefetched pages do not fault, so a stream expects its next fault
/// just past its window, not at the next page: the old detector (a vote on
/// the deltas between the last eight faults) saw deltas of 9, 17, 33 ... and
/// kept losing its own trend. Fixed-size table, no allocation per fault.
struct StreamPrefetcher {
    static let threadSlots = 16
    static let streamsPerThread = 4
    /// The farthest (in pages) a fault may be from a stream's last one to
    /// start or restart it: a few strided pages, never a random jump in a large region.
    static let reach = 64

    private struct Stream {
        var thread: UInt32 = 0
        var region = -1
        /// The page of the stream's last fault.
        var anchor = 0
        /// Pages between its faults (0: one fault seen so far).
        var stride = 0
        /// Seen three faults a stride apart: it prefetches.
        var confirmed = false
        /// Pages fetched ahead at its last fault (0: none yet).
        var window = 0
        var lastUse: UInt64 = 0
    }

    private var streams: [Stream]
    private var clock: UInt64 = 0
    let maxWindow: Int

    init(maxWindow: Int) {
        self.maxWindow = max(0, maxWindow)
        streams = Array(repeating: Stream(), count: Self.threadSlots * Self.streamsPerThread)
    }

    /// Records a fault; returns (stride, window) to fetch `window` pages
    /// `stride` apart after `page`, or nil.
    mutating func record(thread: UInt32, region: Int, page: Int) -> (stride: Int, window: Int)? {
        guard maxWindow > 0 else { return nil }
        clock += 1
        let first = Int(thread % UInt32(Self.threadSlots)) * Self.streamsPerThread
        let slots = first..<first + Self.streamsPerThread
        // A confirmed stream this fault continues.
        for i in slots where streams[i].thread == thread && streams[i].region == region && streams[i].confirmed
            && continues(streams[i], page) {
            streams[i].window = streams[i].window == 0 ? min(8, maxWindow) : min(streams[i].window * 2, maxWindow)
            streams[i].anchor = page
            streams[i].lastUse = clock
            return (streams[i].stride, streams[i].window)
        }
        // The nearest unconfirmed one within reach: it gets (or confirms) a stride.
        var nearest = -1
        var nearestDistance = Int.max
        for i in slots where streams[i].thread == thread && streams[i].region == region && !streams[i].confirmed {
            let distance = abs(page - streams[i].anchor)
            if distance > 0, distance <= Self.reach, distance < nearestDistance { nearest = i; nearestDistance = distance }
        }
        if nearest >= 0 {
            let delta = page - streams[nearest].anchor
            streams[nearest].confirmed = streams[nearest].stride == delta
            streams[nearest].stride = delta
            streams[nearest].anchor = page
            streams[nearest].lastUse = clock
            guard streams[nearest].confirmed else { return nil }
            streams[nearest].window = min(8, maxWindow)
            return (delta, streams[nearest].window)
        }
        // A new stream, in place of this thread's least recently used one (or another thread's).
        var victim = first
        for i in slots {
            if streams[i].thread != thread || streams[i].region < 0 { victim = i; break }
            if streams[i].lastUse < streams[victim].lastUse { victim = i }
        }
        streams[victim] = Stream(thread: thread, region: region, anchor: page, lastUse: clock)
        return nil
    }

    /// Whether `page` continues `stream`: a whole number of strides past its
    /// last fault, within what it prefetched then and one stride beyond (a
    /// prefetch cut short by a resident page ends the run early).
    private func continues(_ stream: Stream, _ page: Int) -> Bool {
        let distance = page - stream.anchor
        guard distance % stream.stride == 0 else { return false }
        let steps = distance / stream.stride
        return steps >= 1 && steps <= max(stream.window, 1) + 1
    }
}

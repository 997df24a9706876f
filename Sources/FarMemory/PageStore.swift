import FarMemProtocol

/// A region as a page store knows it: its name there and, for one-sided
/// RDMA, where its memory is on each server (in the cluster's server order;
/// nil where it is not exposed). Made by `PageStore.createRegion`.
struct StoreRegion: Sendable {
    let id: UInt64
    var remotes: [RemoteRegion?]
    /// In a cluster, the servers the region was created on (its copies are
    /// placed among them); a single server's regions leave it at 1.
    var members: Placement.ServerSet
    /// In a cluster, where each extent's copies are now (repairs move them).
    var copies: ExtentCopies?

    init(id: UInt64, remotes: [RemoteRegion?] = [], members: Placement.ServerSet = 1, copies: ExtentCopies? = nil) {
        self.id = id
        self.remotes = remotes
        self.members = members
        self.copies = copies
    }

    @inline(__always) func remote(on member: Int) -> RemoteRegion? { member < remotes.count ? remotes[member] : nil }
}

/// Why a page store could not do what it was asked, once its own retries
/// (and, for a replicated store, its other replicas) are exhausted.
enum StoreError: Error, CustomStringConvertible {
    /// No answer within the store's retry window.
    case unavailable(String)
    /// The store does not have the region (it restarted, or the region was dropped).
    case regionGone(ProtocolError)
    /// The store answered no: out of capacity, a bad request, ...
    case refused(ProtocolError)
    /// Every copy of these pages is gone (a cluster whose servers holding them
    /// are all down): nothing can be read, nor written, there.
    case lost(String)

    /// The server's refusal, if it was one.
    var refusal: ProtocolError? {
        switch self {
        case .unavailable, .lost: return nil
        case .regionGone(let refusal), .refused(let refusal): return refusal
        }
    }

    var description: String {
        switch self {
        case .unavailable(let text), .lost(let text): return text
        case .regionGone(let refusal), .refused(let refusal): return "refused by the server: \(refusal)"
        }
    }
}

/// Where evicted pages live: the one interface the fault handler, the
/// evictor and region set-up use, whatever the transport (TCP or RDMA) or
/// the number of servers behind it. Each pager thread owns its own
/// instance: an instance is used by one thread at a time, so it can keep
/// buffers and connections without locks. Retries are the store's business.
protocol PageStore: AnyObject {
    /// Reads `pages` of `region`, 4 KiB each in order, and returns where their
    /// bytes are: `buffer`, or a buffer of the store's own (valid until its
    /// next call). `inPlace`: `buffer` is where the pages are wanted (a shared
    /// region's page cache), so RDMA READs go straight there rather than into
    /// the connection's buffer. The fault path: no allocation on success.
    func read(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
              into buffer: UnsafeMutableRawPointer, inPlace: Bool) throws(StoreError) -> UnsafeRawPointer

    /// Writes `pages` of `region`; `source(i)` gives the bytes of the i-th.
    func write(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
               source: (Int) -> UnsafeRawPointer) throws(StoreError)

    /// Forgets `count` pages from `first` on: they read as zeros from now on.
    func discard(_ region: StoreRegion, first: Int, count: Int) throws(StoreError)

    /// Reserves room for a region of `pageCount` pages named `id`, or refuses.
    func createRegion(id: UInt64, pageCount: Int) throws(StoreError) -> StoreRegion

    /// Frees a region and its pages (best effort: the session's end frees it too).
    func dropRegion(_ region: StoreRegion)

    /// One cheap question, no retries: does the store answer now?
    func probe() -> Bool

    /// Closes every connection (the owning thread has stopped).
    func closeConnections()

    /// Debugging (page verification): where the last read's pages came from.
    var lastReadSource: String { get }
}

extension PageStore {
    var lastReadSource: String { "" }

    func read(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
              into buffer: UnsafeMutableRawPointer) throws(StoreError) -> UnsafeRawPointer {
        try read(region, pages: pages, into: buffer, inPlace: false)
    }
}

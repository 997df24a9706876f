/// Where each page's copies live in a cluster. Pages are grouped into
/// extents of 512 pages (2 MiB); an extent's replicas are the servers with the
/// highest rendezvous weight for it (highest-random-weight hashing), so
/// losing or adding a server moves only that server's share. The first of
/// them is the one reads go to. Pure: the same inputs give the same answer in
/// every process and run (no per-process hash seeds).
struct Placement: Sendable {
    static let extentPages = 512
    /// A bit per server, in `servers` order (a cluster has at most 64).
    typealias ServerSet = UInt64

    /// Stable names of the servers ("host:port"), hashed once.
    private let serverKeys: [UInt64]
    let replicas: Int

    init(servers: [String], replicas: Int) {
        precondition(!servers.isEmpty && servers.count <= 64, "1 to 64 servers")
        serverKeys = servers.map(Self.fnv1a)
        self.replicas = max(1, min(replicas, servers.count, 4))
    }

    var serverCount: Int { serverKeys.count }
    var allServers: ServerSet { serverKeys.count == 64 ? ~0 : (1 << UInt64(serverKeys.count)) - 1 }

    @inline(__always) static func extent(of page: Int) -> Int { page / extentPages }

    /// The extent's replica servers among `candidates`, best first: at most
    /// `replicas` of them, fewer only when fewer candidates exist. Allocation-free.
    func replicaSet(region: UInt64, extent: Int, among candidates: ServerSet) -> ReplicaList {
        var list = ReplicaList()
        // Selection of the top `replicas` weights (replicas is small: 1 to 3).
        for _ in 0..<replicas {
            var best = -1
            var bestWeight: UInt64 = 0
            for server in 0..<serverKeys.count where candidates & (1 << UInt64(server)) != 0 && !list.contains(server) {
                let weight = Self.weight(region: region, extent: extent, server: serverKeys[server])
                if best < 0 || weight > bestWeight { best = server; bestWeight = weight }
            }
            guard best >= 0 else { break }
            list.append(best)
        }
        return list
    }

    /// The pages of a region of `pageCount` pages that each server of
    /// `servers` holds copies of when every extent is placed among them:
    /// what each reserves at creation. They add up to `replicas` copies of
    /// every page (fewer servers than that: one copy on each).
    func shares(region: UInt64, pageCount: Int, among servers: ServerSet) -> [Int] {
        var shares = [Int](repeating: 0, count: serverKeys.count)
        var first = 0
        while first < pageCount {
            let pages = min(Self.extentPages, pageCount - first)
            for server in replicaSet(region: region, extent: Self.extent(of: first), among: servers) { shares[server] += pages }
            first += pages
        }
        return shares
    }

    /// A well-mixed 64-bit weight for (region, extent, server) (splitmix64 finalizer).
    @inline(__always)
    static func weight(region: UInt64, extent: Int, server: UInt64) -> UInt64 {
        var z = region &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(extent) &* 0xBF58_476D_1CE4_E5B9 ^ server
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return hash
    }
}

/// Up to four server indices, best first, without an allocation.
struct ReplicaList: Sequence, Equatable {
    private var packed: (Int8, Int8, Int8, Int8) = (-1, -1, -1, -1)
    private(set) var count = 0

    init() {}

    /// The servers of `set` in index order, at most four.
    init(_ set: Placement.ServerSet) {
        var rest = set
        while rest != 0, count < 4 {
            append(rest.trailingZeroBitCount)
            rest &= rest - 1
        }
    }

    var mask: Placement.ServerSet { (0..<count).reduce(0) { $0 | 1 << UInt64(self[$1]) } }

    mutating func append(_ server: Int) {
        precondition(count < 4, "at most four replicas")
        switch count {
        case 0: packed.0 = Int8(server)
        case 1: packed.1 = Int8(server)
        case 2: packed.2 = Int8(server)
        default: packed.3 = Int8(server)
        }
        count += 1
    }

    subscript(i: Int) -> Int {
        switch i {
        case 0: return Int(packed.0)
        case 1: return Int(packed.1)
        case 2: return Int(packed.2)
        default: return Int(packed.3)
        }
    }

    func contains(_ server: Int) -> Bool { (0..<count).contains { self[$0] == server } }

    func makeIterator() -> IndexingIterator<[Int]> { (0..<count).map { self[$0] }.makeIterator() }

    static func == (a: ReplicaList, b: ReplicaList) -> Bool { a.count == b.count && (0..<a.count).allSatisfy { a[$0] == b[$0] } }
}

import CFarMemSys

/// A debugging aid (`FarMemoryConfiguration.tracedPages`, internal): what
/// the fault handler did with chosen pages (or all of them), in order: each
/// fault, event, move out, write-back and install that touched them, with the
/// page's state before and after. Records are fixed-size and go into a
/// preallocated ring written only by the handler thread (no lock, no
/// allocation), so tracing changes the timing of the races it is meant to
/// catch as little as it can; they are rendered as text only when read.
/// Off (no pages): one check per step.
final class PageTrace: @unchecked Sendable {
    enum Kind: UInt8, CustomStringConvertible {
        case fault, writeProtectFault, deferred, installMetEEXIST, installMetEAGAIN, remove, unmap
        case movedOut, moveFoundNothing, writeBackLanded, cleanDropDone, restored
        case fetched, servedFromKept, prefetchInstalled, prefetchStopped
        var description: String {
            switch self {
            case .fault: return "fault (extra: write)"
            case .writeProtectFault: return "write-protect fault"
            case .deferred: return "fault deferred (extra: write)"
            case .installMetEEXIST: return "install met EEXIST (discard window)"
            case .installMetEAGAIN: return "install met EAGAIN (extra: fetched batch kept)"
            case .remove: return "REMOVE"
            case .unmap: return "UNMAP"
            case .movedOut: return "moved out (extra: staging slot)"
            case .moveFoundNothing: return "move out found nothing mapped"
            case .writeBackLanded: return "write-back landed (extra: staging slot)"
            case .cleanDropDone: return "clean drop done (extra: staging slot)"
            case .restored: return "restore after a failed write-back"
            case .fetched: return "fetched (extra: pages prefetched after it)"
            case .servedFromKept: return "served from the kept batch (extra: its pages)"
            case .prefetchInstalled: return "installed by prefetch (extra: dirty)"
            case .prefetchStopped: return "prefetch install stopped short"
            }
        }
    }

    private struct Record {
        var nanoseconds: UInt64
        var page: Int32
        var kind: UInt8
        var before: UInt8
        var after: UInt8
        var extra: Int32
    }

    private let pages: Set<Int>
    private let all: Bool
    private let capacity: Int
    private let records: UnsafeMutablePointer<Record>
    private var written = 0

    /// `pages` [-1]: every page (with a larger ring).
    init(pages: [Int]) {
        self.pages = Set(pages)
        all = pages.contains(-1)
        capacity = pages.isEmpty ? 1 : (all ? 1 << 20 : 4096)
        records = .allocate(capacity: capacity)
    }

    deinit { records.deallocate() }

    @inline(__always) func traces(_ page: Int) -> Bool { all || (!pages.isEmpty && pages.contains(page)) }

    /// The handler thread only.
    @inline(__always)
    func record(_ page: Int, _ kind: Kind, _ before: PageState = .zeros, _ after: PageState = .zeros, extra: Int = 0) {
        guard traces(page) else { return }
        records[written % capacity] = Record(nanoseconds: fm_now_ns(), page: Int32(truncatingIfNeeded: page), kind: kind.rawValue,
                                             before: before.rawBits, after: after.rawBits, extra: Int32(truncatingIfNeeded: extra))
        written += 1
    }

    /// The recorded steps, oldest first, as text (read while the handler may
    /// still write: a debugging aid, the last few lines may be torn).
    func lines(page: Int? = nil) -> [String] {
        let count = min(written, capacity), start = written - count
        var out: [String] = []
        for i in start..<start + count {
            let r = records[i % capacity]
            guard page == nil || Int(r.page) == page else { continue }
            let kind = Kind(rawValue: r.kind).map(\.description) ?? "?"
            out.append("\(r.nanoseconds / 1000 % 100_000_000) us  page \(r.page): \(kind) [\(PageState(rawBits: r.before))] -> [\(PageState(rawBits: r.after))] extra \(r.extra)")
        }
        return out
    }
}

import CFarMemRDMA
import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// The server's RDMA side: an RDMA-CM listener whose connections join the
/// session named by their ticket, and per-session protection domains in which
/// regions are registered for one-sided READ and WRITE. Clients move pages
/// with no server CPU on the data path; this thread only sees connects and
/// disconnects. A session's life is its TCP connections' (kept honest by TCP
/// keepalive); when it ends, its RDMA connections are dropped with it.
final class RDMAService: @unchecked Sendable {
    let port: UInt16
    private let listener: OpaquePointer
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private var thread: PosixThread?

    /// ticket -> session, and each session's ticket and protection domain.
    private struct Book {
        var sessionsByTicket: [SessionKey: Session] = [:]
        var tickets: [ObjectIdentifier: [UInt8]] = [:]
        var domains: [ObjectIdentifier: UnsafeMutableRawPointer] = [:]
        var connections: [UnsafeMutableRawPointer: Session] = [:]
    }
    private let lock = Lock()
    private var _book = Book()

    private func withBook<T>(_ body: (inout Book) -> T) -> T { lock.withLock { body(&_book) } }

    struct Unavailable: Error, CustomStringConvertible { let description: String }

    init(host: String, port requested: UInt16, logger: Logger) throws(Unavailable) {
        var bound: UInt16 = 0
        var err: Int32 = 0
        var why = [CChar](repeating: 0, count: 256)
        guard let listener = fm_rdma_listen(host, requested, &bound, &err, &why, why.count) else {
            throw Unavailable(description: stringFromCBuffer(why))
        }
        self.listener = listener
        self.port = bound
        self.logger = logger
    }

    func start() {
        thread = PosixThread.spawn(name: "farmemd-rdma") { [self] in run() }
    }

    func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        thread?.join()
        // Taken out of the table as they are dropped: a session ending later
        // (its TCP connections close after this) must not drop them again.
        let live = withBook { book -> [UnsafeMutableRawPointer] in
            let ids = Array(book.connections.keys)
            book.connections.removeAll()
            return ids
        }
        for id in live { fm_rdma_drop(id) }
        fm_rdma_listener_close(listener)
    }

    /// The session's ticket (made on first use).
    /// RDMA connections (queue pairs) open now, for metrics.
    var connectionCount: Int { withBook { $0.connections.count } }

    func ticket(for session: Session) -> [UInt8] {
        withBook { book in
            if let ticket = book.tickets[ObjectIdentifier(session)] { return ticket }
            var generator = SystemRandomNumberGenerator()
            var ticket = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
            ticket[0] |= 1
            book.tickets[ObjectIdentifier(session)] = ticket
            book.sessionsByTicket[SessionKey(ticket)] = session
            return ticket
        }
    }

    /// Registers a region in the session's protection domain.
    func expose(region id: UInt64, of session: Session) throws(ProtocolError) -> RDMAExposeReply {
        guard let domain = withBook({ $0.domains[ObjectIdentifier(session)] }) else {
            throw ProtocolError(.rdmaUnavailable, "no RDMA connection of this session yet: connect with the RDMA_ATTACH ticket first")
        }
        // Registering pins (and faults in) the whole region, so the whole of it
        // is reserved first. It can take a while: done outside the session's
        // lock, then published under it.
        try session.reserveWhole(id)
        let (region, existing) = try session.withRegion(id) { region throws(ProtocolError) in (region, region.registration) }
        if let existing {
            return RDMAExposeReply(address: UInt64(region.base), rkey: fm_rdma_rkey(existing), length: UInt64(region.length))
        }
        var err: Int32 = 0
        guard let mr = fm_rdma_register(domain, UnsafeMutableRawPointer(bitPattern: region.base), region.length, &err) else {
            throw ProtocolError(.rdmaUnavailable, "cannot register region \(id) for RDMA: \(Errno(negated: err))")
        }
        let published: UnsafeMutableRawPointer
        do {
            published = try session.publishRegistration(mr, of: region, id: id)
        } catch {
            _ = fm_rdma_deregister(mr)   // else it pins the pages and keeps the domain busy
            throw error
        }
        if published != mr { _ = fm_rdma_deregister(mr) }
        return RDMAExposeReply(address: UInt64(region.base), rkey: fm_rdma_rkey(published), length: UInt64(region.length))
    }

    /// The session has ended: drop its RDMA connections, then free its domain
    /// (its regions are already deregistered).
    func forget(_ session: Session) {
        let (domain, connections) = withBook { book in
            if let ticket = book.tickets.removeValue(forKey: ObjectIdentifier(session)) {
                book.sessionsByTicket[SessionKey(ticket)] = nil
            }
            let ids = book.connections.filter { $0.value === session }.map(\.key)
            for id in ids { book.connections[id] = nil }
            return (book.domains.removeValue(forKey: ObjectIdentifier(session)), ids)
        }
        for id in connections { fm_rdma_drop(id) }
        if let domain { _ = fm_rdma_dealloc_pd(domain) }
    }

    private func run() {
        var event = fm_rdma_event()
        while !stopping.load(ordering: .relaxed) {
            let rc = fm_rdma_next_event(listener, &event, 200)
            if rc <= 0 { continue }
            guard let id = event.id else { continue }
            switch Int(event.type) {
            case Int(FM_RDMA_EVENT_CONNECT_REQUEST):
                accept(id, event: event)
            case Int(FM_RDMA_EVENT_DISCONNECTED):
                if withBook({ $0.connections.removeValue(forKey: id) }) != nil { fm_rdma_drop(id) }
            default:
                break
            }
        }
    }

    private func accept(_ id: UnsafeMutableRawPointer, event: fm_rdma_event) {
        let ticket = withUnsafeBytes(of: event.private_data) { Array($0.prefix(Int(event.private_len))) }
        guard ticket.count >= 16, let session = withBook({ $0.sessionsByTicket[SessionKey(Array(ticket.prefix(16)))] }) else {
            logger.warning("RDMA connection refused: unknown ticket")
            _ = fm_rdma_reject(id, "unknown ticket")
            return
        }
        // All under the lock forget() takes: a session that ends meanwhile either
        // refuses this connection here or finds it in the table and drops it. It
        // never frees the id or the domain while they are in use here, and no
        // domain is made for a session that has already ended.
        enum Outcome { case accepted, refused(String), failed(Errno) }
        let outcome = withBook { book -> Outcome in
            guard !session.ended.load(ordering: .acquiring) else { return .refused("session ended") }
            let key = ObjectIdentifier(session)
            guard let domain = book.domains[key] ?? fm_rdma_alloc_pd(id) else { return .refused("no protection domain") }
            book.domains[key] = domain
            let rc = fm_rdma_accept(id, domain)
            guard rc == 0 else { return .failed(Errno(negated: rc)) }
            book.connections[id] = session
            return .accepted
        }
        switch outcome {
        case .accepted:
            break
        case .refused(let reason):
            _ = fm_rdma_reject(id, reason)
        case .failed(let error):
            logger.warning("RDMA accept failed: \(error)")
            fm_rdma_drop(id)
        }
    }
}

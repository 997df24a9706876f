import FarMemProtocol
import FarMemSystem
import Logging
import Synchronization

/// One thread serving many connections: an epoll set of non-blocking
/// sockets, each answered inline as its requests arrive (a request is a
/// memory copy of microseconds; a hand-off to another thread would cost more
/// than the work). A server runs a few loops, about one per core, all
/// accepting from the same listener (EPOLLEXCLUSIVE wakes one idle loop per
/// new connection). Threads and buffers therefore do not grow with the number
/// of connections; see `ClientChannel` for what a connection costs.
final class EventLoop: @unchecked Sendable {
    private let context: ServerContext
    private let listener: TCPSocket?
    private let epoll: Epoll
    private let wakeUp: EventNotifier
    private let name: String
    private var thread: PosixThread?

    /// Connections by slot; a token is the slot and the slot's generation, so
    /// an event read for a connection closed in the same batch is not applied
    /// to one that took its slot.
    private var channels: [ClientChannel?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [Int] = []
    /// Internal, not private: the fuzz target takes its pool's buffers before the loop starts.
    let buffers: LoopBuffers
    /// Connections waiting for a pool buffer, first come first served (slot, generation).
    private var parkedSlots: [(slot: Int, generation: UInt32)] = []
    /// Sockets handed over by another thread (`adopt`).
    private let adopted = Mutex<[TCPSocket]>([])
    /// The listener is left out of the epoll set until then (out of descriptors).
    private var acceptPausedUntil: UInt64 = 0
    private var lastAcceptWarning: UInt64 = 0

    private static let listenerToken = UInt64.max
    private static let wakeUpToken = UInt64.max - 1

    /// How often the loop looks for stalled frames and idle connections.
    private let tickMilliseconds: Int32
    private let timeoutNanoseconds: UInt64

    init(context: ServerContext, listener: TCPSocket?, name: String, bufferLimit: Int) throws(Errno) {
        self.context = context
        buffers = LoopBuffers(pool: FrameBufferPool(limit: bufferLimit, gauges: context.bufferGauges))
        self.listener = listener
        self.name = name
        epoll = try Epoll()
        wakeUp = try EventNotifier()
        let timeout = context.configuration.frameTimeoutSeconds
        timeoutNanoseconds = UInt64(timeout * 1e9)
        tickMilliseconds = Int32(min(max(timeout * 1000 / 4, 10), 250))
        try epoll.add(wakeUp.descriptor, for: .readable, token: Self.wakeUpToken)
        if let listener { try epoll.add(listener.descriptor, for: [.readable, .exclusive], token: Self.listenerToken) }
    }

    deinit {
        epoll.close()
        wakeUp.close()
    }

    func start() {
        thread = PosixThread.spawn(name: name) { [self] in run() }
    }

    /// Ends the loop (the server's `stopping` flag must be set): every
    /// connection is closed and its session freed by the time this returns.
    func stop() {
        wakeUp.signal()
        thread?.join()
        thread = nil
    }

    /// Serves an already connected socket (the fuzz target's socket pair).
    func adopt(_ socket: TCPSocket) {
        adopted.withLock { $0.append(socket) }
        wakeUp.signal()
    }

    // MARK: The loop

    private func run() {
        var ready = Epoll.ReadyList()
        var nextCheck = monotonicNanoseconds() + UInt64(tickMilliseconds) * 1_000_000
        while !context.stopping.load(ordering: .relaxed) {
            do {
                try epoll.wait(into: &ready, timeoutMilliseconds: tickMilliseconds)
            } catch {
                context.logger.critical("\(name): epoll_wait failed: \(error)")
                break
            }
            var now = monotonicNanoseconds()
            for i in 0..<ready.count {
                switch ready.token(i) {
                case Self.listenerToken: acceptConnections(now: now)
                case Self.wakeUpToken: wakeUp.drain(); adoptSockets(now: now)
                case let token: serve(token: token, events: ready.events(i), now: now)
                }
            }
            now = monotonicNanoseconds()
            if !parkedSlots.isEmpty { unparkConnections() }
            if now >= nextCheck {
                checkConnections(now: now)
                nextCheck = now + UInt64(tickMilliseconds) * 1_000_000
            }
        }
        let now = monotonicNanoseconds()
        for slot in channels.indices where channels[slot] != nil { close(slot: slot, now: now) }
        for socket in adopted.withLock({ $0 }) { socket.close() }
    }

    private func serve(token: UInt64, events: Epoll.Events, now: UInt64) {
        let slot = Int(token & 0xFFFF_FFFF)
        guard slot < channels.count, let channel = channels[slot], generations[slot] == UInt32(token >> 32) else { return }
        let before = channel.interest
        let outcome: ClientChannel.Outcome
        switch before {
        case .writable: outcome = channel.writable(buffers, now: now)
        case .readable: outcome = channel.readable(buffers, now: now)
        case .parked:
            outcome = channel.parkedEvent(buffers, now: now, peerLeft: !events.isDisjoint(with: [.error, .hangUp, .peerClosed]))
        }
        if outcome == .close {
            close(slot: slot, now: now)
            return
        }
        if channel.parked && before != .parked {
            parkedSlots.append((slot, generations[slot]))
            context.bufferGauges.waiting.add(1, ordering: .relaxed)
        } else if !channel.parked && before == .parked {
            context.bufferGauges.waiting.subtract(1, ordering: .relaxed)   // its entry in parkedSlots goes stale
        }
        if channel.interest != before { watch(channel, slot: slot, modify: true) }
    }

    private func checkConnections(now: UInt64) {
        let seconds = context.configuration.frameTimeoutSeconds
        for slot in channels.indices {
            guard let channel = channels[slot] else { continue }
            if channel.check(now: now, timeoutNanoseconds: timeoutNanoseconds, timeoutSeconds: seconds, buffers) == .close {
                close(slot: slot, now: now)
            }
        }
        buffers.pool.trim(now: now, idleNanoseconds: timeoutNanoseconds)
        if acceptPausedUntil != 0 && now >= acceptPausedUntil, let listener {
            acceptPausedUntil = 0
            do {
                try epoll.add(listener.descriptor, for: [.readable, .exclusive], token: Self.listenerToken)
            } catch {
                context.logger.error("\(name) cannot watch the listener again (\(error)); trying at the next check")
                acceptPausedUntil = now + UInt64(tickMilliseconds) * 1_000_000
            }
        }
    }

    // MARK: Connections

    private func acceptConnections(now: UInt64) {
        guard let listener else { return }
        // A bounded batch: the other loops and this loop's connections get their turn.
        for _ in 0..<64 {
            let socket: TCPSocket
            do {
                guard let accepted = try listener.acceptNonBlocking() else { return }
                socket = accepted
            } catch {
                if context.stopping.load(ordering: .relaxed) { return }
                // Out of descriptors (EMFILE, ENFILE): the connection waits in the
                // backlog. Stop watching the listener for a tick instead of spinning.
                if now - lastAcceptWarning > 10_000_000_000 {
                    context.logger.warning("accept failed: \(error); raise the descriptor limit (ulimit -n) or lower --max-connections")
                    lastAcceptWarning = now
                }
                epoll.remove(listener.descriptor)
                acceptPausedUntil = now + UInt64(tickMilliseconds) * 1_000_000
                return
            }
            if context.connections.load(ordering: .relaxed) >= context.configuration.maxConnections {
                context.logger.warning("refusing connection: \(context.configuration.maxConnections) connections already open")
                context.metrics.connectionsRefused.add()
                socket.close()
                continue
            }
            // A client host that dies silently is noticed in about a minute, and its session freed.
            try? socket.setKeepAlive(idleSeconds: 30, intervalSeconds: 10, probes: 3)
            context.metrics.connectionsAccepted.add()
            register(socket, now: now)
        }
    }

    private func adoptSockets(now: UInt64) {
        for socket in adopted.withLock({ sockets in defer { sockets.removeAll() }; return sockets }) {
            do { try socket.setNonBlocking() } catch {
                socket.close()
                context.connectionsClosed.add(1, ordering: .relaxed)   // an adopter waiting for it to end
                continue
            }
            register(socket, now: now)
        }
    }

    private func register(_ socket: TCPSocket, now: UInt64) {
        let number = context.connectionNumbers.add(1, ordering: .relaxed).newValue
        let channel = ClientChannel(socket: socket, handler: RequestHandler(context: context, peer: "connection \(number)"), now: now)
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
            channels[slot] = channel
            generations[slot] &+= 1
        } else {
            slot = channels.count
            channels.append(channel)
            generations.append(0)
        }
        context.connections.add(1, ordering: .relaxed)
        watch(channel, slot: slot, modify: false)
    }

    /// Buffers came back: parked connections read again, in the order they
    /// parked, while the pool has buffers to spare (each may need one).
    private func unparkConnections() {
        var looked = 0, resumed = 0
        for (slot, generation) in parkedSlots {
            if generations[slot] == generation, let channel = channels[slot], channel.parked {
                guard buffers.pool.inUse + resumed < buffers.pool.limit else { break }
                resumed += 1
                channel.unpark()
                watch(channel, slot: slot, modify: true)
            }
            looked += 1   // resumed, or closed since it parked
        }
        parkedSlots.removeFirst(looked)
        context.bufferGauges.waiting.subtract(resumed, ordering: .relaxed)
    }

    private func watch(_ channel: ClientChannel, slot: Int, modify: Bool) {
        let token = UInt64(generations[slot]) << 32 | UInt64(slot)
        let events: Epoll.Events
        switch channel.interest {
        case .readable: events = .readable
        case .writable: events = .writable
        // Told once of each new arrival (whether its frame is whole now) and of the peer leaving.
        case .parked: events = [.readable, .edgeTriggered, .peerClosed]
        }
        do {
            if modify {
                try epoll.modify(channel.socket.descriptor, for: events, token: token)
            } else {
                try epoll.add(channel.socket.descriptor, for: events, token: token)
            }
        } catch {
            context.logger.warning("cannot watch a connection: \(error)")
            close(slot: slot, now: monotonicNanoseconds())
        }
    }

    private func close(slot: Int, now: UInt64) {
        guard let channel = channels[slot] else { return }
        channels[slot] = nil
        freeSlots.append(slot)
        if channel.parked { context.bufferGauges.waiting.subtract(1, ordering: .relaxed) }
        // Closing the socket takes it out of the epoll set.
        channel.close(buffers, now: now)
        context.connections.subtract(1, ordering: .relaxed)
        context.connectionsClosed.add(1, ordering: .relaxed)
    }
}

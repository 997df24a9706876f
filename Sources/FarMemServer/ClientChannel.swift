import FarMemProtocol
import FarMemSystem
import Logging

/// What an event loop lends the connection it is serving: a frame's worth of
/// room to receive into and to build a reply in, shared by all the loop's
/// connections (a connection whose frames arrive whole and whose replies
/// leave whole costs no buffer of its own), and the pool of buffers for
/// frames that cannot be finished at once.
final class LoopBuffers {
    let input: UnsafeMutableRawPointer
    let reply: UnsafeMutableRawPointer
    let header = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
    let pool: FrameBufferPool
    private static let length = FrameBufferPool.bufferLength

    init(pool: FrameBufferPool) {
        self.pool = pool
        func map() -> UnsafeMutableRawPointer {
            guard let address = try? MemoryMapping.anonymous(length: Self.length, noReserve: true) else {
                fatalError("farmemd: cannot map a \(Self.length)-byte event loop buffer")
            }
            try? MemoryMapping.advise(address, length: Self.length, .noHugePage)
            return UnsafeMutableRawPointer(bitPattern: address)!
        }
        input = map()
        reply = map()
    }

    deinit {
        MemoryMapping.unmap(UInt(bitPattern: input), length: Self.length)
        MemoryMapping.unmap(UInt(bitPattern: reply), length: Self.length)
        header.deallocate()
    }
}

/// One client connection as its event loop sees it: a non-blocking socket,
/// the bytes of a request not yet whole, the part of a reply the peer has not
/// taken yet, and the clock of each. Requests are answered in arrival order;
/// while a reply is waiting to go out, no further request is read (the peer's
/// own sending blocks: back-pressure instead of buffering without bound).
final class ClientChannel {
    let socket: TCPSocket
    let handler: RequestHandler
    private let acceptedAt: UInt64

    /// Received bytes not yet answered, in a pool buffer held only meanwhile:
    /// a frame still arriving, or whole frames read in one go while a reply
    /// was stuck. Live range `inputStart..<inputEnd`.
    private var input: UnsafeMutableRawPointer?
    private var inputStart = 0, inputEnd = 0
    /// A reply the socket did not take: `outputStart..<outputEnd`.
    private var output: UnsafeMutableRawPointer?
    private var outputStart = 0, outputEnd = 0
    /// The reply being sent ends the connection (an error such as a wrong key).
    private var closesWhenSent = false
    /// Waiting for a pool buffer to finish a frame that has not arrived whole.
    private(set) var parked = false

    /// Since when the frame at the front of `input` has been arriving, and
    /// since when a reply has been stuck (0: none). Each must be done within
    /// the frame time-out from its start, however slowly it moves: a peer
    /// trickling a byte at a time does not keep a pool buffer for long.
    private var inputSince: UInt64 = 0
    private var outputSince: UInt64 = 0

    /// Before HELLO a frame may be at most this long (HELLO itself is a few
    /// hundred bytes): an unauthenticated peer does not get a frame buffer's worth.
    static let preHelloFrameLimit = FrameHeader.size + 4096

    enum Outcome { case open, close }

    /// What the loop must watch the socket for (`parked`: only new data or the peer leaving).
    enum Interest { case readable, writable, parked }
    var interest: Interest {
        if parked { return .parked }
        return outputEnd > outputStart ? .writable : .readable
    }

    init(socket: TCPSocket, handler: RequestHandler, now: UInt64) {
        self.socket = socket
        self.handler = handler
        acceptedAt = now
    }

    private var buffered: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: input.map { $0 + inputStart }, count: inputEnd - inputStart)
    }

    // MARK: Events

    /// The socket has data (or an error, or the peer's end).
    func readable(_ buffers: LoopBuffers, now: UInt64) -> Outcome {
        if interest != .readable { return .open }
        defer { noteWaiting(now) }
        if inputEnd > inputStart { return continueBuffered(buffers, now: now) }
        // With every buffer taken, only frames that are here whole are read.
        if buffers.pool.exhausted { return readWholeFramesOnly(buffers, now: now) }
        // Nothing held: receive as much as a frame into the loop's buffer, and
        // answer what is whole there without copying it.
        let received = socket.receiveSome(into: buffers.input, count: FrameBufferPool.bufferLength)
        switch received {
        case .moved(let n):
            let bytes = UnsafeRawBufferPointer(start: buffers.input, count: n)
            let (consumed, outcome) = answer(bytes, buffers)
            if outcome == .close { return .close }
            if consumed < n {
                // The rest waits in a buffer of the pool (over its limit if it
                // just ran out: these bytes are read already).
                let kept = buffers.pool.take(overLimit: true)!
                kept.copyMemory(from: buffers.input + consumed, byteCount: n - consumed)
                input = kept
                inputStart = 0
                inputEnd = n - consumed
            }
            noteWaiting(now)
            return .open
        case .wouldBlock:
            return .open
        case .closed, .failed:
            return over(received)
        }
    }

    /// No buffer to spare: answer the frames that have arrived whole and take
    /// only their bytes; a frame still arriving stays in the kernel, and the
    /// connection waits (`parked`) for a buffer or for the rest of its frame.
    private func readWholeFramesOnly(_ buffers: LoopBuffers, now: UInt64) -> Outcome {
        // From the header and the bytes queued, whether a frame is whole,
        // before copying any of it.
        let peeked = socket.receiveSome(into: buffers.input, count: FrameHeader.size, peek: true)
        switch peeked {
        case .moved(let n):
            let header = UnsafeRawBufferPointer(start: buffers.input, count: n)
            if n < FrameHeader.size { return waitForBuffer() }
            if handler.session != nil, case .needs(let length) = FrameSplitter.split(header), socket.queuedBytes() < length {
                return waitForBuffer()
            }
        case .wouldBlock:
            return waitForBuffer()   // nothing new: keep its place in the line
        case .closed, .failed:
            return over(peeked)
        }
        let whole = socket.receiveSome(into: buffers.input, count: FrameBufferPool.bufferLength, peek: true)
        switch whole {
        case .moved(let n):
            let (consumed, outcome) = answer(UnsafeRawBufferPointer(start: buffers.input, count: n), buffers)
            if consumed > 0 { socket.discard(consumed, scratch: buffers.input) }
            if outcome == .close { return .close }
            noteWaiting(now)
            if consumed == 0 && interest == .readable && !closesWhenSent { return waitForBuffer() }
            return .open
        case .wouldBlock:
            return .open
        case .closed, .failed:
            return over(whole)
        }
    }

    /// The peer closed or the socket failed: the connection is over.
    private func over(_ transfer: TCPSocket.Transfer) -> Outcome {
        if case .failed(let error) = transfer { handler.logger.debug("connection failed: \(error)") }
        return .close
    }

    private func waitForBuffer() -> Outcome {
        parked = true
        return .open
    }

    /// Parked, and the socket has news: more of the frame (answer it if it
    /// is whole now) or the peer leaving (then it can never be finished).
    func parkedEvent(_ buffers: LoopBuffers, now: UInt64, peerLeft: Bool) -> Outcome {
        parked = false
        defer { noteWaiting(now) }
        if readWholeFramesOnly(buffers, now: now) == .close { return .close }
        return parked && peerLeft ? .close : .open
    }

    /// A buffer came back: read again (the loop watches the socket again).
    func unpark() { parked = false }

    /// The socket takes data again: send the rest of the stuck reply, then
    /// answer what was read meanwhile.
    func writable(_ buffers: LoopBuffers, now: UInt64) -> Outcome {
        guard let output, outputEnd > outputStart else { return .open }
        defer { noteWaiting(now) }
        let pending = UnsafeRawBufferPointer(start: output + outputStart, count: outputEnd - outputStart)
        switch socket.sendSome(pending, UnsafeRawBufferPointer(start: nil, count: 0)) {
        case .moved(let n):
            outputStart += n
            guard outputStart == outputEnd else { return .open }
            outputStart = 0
            outputEnd = 0
            buffers.pool.give(output, now: now)
            self.output = nil
            if closesWhenSent { return .close }
            let outcome = inputEnd > inputStart ? answerBuffered(buffers, now: now) : .open
            noteWaiting(now)
            return outcome
        case .wouldBlock:
            return .open
        case .closed, .failed:
            return .close
        }
    }

    /// The loop's periodic check: a reply not taken or a frame not finished
    /// within `timeout` of its start, or a peer that has not said HELLO.
    func check(now: UInt64, timeoutNanoseconds: UInt64, timeoutSeconds: Double, _ buffers: LoopBuffers) -> Outcome {
        if outputSince != 0 && now - outputSince > timeoutNanoseconds {
            handler.logger.warning("closing connection: the peer did not take a reply within \(timeoutSeconds) s")
            return .close
        }
        if inputSince != 0 && now - inputSince > timeoutNanoseconds {
            let error: ProtocolError
            if case .needs(let length) = FrameSplitter.split(buffered), length > FrameHeader.size {
                error = ProtocolError(.malformedFrame, "truncated frame: a payload of \(length - FrameHeader.size) bytes did not arrive within \(timeoutSeconds) s")
            } else {
                error = ProtocolError(.malformedFrame, "truncated frame header: the rest did not arrive within \(timeoutSeconds) s")
            }
            handler.logger.warning("closing connection: \(error)")
            refuse(error, requestID: requestIDOfBufferedFrame(), buffers)
            return .close
        }
        if handler.session == nil && now - acceptedAt > timeoutNanoseconds {
            refuse(ProtocolError(.helloRequired, "no HELLO within \(timeoutSeconds) s"), requestID: 0, buffers)
            return .close
        }
        return .open
    }

    /// The connection is over: its buffers go back to the pool, and its
    /// session loses a connection (the last one frees it).
    func close(_ buffers: LoopBuffers, now: UInt64) {
        if let input { buffers.pool.give(input, now: now) }
        if let output { buffers.pool.give(output, now: now) }
        input = nil
        output = nil
        handler.close()
        socket.close()
    }

    // MARK: Requests

    /// Answers what is whole in the connection's own buffer, then receives
    /// exactly what the frame under way still lacks, straight into it.
    private func continueBuffered(_ buffers: LoopBuffers, now: UInt64) -> Outcome {
        if answerBuffered(buffers, now: now) == .close { return .close }
        // Two rounds: the header's rest, then (now that its length is known) the payload.
        for _ in 0..<2 where inputEnd > inputStart && interest == .readable {
            guard let base = input, case .needs(let length) = FrameSplitter.split(buffered) else { break }
            if inputStart + length > FrameBufferPool.bufferLength {
                // Move the frame to the front so that it fits whole.
                base.copyMemory(from: base + inputStart, byteCount: inputEnd - inputStart)
                inputEnd -= inputStart
                inputStart = 0
            }
            let missing = length - (inputEnd - inputStart)
            let received = socket.receiveSome(into: base + inputEnd, count: missing)
            switch received {
            case .moved(let n):
                inputEnd += n
                if n == missing, answerBuffered(buffers, now: now) == .close { return .close }
                if n < missing { return .open }
            case .wouldBlock:
                return .open
            case .closed:
                handler.logger.info("connection closed by the peer mid-frame")
                return .close
            case .failed:
                return over(received)
            }
        }
        noteWaiting(now)
        return .open
    }

    private func answerBuffered(_ buffers: LoopBuffers, now: UInt64) -> Outcome {
        let (consumed, outcome) = answer(buffered, buffers)
        if consumed > 0 { inputSince = 0 }   // the next frame's clock starts now
        inputStart += consumed
        if inputStart == inputEnd, let input {
            buffers.pool.give(input, now: now)
            self.input = nil
            inputStart = 0
            inputEnd = 0
        }
        return outcome
    }

    /// Answers each whole frame at the front of `bytes`, in order, until the
    /// bytes run out, a reply gets stuck or the connection must close.
    /// Returns how many bytes were answered.
    private func answer(_ bytes: UnsafeRawBufferPointer, _ buffers: LoopBuffers) -> (Int, Outcome) {
        var offset = 0
        while offset < bytes.count && interest == .readable && !closesWhenSent {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            let split = FrameSplitter.split(rest)
            if handler.session == nil {
                switch split {
                case .needs(let length) where length > Self.preHelloFrameLimit, .complete(_, let length) where length > Self.preHelloFrameLimit:
                    let error = ProtocolError(.helloRequired, "a frame of \(length) bytes before HELLO: the first request must be HELLO")
                    handler.logger.warning("closing connection: \(error)")
                    refuse(error, requestID: requestIDOfFrame(at: rest), buffers)
                    return (offset, .close)
                default:
                    break
                }
            }
            switch split {
            case .needs:
                return (offset, .open)
            case .invalid(let requestID, let error):
                handler.logger.warning("closing connection: \(error)")
                refuse(error, requestID: requestID, buffers)
                return (offset, .close)
            case .complete(let header, let length):
                let body = UnsafeRawBufferPointer(rebasing: rest[FrameHeader.size..<length])
                let reply = handler.respond(to: header, body: body, replyBuffer: buffers.reply)
                offset += length
                guard send(reply, requestID: header.requestID, buffers) else { return (offset, .close) }
                if reply.closes {
                    if interest == .readable { return (offset, .close) }
                    closesWhenSent = true
                }
            }
        }
        return (offset, .open)
    }

    /// Sends a reply now, keeping what the socket does not take for `writable`.
    /// False: the peer is gone.
    private func send(_ reply: RequestHandler.Reply, requestID: UInt32, _ buffers: LoopBuffers) -> Bool {
        FrameHeader(opcode: reply.opcode, requestID: requestID, payloadLength: UInt32(reply.length), status: reply.status)
            .encode(into: buffers.header)
        handler.countSent(FrameHeader.size + reply.length)
        let header = UnsafeRawBufferPointer(start: buffers.header, count: FrameHeader.size)
        let body = UnsafeRawBufferPointer(start: reply.length > 0 ? buffers.reply : nil, count: reply.length)
        var sent = 0
        switch socket.sendSome(header, body) {
        case .moved(let n): sent = n
        case .wouldBlock: sent = 0
        case .closed, .failed: return false
        }
        let total = FrameHeader.size + reply.length
        guard sent < total else { return true }
        // Keep the rest (the reply is built: over the pool's limit if need be).
        let base = buffers.pool.take(overLimit: true)!
        var kept = 0
        if sent < FrameHeader.size {
            base.copyMemory(from: buffers.header + sent, byteCount: FrameHeader.size - sent)
            kept = FrameHeader.size - sent
        }
        let bodySent = max(sent - FrameHeader.size, 0)
        if reply.length > bodySent {
            (base + kept).copyMemory(from: buffers.reply + bodySent, byteCount: reply.length - bodySent)
            kept += reply.length - bodySent
        }
        output = base
        outputStart = 0
        outputEnd = kept
        return true
    }

    /// Best effort: an error reply on a connection about to close.
    private func refuse(_ error: ProtocolError, requestID: UInt32, _ buffers: LoopBuffers) {
        guard interest == .readable else { return }
        let reply = handler.refusal(error, opcode: 0x80, replyBuffer: buffers.reply)
        _ = send(reply, requestID: requestID, buffers)
    }

    private func requestIDOfBufferedFrame() -> UInt32 { requestIDOfFrame(at: buffered) }

    private func requestIDOfFrame(at bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard bytes.count >= 8 else { return 0 }
        return UInt32(littleEndian: bytes.baseAddress!.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
    }

    /// Starts the clock of a frame that began arriving or a reply that got
    /// stuck; stops it once nothing waits.
    private func noteWaiting(_ now: UInt64) {
        if inputEnd == inputStart { inputSince = 0 } else if inputSince == 0 { inputSince = now }
        if outputEnd == outputStart { outputSince = 0 } else if outputSince == 0 { outputSince = now }
    }
}

import Synchronization

/// `GET /metrics` over HTTP/1.1 for Prometheus, on its own listener and
/// thread: farmemd's `--metrics-listen` and the library's
/// `FarMemoryConfiguration.metricsListen` serve what their `render` returns
/// (Prometheus text format 0.0.4), read when scraped. One scrape at a time;
/// a request must arrive whole within 2 s (a deadline for the whole request,
/// not per read) and fit in 8 KiB; every answer closes the connection.
/// `stop` shuts down a scrape in progress too, so a slow client never holds
/// up an exit.
public final class MetricsEndpoint: Sendable {
    private let listener: TCPSocket
    private let render: @Sendable () -> String
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<PosixThread?>(nil)
    /// The client being served, so `stop` can cut it off.
    private let current = Mutex<TCPSocket?>(nil)
    public let port: UInt16

    public init(listen: TCPSocket.Endpoint, render: @escaping @Sendable () -> String) throws {
        listener = try TCPSocket.listen(on: listen, backlog: 16)
        port = listener.localPort
        self.render = render
    }

    public func start() {
        let spawned = PosixThread.spawn(name: "farmem-metrics") { [self] in
            while !stopping.load(ordering: .relaxed) {
                guard let client = try? listener.accept() else {
                    if !stopping.load(ordering: .relaxed) { sleepSeconds(0.05) }   // EMFILE and the like: no busy loop
                    continue
                }
                current.withLock { $0 = client }
                if !stopping.load(ordering: .relaxed) { serve(client) }
                current.withLock { $0 = nil }
                client.close()
            }
        }
        thread.withLock { $0 = spawned }
    }

    public func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        listener.shutdown()
        listener.close()
        current.withLock { $0?.shutdown() }
        thread.withLock { $0 }?.join()
    }

    private func serve(_ client: TCPSocket) {
        let deadline = monotonicNanoseconds() + 2_000_000_000
        var request: [UInt8] = []
        var byte: UInt8 = 0
        // The request line and headers, up to the blank line, within the deadline.
        while request.count < 8192 {
            let left = Int64(bitPattern: deadline &- monotonicNanoseconds())
            guard left > 0 else { return }
            try? client.setTimeouts(seconds: Double(left) / 1e9)
            do { try client.readExactly(into: &byte, count: 1) } catch { return }
            request.append(byte)
            if request.count >= 4, request.suffix(4).elementsEqual([13, 10, 13, 10]) { break }
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self).split(separator: " ")
        let (status, body): (String, String)
        if line.count < 2 || request.count >= 8192 {
            (status, body) = ("400 Bad Request", "bad request\n")
        } else if line[0] != "GET" && line[0] != "HEAD" {
            (status, body) = ("405 Method Not Allowed", "only GET /metrics\n")
        } else if line[1] != "/metrics" {
            (status, body) = ("404 Not Found", "only /metrics is here\n")
        } else {
            (status, body) = ("200 OK", render())
        }
        let content = Array(body.utf8)
        let head = Array(("HTTP/1.1 \(status)\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + "Content-Length: \(content.count)\r\nConnection: close\r\n\r\n").utf8)
        let reply = line.first == "HEAD" ? head : head + content
        try? client.setTimeouts(seconds: 2)
        reply.withUnsafeBytes { raw in _ = try? client.writeAll(raw.baseAddress!, count: raw.count) }   // a scraper that left: nothing to do
    }
}

import ArgumentParser
import CFarMemSys
import FarMemProtocol
import FarMemServer
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Logging
import Synchronization

/// `farmem demo`: the main job end to end. An embedded memory server, a region
/// several times the local budget, a verifiable pattern written and read back
/// through it by several threads, and a report next to a plain C userfaultfd
/// round trip measured in the same run.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Page a region larger than the local budget through a memory server and verify every byte.")

    @Option(help: "Local memory budget.") var budget = "32MiB"
    @Option(help: "Region size (default: 4x the budget).") var regionSize: String?
    @Option(help: "Application threads touching the region.") var threads = 2
    @Option(help: "Use these servers instead of embedded ones (HOST:PORT[,HOST:PORT...]; two or more keep two copies of every page).") var server: String?
    @Option(help: "Embedded servers to start (two or more: a cluster with two copies of every page).") var servers = 1
    @Option(help: "Copies of every page with several servers (default 2).") var replicas: Int?
    @Flag(help: "With --servers 2 or more: stop one embedded server as the read phase starts, then show the failover and the repair.")
    var killServer = false
    @Option(help: "Random page reads in the last phase.") var randomReads = 20000
    @Option(help: "Page transport: tcp, rdma or auto.") var transport = "auto"
    @Option(help: "Address the embedded server listens on (an RDMA device's address for RDMA).") var listenHost = "127.0.0.1"
    @Flag(help: "Skip the plain userfaultfd baseline.") var noBaseline = false
    @Option(help: "Most pages to prefetch on a sequential or strided trend (0: off).") var prefetch = 64
    @Option(help: "Fault-handler threads (the region is split among them).") var handlerThreads = 1
    @Option(help: "Microseconds the fault handler spins for the next fault before it blocks (0: block at once).") var spin = 0
    @Option(help: "Spin while faults and replies come quickly: on or off (default: the library's).") var adaptiveSpinning: String?
    @Option(help: "What backs the region locally: anonymous, memfd or hugetlb (2 MiB pages: reserve them with sysctl vm.nr_hugepages; a budget of at least 8 MiB per handler thread).") var regionKind = "anonymous"

    func run() throws {
        guard let budgetBytes = parseByteSize(budget), budgetBytes >= 256 << 10 else {
            throw ValidationError("--budget must be at least 256KiB")
        }
        let regionBytes = try regionSize.map { text -> Int in
            guard let v = parseByteSize(text), v > 0 else { throw ValidationError("--region-size must be a size such as 128MiB") }
            return v
        } ?? budgetBytes * 4
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64") }
        guard let kind = RegionKind(rawValue: regionKind) else {
            throw ValidationError("--region-kind must be \(RegionKind.allCases.map(\.rawValue).joined(separator: " or "))")
        }
        guard let pageTransport = FarMemoryConfiguration.Transport(rawValue: transport) else {
            throw ValidationError("--transport must be tcp, rdma or auto")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }

        var embedded: [MemoryServer] = []
        let endpoints: [TCPSocket.Endpoint]
        if let server {
            switch FarMemoryConfiguration.servers(parsing: server) {
            case .success(let list): endpoints = list
            case .failure(let error): throw ValidationError("--server: \(error)")
            }
        } else {
            guard (1...8).contains(servers) else { throw ValidationError("--servers takes 1 to 8") }
            for _ in 0..<servers {
                let started = try MemoryServer(configuration: ServerConfiguration(
                    listen: TCPSocket.Endpoint(host: listenHost, port: 0), capacityBytes: regionBytes * 2,
                    transport: pageTransport == .tcp ? .tcp : .auto))
                started.start()
                embedded.append(started)
            }
            endpoints = embedded.map { TCPSocket.Endpoint(host: listenHost, port: $0.port) }
        }
        defer { embedded.forEach { $0.stop() } }
        if killServer, embedded.count < 2 { throw ValidationError("--kill-server needs --servers 2 or more (embedded servers)") }
        let endpoint = endpoints[0]

        var configuration = FarMemoryConfiguration(servers: endpoints, replicas: replicas, budgetBytes: budgetBytes,
                                                   transport: pageTransport, prefetchPages: prefetch,
                                                   handlerSpinMicroseconds: spin, handlerThreads: handlerThreads)
        switch adaptiveSpinning {
        case nil: break
        case "on": configuration.adaptiveSpinning = true
        case "off": configuration.adaptiveSpinning = false
        default: throw ValidationError("--adaptive-spinning is on or off")
        }
        let memory = try FarMemory(configuration: configuration)
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes, kind: kind)
        let pages = region.pageCount
        print("farmem demo: \(formatByteSize(region.length)) \(kind) region, \(formatByteSize(budgetBytes)) local budget "
              + "(\(String(format1: Double(region.length) / Double(budgetBytes)))x), \(threads) threads, "
              + (endpoints.count == 1 ? "server \(embedded.isEmpty ? endpoint.description : "embedded at \(endpoint)"), "
                 : "\(endpoints.count) \(embedded.isEmpty ? "" : "embedded ")servers with \(memory.configuration.replicas) copies of every page, ")
              + "transport \(memory.usesRDMA ? "RDMA" : "TCP")")

        let pattern = PagePattern(seed: 0xFA12_3E40)
        let base = UInt(bitPattern: region.baseAddress!)

        // Phase 1: every page written once (each first store is a missing fault; zero-fill).
        let write = runPhase(threads: threads, pages: pages) { page in
            (pattern.write(page: page, at: UnsafeMutableRawPointer(bitPattern: base + UInt(page) * 4096)!), true)
        }
        let afterWrite = memory.statistics
        memory.resetLatencyHistogram()
        // Phase 2: every page read back and verified (most come from the server).
        // With --kill-server, one server goes away as it starts, faults in flight.
        let victim = killServer ? embedded[1] : nil
        let killer = victim.map { server in PosixThread.spawn(name: "demo-kill") { server.stop() } }
        // Watches the repair: from the server marked down to every extent with its copies again.
        let repairWindow = Mutex<(down: Double?, done: Double?)>((nil, nil))
        let watcher = victim.map { _ in
            PosixThread.spawn(name: "demo-watch") {
                let deadline = monotonicSeconds() + 60
                while monotonicSeconds() < deadline {
                    let now = monotonicSeconds(), stats = memory.statistics
                    let finished = repairWindow.withLock { window -> Bool in
                        if window.down == nil, stats.serversDown > 0 { window.down = now }
                        if window.down != nil, stats.underReplicatedExtents == 0 { window.done = now }
                        return window.done != nil
                    }
                    if finished { return }
                    sleepSeconds(0.01)
                }
            }
        }
        let read = runPhase(threads: threads, pages: pages) { page in
            pattern.verify(page: page, at: UnsafeRawPointer(bitPattern: base + UInt(page) * 4096)!)
        }
        killer?.join()
        let readService = memory.statistics
        // Phase 3: random pages, verified (a mix of resident and remote).
        var generator = SplitMix64(seed: 7)
        let randomPages = (0..<randomReads).map { _ in Int(generator.next() % UInt64(pages)) }
        let random = runPhase(threads: threads, pages: randomPages.count) { i in
            pattern.verify(page: randomPages[i], at: UnsafeRawPointer(bitPattern: base + UInt(randomPages[i]) * 4096)!)
        }
        // Phase 4, shared kinds: fork. The region stays mapped in a child, which
        // reads a far page through its own userfaultfd and exits (the child
        // runs C only: this process has threads).
        var forkLine: String?
        var forkFailures = 0
        if kind != .anonymous {
            if memory.followsForks {
                var samples = LatencySamples()
                var died = 0
                for _ in 0..<10 {
                    let page = Int(generator.next() % UInt64(pages))
                    let started = fm_now_ns()
                    if fm_fork_and_read(UInt64(base) + UInt64(page) * 4096) != 0 { died += 1 }
                    samples.add(fm_now_ns() - started)
                }
                forkLine = "fork: a child reads a random far page and exits: p50 \(microseconds(samples.percentile(50))) "
                    + "from fork to reaped (10 forks)" + (died > 0 ? "; \(died) CHILDREN DIED reading it" : "")
                forkFailures = died
            } else {
                forkLine = "fork: not followed here (UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE): a child does not inherit the region"
            }
        }
        var stats = memory.statistics
        var clusterLine: String?
        if let victim {
            // The repair restores the second copies; give it at most 30 s.
            let started = monotonicSeconds()
            while memory.statistics.underReplicatedExtents > 0, monotonicSeconds() - started < 30 { sleepSeconds(0.05) }
            watcher?.join()
            stats = memory.statistics
            clusterLine = ("cluster: server \(TCPSocket.Endpoint(host: listenHost, port: victim.port)) stopped as the read phase started; "
                  + "longest read-phase touch \(microseconds(read.latency.percentile(100))) (failover time-out "
                  + "\(memory.configuration.failoverTimeoutSeconds) s); servers down \(stats.serversDown); "
                  + "repaired \(stats.extentsRepaired) extents (\(stats.pagesRepaired) pages) by \(String(format1: monotonicSeconds() - started)) s "
                  + "after the random phase; under-replicated extents now \(stats.underReplicatedExtents)")
            if case (let down?, let done?) = repairWindow.withLock({ $0 }), done > down {
                clusterLine! += "\nrepair: \(stats.pagesRepaired) pages copied in \(String(format1: done - down)) s from the server marked down "
                    + "to every extent with its copies again: \(Int(Double(stats.pagesRepaired) / (done - down))) pages/s "
                    + "(paced: 2 ms between extents, faults first)"
            }
        }

        // Baseline: the same sequential first-touch pass against a plain C
        // userfaultfd handler serving local memory (no network), same machine, same run.
        let baselinePages = noBaseline ? 0 : min(pages, 16384)
        var baselineLatency = [UInt64](repeating: 0, count: baselinePages)
        var baselineTotal: UInt64 = 0
        let baselineResult = baselinePages == 0 ? -1 : fm_baseline_uffd_roundtrip(UInt64(baselinePages), &baselineLatency, &baselineTotal)
        var baseline = LatencySamples()
        for v in baselineLatency { baseline.add(v) }

        let failures = write.failures + read.failures + random.failures
        print("")
        print("phase            pages   time      pages/s    MB/s    touch p50   touch p99")
        for (name, phase) in [("write (fill)", write), ("read (verify)", read), ("random (verify)", random)] {
            print(row(name, pages: phase.pages, seconds: phase.seconds, samples: phase.latency))
        }
        if baselineResult == 0 {
            print(row("plain C uffd", pages: baselinePages, seconds: Double(baselineTotal) / 1e9, samples: baseline))
        } else if baselinePages > 0 {
            print("plain C uffd     not run: \(Errno(negated: baselineResult))")
        }
        print("")
        print("pager: faults \(stats.faults), fetches \(stats.fetches) (prefetched \(stats.prefetched)), zero-fills \(stats.zeroFills), "
              + "write-protect faults \(stats.writeProtectFaults), duplicates \(stats.duplicateFaults)")
        print("       evictions \(stats.evictions) (clean drops \(stats.cleanDrops)), write-backs \(stats.writeBacks), "
              + "bytes in \(formatByteSize(Int(stats.bytesIn))), bytes out \(formatByteSize(Int(stats.bytesOut)))")
        print("       resident \(stats.residentPages) pages, staged \(stats.stagedPages), budget overshoot \(stats.budgetOvershoot) pages, "
              + "EAGAIN retries \(stats.eagainRetries), network retries \(stats.retries)")
        print("       probation hits \(stats.probationHits) (left untouched \(stats.probationExpired)), "
              + "faults that waited for eviction \(stats.budgetWaits)")
        print("       RDMA pages in \(stats.rdmaPagesIn), out \(stats.rdmaPagesOut)")
        print("       handler service time per fetched fault: p50 \(microseconds(readService.serviceP50Nanoseconds)), "
              + "p99 \(microseconds(readService.serviceP99Nanoseconds)) (write phase: zero-fill p50 \(microseconds(afterWrite.serviceP50Nanoseconds)))")
        if baselineResult == 0 {
            // The random phase: most of its touches fault (the sequential ones are mostly prefetched).
            let ratio = Double(random.latency.percentile(50)) / Double(max(1, baseline.percentile(50)))
            print("       random-read touch p50 is \(String(format1: ratio))x the plain uffd round trip (network fetch included)")
        }
        if let clusterLine { print(clusterLine) }
        if let forkLine { print(forkLine) }
        if let serverStats = try? memory.serverStatistics() {
            print("server: \(serverStats.storedPages) pages stored, \(serverStats.pagesWritten) written, \(serverStats.pagesRead) read")
        }
        print("")
        if failures == 0 {
            print("data verified: \(write.pages + read.pages + random.pages) page checks, every byte as written")
        } else {
            print("DATA MISMATCH: \(failures) pages differ from what was written")
            throw ExitCode(2)
        }
        if forkFailures > 0 { throw ExitCode(3) }   // a child could not read far memory
        region.close()
    }

    private func row(_ name: String, pages: Int, seconds: Double, samples: LatencySamples) -> String {
        let perSecond = Double(pages) / max(seconds, 1e-9)
        return name.padding(16) + "\(pages)".padding(8) + "\(String(format1: seconds)) s".padding(10)
            + "\(Int(perSecond))".padding(11) + "\(String(format1: perSecond * 4096 / 1e6))".padding(8)
            + microseconds(samples.percentile(50)).padding(12) + microseconds(samples.percentile(99))
    }
}

struct PhaseResult {
    var pages = 0
    var seconds = 0.0
    var failures = 0
    var latency = LatencySamples()
}

/// Runs `touch` over pages 0..<pages split into contiguous stripes, one per thread.
func runPhase(threads: Int, pages: Int, touch: @escaping @Sendable (Int) -> (UInt64, Bool)) -> PhaseResult {
    let results = Mutex<[PhaseResult]>([])
    let start = fm_now_ns()
    let workers = (0..<threads).map { t in
        PosixThread.spawn(name: "demo-\(t)") {
            var local = PhaseResult()
            let lo = pages * t / threads, hi = pages * (t + 1) / threads
            for page in lo..<hi {
                let (latency, ok) = touch(page)
                local.latency.add(latency)
                if !ok { local.failures += 1 }
                local.pages += 1
            }
            results.withLock { $0.append(local) }
        }
    }
    for worker in workers { worker.join() }
    var total = PhaseResult()
    total.seconds = Double(fm_now_ns() - start) / 1e9
    for r in results.withLock({ $0 }) {
        total.pages += r.pages
        total.failures += r.failures
        total.latency.add(contentsOf: r.latency)
    }
    return total
}

extension String {
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}

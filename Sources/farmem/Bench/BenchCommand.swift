import ArgumentParser
import CFarMemSys
import FarMemProtocol
import FarMemServer
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import Logging

/// `farmem bench`: the paging workloads on every kind of memory a user would
/// weigh FarMem against, side by side in one run: all-local memory, a plain
/// userfaultfd handler serving local memory (the floor of any uffd pager),
/// the kernel's swap on zram under the same memory budget, and FarMem over TCP
/// to a local farmemd (with and without prefetching), and over RDMA when a
/// device is present. A benchmark, not a test: it measures and reports.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmark FarMem against local memory, plain userfaultfd and kernel swap.")

    @Flag(help: "Every workload at every budget (25%, 50%, 100%).") var all = false
    @Option(help: "Workloads, comma-separated: sequential,strided,random,zipfian,rwmix,sort (heapsort),introsort (like std::sort),hashtable (64-byte entries, zipfian keys, 90% gets).") var workloads = "sequential,random"
    @Option(help: "Budgets as percentages of the region, comma-separated.") var budgets = "25"
    @Option(help: "Region size for every workload but sort.") var size = "128MiB"
    @Option(help: "Array size for heapsort (sort).") var sortSize = "16MiB"
    @Option(help: "Array size for introsort.") var introsortSize = "256MiB"
    @Option(help: "Zipf skew.") var zipfSkew = 0.99
    @Option(help: "Longest time one run may take before it is stopped and reported as timed out.") var runDeadline = 30.0
    @Option(help: "Where to write the JSON report.") var json = "farmem-bench.json"
    @Option(help: "Address of this host's RDMA device, to also run FarMem over RDMA.") var rdmaAddress: String?
    @Flag(help: "Skip the kernel-swap baseline.") var noSwap = false
    @Option(help: "Kernel-swap devices, comma-separated: zram (compressed local memory), nbd (nbd-server over loopback TCP: network swap; needs the nbd module, as in the rdma-vm guest).") var swapDevices = "zram"
    @Flag(help: "Skip the cluster rows (three farmemd processes, two copies and one).") var noCluster = false
    @Flag(help: "Also run FarMem with each technique off in turn (prefetching, write prediction, the probation area, refault second chances, adaptive spinning), every workload: what each contributes on its own.") var ablations = false
    @Option(help: "Microseconds the fault handler polls for the next fault before it sleeps.") var handlerSpin = 0
    @Flag(inversion: .prefixedNo, help: "FarMem spins while faults and replies come quickly (adaptiveSpinning, the library's default).") var adaptiveSpinning = true
    @Option(help: "With --adaptive-spinning: the longest spin, in microseconds.") var spinLimit = FarMemoryConfiguration(servers: [], budgetBytes: 0).adaptiveSpinLimitMicroseconds
    @Option(help: "The share of the budget FarMem keeps as its probation area (0 turns it off).") var probationShare = FarMemoryConfiguration(servers: [], budgetBytes: 0).probationShare
    @Option(help: "Also draw a PNG (throughput per budget, latency percentiles) to this file.") var plot: String?
    @Option(help: "The workload the plot shows (default: zipfian if run, else the first).") var plotWorkload: String?

    func run() throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let kinds = try (all ? BenchWorkload.Kind.allCases.map(\.rawValue) : workloads.split(separator: ",").map(String.init)).map { name in
            guard let kind = BenchWorkload.Kind(rawValue: name) else { throw ValidationError("unknown workload '\(name)'") }
            return kind
        }
        let percents = try (all ? ["25", "50", "100"] : budgets.split(separator: ",").map(String.init)).map { text in
            guard let value = Int(text), (1...100).contains(value) else { throw ValidationError("budgets are percentages 1...100") }
            return value
        }
        guard let regionBytes = parseByteSize(size), regionBytes >= 4 << 20,
              let sortBytes = parseByteSize(sortSize), sortBytes >= 1 << 20,
              let introsortBytes = parseByteSize(introsortSize), introsortBytes >= 1 << 20 else {
            throw ValidationError("--size must be at least 4MiB, --sort-size and --introsort-size at least 1MiB")
        }

        guard (0...0.5).contains(probationShare) else { throw ValidationError("--probation-share is 0...0.5") }
        let bench = BenchRun(regionPages: regionBytes / 4096, sortPages: sortBytes / 4096, introsortPages: introsortBytes / 4096,
                             zipfSkew: zipfSkew, deadline: runDeadline, rdmaAddress: rdmaAddress, ablations: ablations,
                             probationShare: probationShare, handlerSpin: handlerSpin, adaptiveSpinning: adaptiveSpinning, spinLimit: spinLimit)
        defer { bench.stopServer() }   // also when start-up fails half-way
        // Only the workloads asked for count: a 256 MiB introsort needs no room when it does not run.
        let largest = kinds.map { bench.pages(for: $0) * 4096 }.max() ?? regionBytes
        try bench.startServer(capacityBytes: largest * 2 + (64 << 20), cluster: !noCluster)
        let devices = try swapDevices.split(separator: ",").map { name in
            guard let device = KernelSwapSandbox.Device(rawValue: String(name)) else { throw ValidationError("unknown swap device '\(name)'") }
            return device
        }
        var swaps: [KernelSwapSandbox] = []
        for device in noSwap ? [] : devices {
            do { swaps.append(try KernelSwapSandbox(swapBytes: largest * 2, device: device)) } catch {
                FileHandle.standardError.write("kernel-swap baseline on \(device) skipped: \(error)\n".data(using: .utf8)!)
            }
        }
        defer { swaps.forEach { $0.tearDown() } }
        // Ctrl-C or SIGTERM mid-run still removes the swap devices and cgroups.
        let interruptions = [Int32(SIGINT), Int32(SIGTERM)].map { (number: Int32) -> DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [swaps] in
                swaps.forEach { $0.tearDown() }
                bench.stopServer()
                Foundation.exit(130)
            }
            source.resume()
            return source
        }
        defer { interruptions.forEach { $0.cancel() } }

        let started = Date()
        for kind in kinds {
            bench.runWorkload(kind, percents: percents, swaps: swaps)
        }
        let roundTrips = bench.measureRoundTrips()
        let report = BenchReport(rows: bench.rows, tcpRoundTripP50: roundTrips.tcp, uffdRoundTripP50: roundTrips.uffd,
                                 uffdSpinningP50: roundTrips.spin, uffdInThreadP50: roundTrips.sigbus, regionBytes: regionBytes, sortBytes: sortBytes, introsortBytes: introsortBytes, zipfSkew: zipfSkew,
                                 seconds: Date().timeIntervalSince(started), command: CommandLine.arguments.joined(separator: " "))
        print(report.table())
        print(BenchRun.writeTrackingLine())
        try report.writeJSON(to: json)
        print("JSON written to \(json)")
        if let plot {
            let shown = plotWorkload ?? (kinds.contains(.zipfian) ? "zipfian" : kinds[0].rawValue)
            let png = BenchPlot(report: report, workload: shown).render().encode()
            try Data(png).write(to: URL(fileURLWithPath: plot))
            print("plot of \(shown) written to \(plot)")
        }
    }
}

/// One benchmark session: the local farmemd it talks to and the rows so far.
final class BenchRun {
    let regionPages: Int
    let sortPages: Int
    let introsortPages: Int

    /// The region or array size a workload runs over.
    func pages(for kind: BenchWorkload.Kind) -> Int {
        switch kind {
        case .sort: return sortPages
        case .introsort: return introsortPages
        default: return regionPages
        }
    }
    let zipfSkew: Double
    let deadline: Double
    let rdmaAddress: String?
    private(set) var rows: [BenchRow] = []
    /// The first is the single server; all three are the cluster.
    private var servers: [Process] = []
    private var endpoints: [TCPSocket.Endpoint] = []
    private var endpoint: TCPSocket.Endpoint? { endpoints.first }
    private var rdmaServer: MemoryServer?
    private var progress = 0

    /// Rows with each technique off in turn (`--ablations`).
    let ablations: Bool
    let probationShare: Double
    let handlerSpin: Int
    let adaptiveSpinning: Bool
    let spinLimit: Int

    init(regionPages: Int, sortPages: Int, introsortPages: Int, zipfSkew: Double, deadline: Double, rdmaAddress: String?,
         ablations: Bool = false, probationShare: Double = 0, handlerSpin: Int = 0, adaptiveSpinning: Bool = false, spinLimit: Int = 100) {
        self.spinLimit = spinLimit
        self.handlerSpin = handlerSpin
        self.adaptiveSpinning = adaptiveSpinning
        self.ablations = ablations
        self.probationShare = probationShare
        self.introsortPages = introsortPages
        self.regionPages = regionPages
        self.sortPages = sortPages
        self.zipfSkew = zipfSkew
        self.deadline = deadline
        self.rdmaAddress = rdmaAddress
    }

    /// A real farmemd process next to this binary (TCP), two more for the
    /// cluster rows, and an embedded RDMA server if asked.
    func startServer(capacityBytes: Int, cluster: Bool) throws {
        for _ in 0..<(cluster ? 3 : 1) { try spawnServer(capacityBytes: capacityBytes) }
        if let rdmaAddress {
            let embedded = try MemoryServer(configuration: ServerConfiguration(
                listen: TCPSocket.Endpoint(host: rdmaAddress, port: 0), capacityBytes: capacityBytes, transport: .rdma))
            embedded.start()
            rdmaServer = embedded
        }
    }

    private func spawnServer(capacityBytes: Int) throws {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let binary = directory.appendingPathComponent("farmemd").path
        let portFile = NSTemporaryDirectory() + "farmem-bench-\(getpid())-\(servers.count).port"
        unlink(portFile)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--listen", "127.0.0.1:0", "--capacity", "\(capacityBytes)", "--port-file", portFile,
                             "--transport", "tcp", "--log-level", "warning", "--die-with-parent"]
        do { try process.run() } catch { throw ValidationError("cannot start \(binary): \(error)") }
        servers.append(process)
        var started: TCPSocket.Endpoint?
        for _ in 0..<500 where process.isRunning {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), text.hasSuffix("\n"),
               let port = UInt16(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                started = TCPSocket.Endpoint(host: "127.0.0.1", port: port)
                break
            }
            usleep(20_000)
        }
        unlink(portFile)
        guard let started else { throw ValidationError("farmemd did not start") }
        endpoints.append(started)
    }

    func stopServer() {
        for server in servers where server.isRunning { server.terminate() }
        for server in servers { server.waitUntilExit() }
        rdmaServer?.stop()
    }

    private func note(_ text: String) {
        progress += 1
        FileHandle.standardError.write("[\(progress)] \(text)\n".data(using: .utf8)!)
    }

    func runWorkload(_ kind: BenchWorkload.Kind, percents: [Int], swaps: [KernelSwapSandbox]) {
        let pages = pages(for: kind)
        let workload = BenchWorkload(kind: kind, pages: pages, zipfSkew: zipfSkew)
        let sequence = workload.accessSequence()

        // (1) all local memory
        let local = mmap(nil, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        workload.prepare(local)
        let localResult = workload.run(local, sequence: sequence, deadlineSeconds: deadline)
        munmap(local, pages * 4096)
        add(BenchRow(workload: kind, budgetPercent: 100, backend: "local", result: localResult))
        note("\(kind) local: \(String(format: "%.3f", localResult.seconds)) s")

        // (2) the uffd floor: every first touch a fault served from local memory
        var floorSeconds: Double?
        // Not for workloads whose data must be prepared: the floor's pages are zeros.
        if !kind.isSort && kind != .hashtable {
            var err: Int32 = 0
            if let floor = fm_uffd_floor_start(UInt64(pages), &err) {
                var result = workload.run(fm_uffd_floor_base(floor), sequence: sequence, deadlineSeconds: deadline)
                fm_uffd_floor_stop(floor)
                result.verified = true   // zeros by design: nothing to verify
                floorSeconds = result.seconds
                var row = BenchRow(workload: kind, budgetPercent: 0, backend: "uffd-floor", result: result)
                row.note = "first touches served by a plain C uffd handler from local memory; no eviction"
                add(row)
                note("\(kind) uffd-floor: \(String(format: "%.3f", result.seconds)) s")
            } else {
                note("\(kind) uffd-floor skipped: \(Errno(negated: err))")
            }
        }

        let worker = [CommandLine.arguments[0], "bench-worker", "--workload", kind.rawValue, "--pages", "\(pages)"]
        // The worker's own runtime and access list are not part of the budget
        // FarMem gets either; they depend on the workload only, not the budget.
        let swapOverhead = swaps.first.map { (try? $0.measurePeakCharge(worker + ["--measure-overhead"])) ?? (16 << 20) }
        for percent in percents {
            let budgetPages = max(64, pages * percent / 100)
            // (3) kernel swap (zram, NBD) under the same budget
            if let overhead = swapOverhead {
                for swap in swaps {
                    runKernelSwap(swap, worker: worker, kind: kind, percent: percent, budgetPages: budgetPages, overhead: overhead)
                }
            }
            // (4) FarMem over TCP, with and without prefetching; (5) over RDMA
            runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages, backend: "farmem-tcp",
                      endpoint: endpoint!, transport: .tcp, prefetch: 64)
            runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages, backend: "farmem-tcp-noprefetch",
                      endpoint: endpoint!, transport: .tcp, prefetch: 0)
            if kind.isSort || ablations {
                // What installing predicted writes writable saves (sorts write what they read).
                runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages, backend: "farmem-tcp-nowritepredict",
                          endpoint: endpoint!, transport: .tcp, prefetch: 64, predictsWrites: false)
            }
            if ablations {
                // The probation area the other way round from the main rows (an eighth of the budget, or none).
                let probationOn = probationShare == 0
                runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages,
                          backend: probationOn ? "farmem-tcp-probation" : "farmem-tcp-noprobation",
                          endpoint: endpoint!, transport: .tcp, prefetch: 64, probationShare: probationOn ? 0.125 : 0)
                runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages, backend: "farmem-tcp-norecency",
                          endpoint: endpoint!, transport: .tcp, prefetch: 64, keepsRefaultedPages: false)
                runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages, backend: "farmem-tcp-nospin",
                          endpoint: endpoint!, transport: .tcp, prefetch: 64, adaptiveSpinning: false)
            }
            if endpoints.count == 3 {
                // Three servers, two copies of every page (and one, for the ratio).
                for replicas in [2, 1] {
                    runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages,
                              backend: "farmem-cluster-3x\(replicas)", servers: endpoints, replicas: replicas,
                              transport: .tcp, prefetch: 64)
                }
            }
            if let rdmaServer, let rdmaAddress {
                runFarMem(workload, sequence: sequence, percent: percent, budgetPages: budgetPages, backend: "farmem-rdma",
                          endpoint: TCPSocket.Endpoint(host: rdmaAddress, port: rdmaServer.port), transport: .rdma, prefetch: 64)
            }
        }
        // Ratios against this workload's local and floor runs.
        for i in rows.indices where rows[i].workload == kind {
            rows[i].ratioToLocal = rows[i].seconds / max(localResult.seconds, 1e-9)
            if let floorSeconds { rows[i].ratioToFloor = rows[i].seconds / max(floorSeconds, 1e-9) }
        }
    }

    /// Kernel swap on zram under a memory cgroup limited to the budget, plus
    /// what the worker is charged before its region (`overhead`), plus a
    /// margin for the kernel's own charges. A workload whose whole resident
    /// set is hot (a heapsort) leaves memcg reclaim no inactive page to take
    /// at a tight limit: it fails its retries and the OOM killer fires on a
    /// swap-in (seen in dmesg: usage = limit, inactive_anon 0). Such a run is
    /// tried again with the margin doubled, up to 16 MiB, and the row says
    /// which margin it needed: kernel swap then had that much more than
    /// FarMem's budget.
    private func runKernelSwap(_ swap: KernelSwapSandbox, worker: [String], kind: BenchWorkload.Kind, percent: Int,
                               budgetPages: Int, overhead: Int) {
        let workloadPages = pages(for: kind)
        let arguments = worker + ["--skew", "\(zipfSkew)", "--deadline", "\(deadline)"]
        let backend = swap.device == .zram ? "kernel-swap" : "kernel-swap-\(swap.device)"
        var killedAt: [Int] = []
        for margin in [2 << 20, 4 << 20, 8 << 20, 16 << 20] {
            let limit = budgetPages * 4096 + overhead + margin
            do {
                let output = try swap.run(limitBytes: limit, arguments)
                let line = output.split(separator: "\n").last.map(String.init) ?? ""
                let result = try JSONDecoder().decode(BenchWorkload.Result.self, from: Data(line.utf8))
                var row = BenchRow(workload: kind, budgetPercent: percent, backend: backend, result: result)
                row.faults = result.majorFaults   // major faults: swap-ins, several pages each with readahead
                row.note = "\(swap.device == .zram ? "zram swap" : "NBD swap (nbd-server over loopback TCP)"), memory cgroup limit = budget + \(overhead >> 10) KiB the worker is charged before its region + "
                    + "\(margin >> 20) MiB kernel margin; limit \(limit >> 10) KiB"
                    + (killedAt.isEmpty ? "" : "; OOM-killed with margins of \(killedAt.map { "\($0 >> 20) MiB" }.joined(separator: ", ")) first, "
                        + "so it had \(Int((Double(budgetPages * 4096 + margin) / Double(workloadPages * 4096) * 100).rounded()))% of the data's size, not \(percent)%")
                add(row)
                note("\(kind) \(percent)% \(backend): \(String(format: "%.3f", result.seconds)) s"
                     + (killedAt.isEmpty ? "" : " (needed a \(margin >> 20) MiB margin above the budget)"))
                return
            } catch {
                note("\(kind) \(percent)% \(backend) failed (cgroup limit \(limit >> 10) KiB): \(error)")
                // The cgroup's OOM killer (SIGKILL, exit 9): try a wider margin. Anything else is final.
                guard (error as? KernelSwapSandbox.Unavailable)?.exitStatus == 9 else {
                    killedAt.append(margin)
                    break
                }
                killedAt.append(margin)
            }
        }
        var row = BenchRow(workload: kind, budgetPercent: percent, backend: backend, result: .none)
        row.failed = true
        row.note = "OOM-killed (or failed) with margins of \(killedAt.map { "\($0 >> 20) MiB" }.joined(separator: ", ")) above the budget"
        add(row)
    }

    private func runFarMem(_ workload: BenchWorkload, sequence: [Int], percent: Int, budgetPages: Int, backend: String,
                           endpoint: TCPSocket.Endpoint? = nil, servers: [TCPSocket.Endpoint] = [], replicas: Int? = nil,
                           transport: FarMemoryConfiguration.Transport, prefetch: Int, predictsWrites: Bool = true,
                           probationShare: Double? = nil, keepsRefaultedPages: Bool = true, adaptiveSpinning: Bool? = nil) {
        do {
            var configuration = FarMemoryConfiguration(
                servers: endpoint.map { [$0] } ?? servers, replicas: replicas, budgetBytes: budgetPages * 4096,
                transport: transport, prefetchPages: prefetch)
            configuration.predictsWrites = predictsWrites
            configuration.probationShare = probationShare ?? self.probationShare
            configuration.keepsRefaultedPages = keepsRefaultedPages
            configuration.handlerSpinMicroseconds = handlerSpin
            configuration.adaptiveSpinning = adaptiveSpinning ?? self.adaptiveSpinning
            configuration.adaptiveSpinLimitMicroseconds = spinLimit
            let memory = try FarMemory(configuration: configuration)
            defer { memory.close() }
            let region = try memory.allocate(bytes: workload.pages * 4096)
            workload.prepare(region.baseAddress!)
            let before = memory.statistics
            let result = workload.run(region.baseAddress!, sequence: sequence, deadlineSeconds: deadline)
            let after = memory.statistics
            var row = BenchRow(workload: workload.kind, budgetPercent: percent, backend: backend, result: result)
            row.faults = after.faults - before.faults
            row.remoteFaults = after.fetches - before.fetches
            row.budgetWaits = after.budgetWaits - before.budgetWaits
            row.writeProtectFaults = after.writeProtectFaults - before.writeProtectFaults
            row.prefetched = after.prefetched - before.prefetched
            row.evictions = after.evictions - before.evictions
            row.writeBacks = after.writeBacks - before.writeBacks
            row.wireBytes = (after.bytesIn - before.bytesIn) + (after.bytesOut - before.bytesOut)
            row.probationHits = after.probationHits - before.probationHits
            row.probationExpired = after.probationExpired - before.probationExpired
            add(row)
            region.close()
            note("\(workload.kind) \(percent)% \(backend): \(String(format: "%.3f", result.seconds)) s, \(row.faults ?? 0) faults")
        } catch {
            note("\(workload.kind) \(percent)% \(backend) failed: \(error)")
        }
    }

    private func add(_ row: BenchRow) { rows.append(row) }

    /// The two costs a fault over TCP is made of, measured alone: a plain
    /// userfaultfd round trip served from local memory, and a raw 4 KiB
    /// request/response over loopback TCP (a fresh server thread, no FarMem code).
    /// What tracking a page's first write costs, the two ways a pager could
    /// (see write_tracking_baseline.c), measured in this run.
    static func writeTrackingLine() -> String {
        var cost = fm_write_tracking_t()
        let pages: UInt64 = 4096
        let err = fm_baseline_write_tracking(pages, &cost)
        guard err == 0 else { return "write tracking: not measured (\(Errno(negated: err)))" }
        func us(_ ns: UInt64) -> String { String(format: "%.1f us", Double(ns) / 1000) }
        return "write tracking (\(pages) populated pages, each protected, one write each): a write-protect fault served by a "
            + "handler thread \(us(cost.sync_fault_ns)) (p50); under WP_ASYNC \(us(cost.async_write_ns)) (p50), then one "
            + "PAGEMAP_SCAN finding and re-protecting them \(us(cost.scan_ns)) (\(String(format: "%.2f", Double(cost.scan_ns) / Double(pages) / 1000)) us "
            + "a page; it found \(cost.scan_written_pages))"
    }

    func measureRoundTrips() -> (uffd: UInt64, spin: UInt64, sigbus: UInt64, tcp: UInt64) {
        var latencies = [UInt64](repeating: 0, count: 4096)
        var total: UInt64 = 0
        let uffd = fm_baseline_uffd_roundtrip(4096, &latencies, &total) == 0 ? median(latencies) : 0
        let spin = fm_baseline_uffd_placement(4096, 1, &latencies, &total) == 0 ? median(latencies) : 0
        let sigbus = fm_baseline_uffd_placement(4096, 2, &latencies, &total) == 0 ? median(latencies) : 0
        var tcp: UInt64 = 0
        if let listener = try? TCPSocket.listen(on: TCPSocket.Endpoint(host: "127.0.0.1", port: 0)) {
            let port = listener.localPort
            let echo = PosixThread.spawn(name: "bench-tcp") {
                guard let peer = try? listener.accept() else { return }
                let request = UnsafeMutableRawPointer.allocate(byteCount: 32, alignment: 8)
                let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
                page.initializeMemory(as: UInt8.self, repeating: 7, count: 4096)
                while (try? peer.readExactly(into: request, count: 32)) != nil {
                    if (try? peer.writeAll(page, count: 4096)) == nil { break }
                }
                peer.close()
                request.deallocate()
                page.deallocate()
            }
            if let client = try? TCPSocket.connect(to: TCPSocket.Endpoint(host: "127.0.0.1", port: port), timeoutSeconds: 5) {
                let request = UnsafeMutableRawPointer.allocate(byteCount: 32, alignment: 8)
                let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
                var samples: [UInt64] = []
                for _ in 0..<2000 {
                    let t0 = fm_now_ns()
                    guard (try? client.writeAll(request, count: 32)) != nil,
                          (try? client.readExactly(into: page, count: 4096)) != nil else { break }
                    samples.append(fm_now_ns() - t0)
                }
                tcp = median(samples)
                client.close()
                request.deallocate()
                page.deallocate()
            }
            echo.join()
            listener.close()
        }
        return (uffd, spin, sigbus, tcp)
    }

    private func median(_ values: [UInt64]) -> UInt64 {
        guard !values.isEmpty else { return 0 }
        return values.sorted()[values.count / 2]
    }
}

/// One measured run.
struct BenchRow: Codable {
    var workload: BenchWorkload.Kind
    /// 100 for local (no limit), 0 for the uffd floor (no eviction).
    var budgetPercent: Int
    var backend: String
    var seconds: Double
    var pagesAccessed: Int
    var pagesPerSecond: Double
    var gigabytesPerSecond: Double
    var latencyP50Nanoseconds: UInt64
    var latencyP90Nanoseconds: UInt64
    var latencyP99Nanoseconds: UInt64
    var latencyP999Nanoseconds: UInt64
    var verified: Bool
    var timedOut: Bool
    /// The run did not complete (for kernel swap: killed under the cgroup limit).
    var failed = false
    /// Missing-page faults (FarMem), or major faults (kernel swap).
    var faults: UInt64?
    /// FarMem's faults that went to the server (the rest: zero fills,
    /// probation hits, duplicates). What compares with kernel swap's major
    /// faults (a swap-cache hit is a minor fault there).
    var remoteFaults: UInt64?
    /// Faults that waited for eviction to make room (JSON only).
    var budgetWaits: UInt64?
    /// First writes to clean pages (FarMem's dirty tracking).
    var writeProtectFaults: UInt64?
    var prefetched: UInt64?
    var evictions: UInt64?
    var writeBacks: UInt64?
    var wireBytes: UInt64?
    /// Faults served from the probation area, and pages that left it untouched.
    var probationHits: UInt64?
    var probationExpired: UInt64?
    /// hits / (hits + expired): how many pages given probation came back from it.
    var probationHitRate: Double? {
        guard let hits = probationHits, let expired = probationExpired, hits + expired > 0 else { return nil }
        return Double(hits) / Double(hits + expired)
    }
    var ratioToLocal: Double?
    var ratioToFloor: Double?
    var note: String?

    init(workload: BenchWorkload.Kind, budgetPercent: Int, backend: String, result: BenchWorkload.Result) {
        self.workload = workload
        self.budgetPercent = budgetPercent
        self.backend = backend
        seconds = result.seconds
        pagesAccessed = result.pagesAccessed
        pagesPerSecond = Double(result.pagesAccessed) / max(result.seconds, 1e-9)
        gigabytesPerSecond = pagesPerSecond * 4096 / 1e9
        latencyP50Nanoseconds = result.latencyP50
        latencyP90Nanoseconds = result.latencyP90
        latencyP99Nanoseconds = result.latencyP99
        latencyP999Nanoseconds = result.latencyP999
        verified = result.verified
        timedOut = result.timedOut
    }
}

struct BenchReport: Codable {
    var rows: [BenchRow]
    var tcpRoundTripP50: UInt64
    var uffdRoundTripP50: UInt64
    var uffdSpinningP50: UInt64
    var uffdInThreadP50: UInt64
    var regionBytes: Int
    var sortBytes: Int
    var introsortBytes: Int
    var zipfSkew: Double
    var seconds: Double
    var command: String

    func table() -> String {
        func us(_ ns: UInt64) -> String { ns == 0 ? "-" : String(format: "%.1f", Double(ns) / 1000) }
        let header = ["workload", "budget", "backend", "time s", "GB/s", "kpages/s", "p50 us", "p90 us", "p99 us", "p99.9 us",
                      "faults", "remote", "wp faults", "prefetched", "probation hits", "evictions", "write-backs", "wire MB", "x local", "x floor", "verified"]
        var cells = [header]
        for row in rows {
            let budget = row.backend == "local" ? "all" : row.backend == "uffd-floor" ? "-" : "\(row.budgetPercent)%"
            cells.append([
                row.workload.rawValue, budget, row.backend, String(format: "%.3f", row.seconds),
                String(format: "%.3f", row.gigabytesPerSecond), String(format: "%.1f", row.pagesPerSecond / 1000),
                us(row.latencyP50Nanoseconds), us(row.latencyP90Nanoseconds), us(row.latencyP99Nanoseconds),
                us(row.latencyP999Nanoseconds),
                row.faults.map { "\($0)" } ?? "-", row.remoteFaults.map { "\($0)" } ?? (row.backend.hasPrefix("kernel") ? row.faults.map { "\($0)" } ?? "-" : "-"),
                row.writeProtectFaults.map { "\($0)" } ?? "-", row.prefetched.map { "\($0)" } ?? "-",
                row.probationHits.map { hits in "\(hits)" + (row.probationHitRate.map { String(format: " (%.0f%%)", $0 * 100) } ?? "") } ?? "-",
                row.evictions.map { "\($0)" } ?? "-", row.writeBacks.map { "\($0)" } ?? "-",
                row.wireBytes.map { String(format: "%.1f", Double($0) / 1e6) } ?? "-",
                row.ratioToLocal.map { String(format: "%.1f", $0) } ?? "-",
                row.ratioToFloor.map { String(format: "%.2f", $0) } ?? "-",
                row.failed ? "killed" : row.timedOut ? "timeout" : row.verified ? "yes" : "NO",
            ])
        }
        let widths = header.indices.map { column in cells.map { $0[column].count }.max()! }
        var lines = cells.map { row in
            row.enumerated().map { column, text in
                column < 3 ? text.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                           : String(repeating: " ", count: widths[column] - text.count) + text
            }.joined(separator: "  ")
        }
        lines.append("")
        lines.append("baselines: raw 4 KiB TCP request/response on loopback p50 \(us(tcpRoundTripP50)) us; "
                     + "plain uffd round trip p50 \(us(uffdRoundTripP50)) us (both measured in this run)")
        lines.append("handler placement at the floor (plain C, page from local memory): handler thread blocked in poll "
                     + "\(us(uffdRoundTripP50)) us, handler thread spinning on read \(us(uffdSpinningP50)) us, "
                     + "in the faulting thread (UFFD_FEATURE_SIGBUS) \(us(uffdInThreadP50)) us (p50 per fault)")
        return lines.joined(separator: "\n")
    }

    func writeJSON(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}

import ArgumentParser
import FarMemWorkloads
import Foundation

/// `farmem bench-worker`: one workload over plain local memory, printed as
/// JSON. The benchmark runs it inside a memory cgroup for the kernel-swap baseline.
struct BenchWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-worker", abstract: "Run one benchmark workload on local memory (used by farmem bench).",
        shouldDisplay: false)

    @Option var workload: BenchWorkload.Kind
    @Option var pages: Int
    @Option var skew = 0.99
    @Option var deadline = 120.0
    @Flag(help: "Print the resident bytes held before the region is allocated, and exit.") var measureOverhead = false

    func run() throws {
        let work = BenchWorkload(kind: workload, pages: pages, zipfSkew: skew)
        let sequence = work.accessSequence()
        if measureOverhead {
            print(residentBytes())
            return
        }
        let base = mmap(nil, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        work.prepare(base)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let majorBefore = usage.ru_majflt
        var result = work.run(base, sequence: sequence, deadlineSeconds: deadline)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        // Swap-ins during the timed run (each may bring several pages: swap readahead).
        result.majorFaults = UInt64(usage.ru_majflt - majorBefore)
        let json = try JSONEncoder().encode(result)
        print(String(decoding: json, as: UTF8.self))
    }
}

extension BenchWorkload.Kind: ExpressibleByArgument {}

/// VmRSS of this process, from /proc/self/status.
func residentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
    let kib = Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    return kib * 1024
}

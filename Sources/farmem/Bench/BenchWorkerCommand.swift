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

    func run() throws {
        let work = BenchWorkload(kind: workload, pages: pages, zipfSkew: skew)
        let sequence = work.accessSequence()
        let base = mmap(nil, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        work.prepare(base)
        let result = work.run(base, sequence: sequence, deadlineSeconds: deadline)
        let json = try JSONEncoder().encode(result)
        print(String(decoding: json, as: UTF8.self))
    }
}

extension BenchWorkload.Kind: ExpressibleByArgument {}

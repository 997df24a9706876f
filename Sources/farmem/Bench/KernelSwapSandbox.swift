import Foundation

/// The kernel's own swap as a baseline: a zram swap device and a memory
/// cgroup (v1, or v2 where it has the memory controller) whose limit is the
/// same budget FarMem gets. Only the worker process is put in the cgroup, from
/// inside itself. Everything is torn down afterwards, also on failure.
final class KernelSwapSandbox {
    private let zramIndex: Int
    private let cgroupRoot: String
    private let v2: Bool
    private var cgroups: [String] = []
    private var tornDown = false

    struct Unavailable: Error, CustomStringConvertible {
        let description: String
        /// A command's exit status, when it ran and failed (9: killed, the OOM killer's way).
        var exitStatus: Int32? = nil
    }

    init(swapBytes: Int) throws {
        guard geteuid() == 0 else { throw Unavailable(description: "needs root (zram, swapon, cgroups)") }
        let fm = FileManager.default
        if fm.fileExists(atPath: "/sys/fs/cgroup/memory/memory.limit_in_bytes") {
            cgroupRoot = "/sys/fs/cgroup/memory"
            v2 = false
        } else if let controllers = try? String(contentsOfFile: "/sys/fs/cgroup/cgroup.controllers", encoding: .utf8),
                  controllers.contains("memory") {
            cgroupRoot = "/sys/fs/cgroup"
            v2 = true
        } else {
            throw Unavailable(description: "no cgroup memory controller mounted")
        }
        guard let text = try? String(contentsOfFile: "/sys/class/zram-control/hot_add", encoding: .utf8),
              let index = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw Unavailable(description: "no zram (modprobe zram, or a kernel without it)")
        }
        zramIndex = index
        do {
            try Self.write("\(swapBytes)", to: "/sys/block/zram\(index)/disksize")
            try Self.shell("mkswap /dev/zram\(index) >/dev/null && swapon -p 32767 /dev/zram\(index)")
        } catch {
            tornDown = true
            tearDownDevice()
            throw Unavailable(description: "cannot set up zram swap: \(error)")
        }
    }

    /// Runs `arguments` in a fresh cgroup limited to `limitBytes`; returns its standard output.
    func run(limitBytes: Int, _ arguments: [String]) throws -> String {
        try inFreshCgroup(limitBytes: limitBytes, arguments) { output, _ in output }
    }

    /// Peak memory the cgroup was charged while `arguments` ran with no limit:
    /// what the worker holds before its region (runtime, its access list).
    func measurePeakCharge(_ arguments: [String]) throws -> Int {
        try inFreshCgroup(limitBytes: nil, arguments) { _, name in
            let peakFile = v2 ? "\(name)/memory.peak" : "\(name)/memory.max_usage_in_bytes"
            guard let text = try? String(contentsOfFile: peakFile, encoding: .utf8),
                  let peak = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw Unavailable(description: "cannot read \(peakFile)")
            }
            return peak
        }
    }

    /// Runs `arguments` as the only process of a new cgroup (memory-limited when
    /// `limitBytes` is given); `inspect` sees its output and the cgroup before the
    /// cgroup is removed. A run that fails leaves the cgroup to `tearDown`.
    private func inFreshCgroup<T>(limitBytes: Int?, _ arguments: [String],
                                  inspect: (_ output: String, _ cgroup: String) throws -> T) throws -> T {
        let name = "\(cgroupRoot)/farmem-bench-\(getpid())-\(cgroups.count)"
        try FileManager.default.createDirectory(atPath: name, withIntermediateDirectories: false)
        cgroups.append(name)
        if let limitBytes {
            try Self.write("\(limitBytes)", to: v2 ? "\(name)/memory.max" : "\(name)/memory.limit_in_bytes")
            if !v2 { try? Self.write("100", to: "\(name)/memory.swappiness") }
        }
        let command = arguments.map { "'\($0)'" }.joined(separator: " ")
        // `echo $$` from the shell that then execs the worker: it moves exactly that process.
        let output = try Self.shell("echo $$ > \(name)/cgroup.procs && exec \(command)")
        let result = try inspect(output, name)
        try? FileManager.default.removeItem(atPath: name)
        return result
    }

    func tearDown() {
        guard !tornDown else { return }
        tornDown = true
        for name in cgroups { rmdir(name) }
        cgroups = []
        _ = try? Self.shell("swapoff /dev/zram\(zramIndex)")
        tearDownDevice()
    }

    private func tearDownDevice() {
        try? Self.write("1", to: "/sys/block/zram\(zramIndex)/reset")
        try? Self.write("\(zramIndex)", to: "/sys/class/zram-control/hot_remove")
    }

    deinit { tearDown() }

    static func write(_ text: String, to path: String) throws {
        guard let file = fopen(path, "w") else { throw Unavailable(description: "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(file) }
        guard fputs(text, file) >= 0, fflush(file) == 0 else {
            throw Unavailable(description: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    @discardableResult
    static func shell(_ script: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw Unavailable(description: "`\(script.prefix(80))` exited \(process.terminationStatus)", exitStatus: process.terminationStatus)
        }
        return text
    }
}

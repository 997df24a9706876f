import Foundation

/// The kernel's own swap as a baseline: a swap device and a memory cgroup
/// (v1, or v2 where it has the memory controller) whose limit is the same
/// budget FarMem gets. Only the worker process is put in the cgroup, from
/// inside itself. Everything is torn down afterwards, also on failure.
///
/// The device is zram (compressed local memory), or NBD: a network block
/// device served by nbd-server over loopback TCP from a file in /dev/shm,
/// which is what a user would set up for swap on another machine's memory.
/// The device is swapped on only while a worker runs (`run`), so that two
/// sandboxes never share the kernel's swap.
final class KernelSwapSandbox {
    enum Device: String, CaseIterable { case zram, nbd }
    let device: Device
    private var zramIndex = -1
    private var nbdServer: Process?
    private var nbdFiles: [String] = []
    private var devicePath = ""
    private let cgroupRoot: String
    private let v2: Bool
    private var cgroups: [String] = []
    private var tornDown = false

    struct Unavailable: Error, CustomStringConvertible {
        let description: String
        /// A command's exit status, when it ran and failed (9: killed, the OOM killer's way).
        var exitStatus: Int32? = nil
    }

    init(swapBytes: Int, device: Device = .zram) throws {
        self.device = device
        guard geteuid() == 0 else { throw Unavailable(description: "needs root (\(device), swapon, cgroups)") }
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
        switch device {
        case .zram: try setUpZram(swapBytes: swapBytes)
        case .nbd: try setUpNBD(swapBytes: swapBytes)
        }
    }

    private func setUpZram(swapBytes: Int) throws {
        guard let text = try? String(contentsOfFile: "/sys/class/zram-control/hot_add", encoding: .utf8),
              let index = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw Unavailable(description: "no zram (modprobe zram, or a kernel without it)")
        }
        zramIndex = index
        devicePath = "/dev/zram\(index)"
        do {
            try Self.write("\(swapBytes)", to: "/sys/block/zram\(index)/disksize")
            try Self.shell("mkswap \(devicePath) >/dev/null")
        } catch {
            tornDown = true
            tearDownDevice()
            throw Unavailable(description: "cannot set up zram swap: \(error)")
        }
    }

    /// nbd-server on 127.0.0.1 (a free port) exporting a sparse file in
    /// /dev/shm, and nbd-client attaching the first free /dev/nbdN to it.
    private func setUpNBD(swapBytes: Int) throws {
        guard FileManager.default.fileExists(atPath: "/sys/block/nbd0") else {
            throw Unavailable(description: "no nbd block devices (modprobe nbd, or a kernel without it: the rdma-vm guest has it)")
        }
        for tool in ["nbd-server", "nbd-client"] where (try? Self.shell("command -v \(tool)")) == nil {
            throw Unavailable(description: "\(tool) is not installed (apt-get install nbd-server nbd-client)")
        }
        guard let free = (0..<16).first(where: { (try? String(contentsOfFile: "/sys/block/nbd\($0)/size", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) == "0" }) else {
            throw Unavailable(description: "no free /dev/nbdN")
        }
        devicePath = "/dev/nbd\(free)"
        let file = "/dev/shm/farmem-bench-swap-\(getpid())", config = "/dev/shm/farmem-bench-nbd-\(getpid()).conf"
        nbdFiles = [file, config]
        let port = 10809 + Int(getpid() % 1000)
        do {
            try Self.shell("truncate -s \(swapBytes) \(file)")
            try Self.write("[generic]\nlistenaddr = 127.0.0.1\nport = \(port)\n[swap]\nexportname = \(file)\n", to: config)
            let server = Process()
            server.executableURL = URL(fileURLWithPath: try Self.shell("command -v nbd-server").trimmingCharacters(in: .whitespacesAndNewlines))
            server.arguments = ["-d", "-C", config]   // -d: stays in the foreground, so it is ours to stop
            try server.run()
            nbdServer = server
            var attached = false
            for _ in 0..<50 where !attached {
                attached = (try? Self.shell("nbd-client -N swap -b 4096 127.0.0.1 \(port) \(devicePath) >/dev/null 2>&1")) != nil
                if !attached { usleep(100_000) }
            }
            guard attached else { throw Unavailable(description: "nbd-client could not attach \(devicePath) to nbd-server on port \(port)") }
            try Self.shell("mkswap \(devicePath) >/dev/null")
        } catch {
            tornDown = true
            tearDownDevice()
            throw Unavailable(description: "cannot set up NBD swap: \(error)")
        }
    }

    /// Runs `arguments` in a fresh cgroup limited to `limitBytes`, with this
    /// sandbox's device as the only swap; returns its standard output.
    func run(limitBytes: Int, _ arguments: [String]) throws -> String {
        try Self.shell("swapon -p 32767 \(devicePath)")
        defer { _ = try? Self.shell("swapoff \(devicePath)") }
        return try inFreshCgroup(limitBytes: limitBytes, arguments) { output, _ in output }
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
        if !devicePath.isEmpty { _ = try? Self.shell("swapoff \(devicePath) 2>/dev/null") }
        tearDownDevice()
    }

    private func tearDownDevice() {
        switch device {
        case .zram:
            guard zramIndex >= 0 else { return }
            try? Self.write("1", to: "/sys/block/zram\(zramIndex)/reset")
            try? Self.write("\(zramIndex)", to: "/sys/class/zram-control/hot_remove")
        case .nbd:
            if !devicePath.isEmpty { _ = try? Self.shell("nbd-client -d \(devicePath) >/dev/null 2>&1") }
            if let nbdServer, nbdServer.isRunning {
                nbdServer.terminate()
                nbdServer.waitUntilExit()
            }
            for file in nbdFiles { unlink(file) }
        }
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

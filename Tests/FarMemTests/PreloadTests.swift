import Foundation
import Synchronization
import XCTest

/// libfarmem-preload.so under programs nobody here wrote (Debian's python3 with
/// numpy, coreutils sort, sqlite3, redis-server), each checked by its own
/// output against a real farmemd with a budget well below its working set;
/// and a C program that checks the malloc family's promises from inside.
/// `make preload-programs` runs the same programs at larger sizes.
final class PreloadTests: XCTestCase {
    private var server: ServerProcess!

    override func setUpWithError() throws {
        XCTAssertTrue(FileManager.default.fileExists(atPath: PreloadRun.library), "build it first: swift build --product farmem-preload")
        server = try ServerProcess(capacity: "1GiB")
    }

    override func tearDown() {
        server?.stop()
        PreloadRun.removeTemporaryFiles()
    }

    private var servers: String { "127.0.0.1:\(server.endpoint.port)" }

    private func far(budget: String, _ extra: [String: String] = [:]) -> [String: String] {
        ["LD_PRELOAD": PreloadRun.library, "FARMEM_SERVERS": servers, "FARMEM_BUDGET": budget, "FARMEM_REPORT": "1"]
            .merging(extra) { $1 }
    }

    /// The report line's evictions: the program really ran beyond its budget.
    private func assertPagedBeyondBudget(_ run: PreloadRun.Result, file: StaticString = #filePath, line: UInt = #line) {
        let report = run.stderr.split(separator: "\n").last { $0.hasPrefix("farmem: far ") } ?? ""
        let evictions = report.firstMatch(of: /(\d+) evictions/).flatMap { Int($0.1) } ?? 0
        XCTAssertGreaterThan(evictions, 0, "no page left local memory: \(run.stderr.suffix(600))", file: file, line: line)
    }

    func testACProgramGetsWhatTheMallocFamilyPromises() throws {
        let binary = try PreloadRun.compile("Tests/Preload/preload_check.c")
        let run = try PreloadRun.run([binary, "64"], environment: far(budget: "8MiB"), seconds: 120)
        XCTAssertEqual(run.status, 0, run.description)
        XCTAssertTrue(run.stdout.contains("preload-check passed"), run.description)
        assertPagedBeyondBudget(run)
        // The far arena's rate against the real allocator's, same program, same run.
        let local = try PreloadRun.run([binary, "64"], environment: [:], seconds: 60)
        print("far arena: \(run.stdout.firstMatch(of: /far allocation: .*/).map { String($0.0) } ?? "?"); "
              + "without the preload: \(local.stdout.firstMatch(of: /far allocation: .*/).map { String($0.0) } ?? "?")")
    }

    func testReallocOfABigBlockReadsNoneOfItsPages() throws {
        let binary = try PreloadRun.compile("Tests/Preload/preload_check.c")
        let run = try PreloadRun.run([binary, "grow", "48"], environment: far(budget: "8MiB"), seconds: 120)
        XCTAssertEqual(run.status, 0, run.description)
        XCTAssertTrue(run.stdout.contains("grown 48 MiB to 192 MiB, 0 bad"), run.description)
        assertPagedBeyondBudget(run)
        // 48 MiB written under an 8 MiB budget, then grown twice: copying would
        // fetch its 10,000 evicted pages for each move. Only the 48 pages checked come back.
        let report = run.stderr.split(separator: "\n").last { $0.hasPrefix("farmem: far ") } ?? ""
        let fetched = report.firstMatch(of: /(\d+) fetches \(\+(\d+) prefetched\)/).flatMap { match in
            Int(match.1).flatMap { fetches in Int(match.2).map { fetches + $0 } }
        }
        XCTAssertNotNil(fetched, run.stderr)
        XCTAssertLessThan(fetched ?? .max, 200, "\(report)")
    }

    func testPythonWithNumpySortsAnArrayFourTimesTheBudget() throws {
        let python = try PreloadRun.tool("/usr/bin/python3", package: "python3-numpy")
        let script = """
            import numpy as np
            a = np.random.default_rng(5).integers(0, 2**62, size=6 << 20, dtype=np.int64)   # 48 MiB
            checksum = int(a.sum(dtype=np.uint64))
            a.sort(kind="quicksort")
            assert bool((a[1:] >= a[:-1]).all()), "not sorted"
            assert int(a.sum(dtype=np.uint64)) == checksum, "checksum changed"
            print("numpy sorted", a.nbytes >> 20, "MiB")
            """
        let run = try PreloadRun.run([python, "-c", script], environment: far(budget: "12MiB"), seconds: 180)
        XCTAssertEqual(run.status, 0, run.description)
        XCTAssertTrue(run.stdout.contains("numpy sorted 48 MiB"), run.description)
        assertPagedBeyondBudget(run)
    }

    func testCoreutilsSortWithALargeBufferMatchesAnUnpreloadedRun() throws {
        let sort = try PreloadRun.tool("/usr/bin/sort", package: "coreutils")
        let input = try PreloadRun.temporaryFile("sort-input")
        var generator = SystemRandomNumberGenerator()
        var text = ""
        text.reserveCapacity(12 << 20)
        for i in 0..<400_000 { text += String(UInt64.random(in: 0...UInt64.max, using: &generator), radix: 16) + " \(i)\n" }
        try text.write(toFile: input, atomically: false, encoding: .utf8)
        let arguments = [sort, "-S", "48M", "--parallel=2", input]
        let plain = try PreloadRun.run(arguments, environment: [:], seconds: 60)
        let preloaded = try PreloadRun.run(arguments, environment: far(budget: "12MiB"), seconds: 240)
        XCTAssertEqual(preloaded.status, 0, preloaded.description)
        XCTAssertEqual(plain.stdout.count, text.utf8.count)
        XCTAssertTrue(preloaded.stdout == plain.stdout, "the preloaded sort's output differs from the plain one's")
        assertPagedBeyondBudget(preloaded)
    }

    func testSqliteBuildsAnIndexOverATableLargerThanTheBudget() throws {
        let sqlite = try PreloadRun.tool("/usr/bin/sqlite3", package: "sqlite3")
        // -pagecache gives SQLite one big page-cache buffer (far); the table lives in it (:memory:).
        let script = """
            CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v TEXT);
            WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 120000)
            INSERT INTO t SELECT i, printf('%08x', (i * 2654435761) % 4294967296), printf('%.200c', char(65 + i % 26)) FROM c;
            CREATE INDEX tk ON t(k);
            PRAGMA integrity_check;
            SELECT count(*), sum(length(v)) FROM t;
            SELECT id, k FROM t WHERE k > '7fff0000' ORDER BY k LIMIT 5;
            """
        let arguments = [sqlite, "-pagecache", "4400", "12000", ":memory:"]
        let plain = try PreloadRun.run(arguments, environment: [:], input: script, seconds: 60)
        let preloaded = try PreloadRun.run(arguments, environment: far(budget: "12MiB"), input: script, seconds: 180)
        XCTAssertEqual(preloaded.status, 0, preloaded.description)
        XCTAssertTrue(preloaded.stdout.hasPrefix("ok\n120000|24000000\n"), preloaded.description)
        XCTAssertEqual(preloaded.stdout, plain.stdout)
        assertPagedBeyondBudget(preloaded)
    }

    func testRedisWithJemallocServesEveryValueBeyondTheBudget() throws {
        let redisServer = try PreloadRun.tool("/usr/bin/redis-server", package: "redis-server")
        let redisCLI = try PreloadRun.tool("/usr/bin/redis-cli", package: "redis-tools")
        let port = try PreloadRun.freePort()
        let serverOutput = try PreloadRun.temporaryFile("redis-output")
        let redis = Process()
        redis.executableURL = URL(fileURLWithPath: redisServer)
        redis.arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no",
                           "--dir", FileManager.default.temporaryDirectory.path, "--dbfilename", "farmem-redis-\(port).rdb"]
        redis.environment = ProcessInfo.processInfo.environment.merging(far(budget: "12MiB")) { $1 }
        redis.standardOutput = FileHandle(forWritingAtPath: serverOutput)
        redis.standardError = redis.standardOutput
        try redis.run()
        defer { if redis.isRunning { redis.terminate() } }
        let cli = { (arguments: [String]) throws -> PreloadRun.Result in
            try PreloadRun.run([redisCLI, "-p", "\(port)"] + arguments, environment: [:], seconds: 120)
        }
        XCTAssertTrue(waitUntil("redis answers", seconds: 30) { (try? cli(["ping"]))?.stdout == "PONG\n" },
                      (try? String(contentsOfFile: serverOutput, encoding: .utf8)) ?? "")
        // 80,000 values of about 500 bytes: some 60 MiB in Redis, five times the budget.
        let value = "string.rep(string.char(65 + i % 26), 480) .. i"
        let load = try cli(["eval", "for i = 1, 80000 do redis.call('set', 'key:' .. i, \(value)) end return 'loaded'", "0"])
        XCTAssertEqual(load.stdout, "loaded\n", load.description)
        let check = try cli(["eval", "local bad = 0 for i = 1, 80000 do if redis.call('get', 'key:' .. i) ~= \(value) then bad = bad + 1 end end return bad", "0"])
        XCTAssertEqual(check.stdout, "0\n", "values that differ: \(check.description)")
        let memory = try cli(["info", "memory"]).stdout
        XCTAssertTrue(memory.contains("mem_allocator:jemalloc"), memory)
        // A background save forks a child that reads every value: until fork
        // support lands it fails clearly (the child dies, Redis says so) and
        // the server goes on serving every value.
        XCTAssertEqual(try cli(["bgsave"]).stdout, "Background saving started\n")
        XCTAssertTrue(waitUntil("the background save ends", seconds: 60) {
            ((try? cli(["info", "persistence"]))?.stdout ?? "").contains("rdb_bgsave_in_progress:0")
        })
        XCTAssertTrue(try cli(["info", "persistence"]).stdout.contains("rdb_last_bgsave_status:err"))
        XCTAssertEqual(try cli(["eval", "local bad = 0 for i = 1, 80000 do if redis.call('get', 'key:' .. i) ~= \(value) then bad = bad + 1 end end return bad", "0"]).stdout, "0\n")
        _ = try? cli(["shutdown", "nosave"])
        XCTAssertTrue(waitUntil("redis exits", seconds: 30) { !redis.isRunning })
        let output = try String(contentsOfFile: serverOutput, encoding: .utf8)
        XCTAssertTrue(output.contains("Background saving terminated by signal 11"), output.suffix(3000).description)
        assertPagedBeyondBudget(PreloadRun.Result(status: 0, stdout: "", stderr: output))
    }

    func testAnUnreachableServerStopsTheProgramClearlyOrFallsBackToLocalMemory() throws {
        let port = try PreloadRun.freePort()
        let environment = ["LD_PRELOAD": PreloadRun.library, "FARMEM_SERVERS": "127.0.0.1:\(port)"]
        let stopped = try PreloadRun.run(["/bin/echo", "ran"], environment: environment, seconds: 30)
        XCTAssertEqual(stopped.status, 1, stopped.description)
        XCTAssertEqual(stopped.stdout, "", "the program must not run")
        XCTAssertTrue(stopped.stderr.contains("farmem: cannot use far memory at 127.0.0.1:\(port)"), stopped.stderr)
        XCTAssertTrue(stopped.stderr.contains("FARMEM_FALLBACK=local"), stopped.stderr)

        let fallback = try PreloadRun.run(["/bin/echo", "ran"], environment: environment.merging(["FARMEM_FALLBACK": "local"]) { $1 }, seconds: 30)
        XCTAssertEqual(fallback.status, 0, fallback.description)
        XCTAssertEqual(fallback.stdout, "ran\n")
        XCTAssertTrue(fallback.stderr.contains("running with local memory only"), fallback.stderr)

        let badBudget = try PreloadRun.run(["/bin/echo", "ran"], environment: far(budget: "lots"), seconds: 30)
        XCTAssertEqual(badBudget.status, 1)
        XCTAssertTrue(badBudget.stderr.contains("FARMEM_BUDGET=lots is not a byte count"), badBudget.stderr)
    }

    /// Fork-then-touch needs the fork work of the shared-memory issue; until
    /// then a child that touches far memory dies at once with a message, and
    /// the parent is unaffected. It never reads someone else's data.
    func testAForkedChildThatTouchesFarMemoryDiesClearly() throws {
        let python = try PreloadRun.tool("/usr/bin/python3", package: "python3")
        let script = """
            import os, sys
            block = bytearray(8 << 20)          # far (at least FARMEM_MIN_ALLOC)
            block[123] = 7
            pid = os.fork()
            if pid == 0:
                print("child read", block[123], flush=True)   # must not get here
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print("child signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
            block[124] = 9
            print("parent still reads", block[123], block[124])
            """
        let run = try PreloadRun.run([python, "-c", script], environment: far(budget: "8MiB"), seconds: 60)
        XCTAssertEqual(run.status, 0, run.description)
        XCTAssertFalse(run.stdout.contains("child read"), run.description)
        XCTAssertTrue(run.stdout.contains("child signal 11"), run.description)
        XCTAssertTrue(run.stdout.contains("parent still reads 7 9"), run.description)
        XCTAssertTrue(run.stderr.contains("far memory is not inherited across fork"), run.stderr)
    }
}

/// Running a program with the preload library and collecting what it wrote.
enum PreloadRun {
    static var library: String { BuiltProducts.path("libfarmem-preload.so") }

    struct Result: CustomStringConvertible {
        var status: Int32
        var stdout: String
        var stderr: String
        var description: String { "status \(status)\nstdout: \(stdout.suffix(1500))\nstderr: \(stderr.suffix(2500))" }
    }

    static func tool(_ path: String, package: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw XCTSkip("\(path) is missing: apt-get install \(package) (make test installs it)")
        }
        return path
    }

    /// Files made by `temporaryFile` not yet removed (`removeTemporaryFiles`).
    private static let madeFiles = Mutex<[String]>([])

    /// An empty file in the temporary directory, removed by `removeTemporaryFiles`.
    static func temporaryFile(_ name: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("farmem-\(name)-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        madeFiles.withLock { $0.append(path) }
        return path
    }

    /// Removes every file `temporaryFile` made (inputs, outputs and compiled
    /// programs: some are megabytes, and a suite run must not leave them behind).
    static func removeTemporaryFiles() {
        for path in madeFiles.withLock({ files in defer { files.removeAll() }; return files }) {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    /// Compiles a C file of the repository with the system compiler.
    static func compile(_ source: String) throws -> String {
        let binary = try temporaryFile(URL(fileURLWithPath: source).deletingPathExtension().lastPathComponent)
        let result = try run(["/usr/bin/env", "cc", "-O1", "-Wall", "-Werror", "-o", binary,
                              BuiltProducts.repository.appendingPathComponent(source).path, "-lpthread"], environment: [:], seconds: 120)
        guard result.status == 0 else { throw NSError(domain: "compile", code: Int(result.status), userInfo: [NSLocalizedDescriptionKey: result.description]) }
        return binary
    }

    static func freePort() throws -> UInt16 {
        let probe = try TCPListenerProbe()
        return probe.port
    }

    /// Runs `arguments` with `environment` added, output to files (no pipe
    /// can fill up), killed after `seconds`.
    static func run(_ arguments: [String], environment: [String: String], input: String? = nil, seconds: Double) throws -> Result {
        let out = try temporaryFile("stdout"), err = try temporaryFile("stderr")
        defer { try? FileManager.default.removeItem(atPath: out); try? FileManager.default.removeItem(atPath: err) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = FileHandle(forWritingAtPath: out)
        process.standardError = FileHandle(forWritingAtPath: err)
        let stdin = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : stdin
        try process.run()
        if let input {
            stdin.fileHandleForWriting.write(input.data(using: .utf8)!)
            try stdin.fileHandleForWriting.close()
        }
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            XCTFail("\(arguments.joined(separator: " ")) did not finish within \(Int(seconds)) s")
        }
        process.waitUntilExit()
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return Result(status: status, stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }
}

/// A port nobody listens on now: bound to 0, read, closed.
private struct TCPListenerProbe {
    let port: UInt16
    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw NSError(domain: "port", code: Int(errno)) }
        port = UInt16(bigEndian: address.sin_port)
    }
}

import Foundation
import XCTest

/// Compiles Tests/CInterface/NAME.c against include/farmemory.h and the
/// built libFarMemoryC.so (run path set); returns the binary's path.
func compileCProgram(_ name: String) throws -> String {
    let library = BuiltProducts.directory.appendingPathComponent("libFarMemoryC.so").path
    XCTAssertTrue(FileManager.default.fileExists(atPath: library), "build it first: swift build --product FarMemoryC")
    let repository = BuiltProducts.repository
    let binary = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(getpid())").path
    let compile = Process()
    compile.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    compile.arguments = ["cc", "-Wall", "-Werror", "-I", repository.appendingPathComponent("include").path,
                         repository.appendingPathComponent("Tests/CInterface/\(name).c").path,
                         "-o", binary, "-lpthread", "-L", BuiltProducts.directory.path, "-lFarMemoryC",
                         "-Wl,-rpath," + BuiltProducts.directory.path]
    try compile.run()
    compile.waitUntilExit()
    XCTAssertEqual(compile.terminationStatus, 0, "\(name).c compiles against include/farmemory.h")
    return binary
}

/// include/farmemory.h and libFarMemoryC.so from C: compiles
/// Tests/CInterface/farmem_c_example.c with the system C compiler, links it to
/// the built shared library and runs it against a real farmemd.
final class CInterfaceTests: XCTestCase {
    func testCProgramPagesARegionThroughTheSharedLibrary() throws {
        let binary = try compileCProgram("farmem_c_example")
        defer { try? FileManager.default.removeItem(atPath: binary) }

        let server = try ServerProcess(capacity: "64MiB")
        defer { server.stop() }
        let run = Process()
        run.executableURL = URL(fileURLWithPath: binary)
        run.arguments = ["127.0.0.1:\(server.endpoint.port)"]
        let output = Pipe()
        run.standardOutput = output
        try run.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        run.waitUntilExit()
        XCTAssertEqual(run.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("c-api verified"), text)
        XCTAssertTrue(text.contains("out of capacity"), "an oversized region is a clear error: \(text)")
    }
}

/// A C program whose server dies gets SIGBUS on the first page it cannot
/// fetch, and must die of it promptly, however its threads and registers
/// stand, with the Swift runtime's crash handling as it comes by default
/// (SWIFT_BACKTRACE unset). The runtime's handler, which came with the
/// library, once ran swift-backtrace: it stopped the fault handler thread
/// and then waited forever on the far pages the crashed thread's registers
/// point at, and it hangs by itself when several threads crash at once.
final class CProgramCrashTests: XCTestCase {
    func testACProgramWhoseServerDiedAlwaysDiesOfSIGBUSWithinSeconds() throws {
        let binary = try compileCProgram("farmem_c_crash")
        defer { try? FileManager.default.removeItem(atPath: binary) }

        // FARMEM_CRASH_RUNS=N for a longer trial by hand.
        let runs = ProcessInfo.processInfo.environment["FARMEM_CRASH_RUNS"].flatMap { Int($0) } ?? 4
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = nil
        var seconds: [Double] = []
        for run in 0..<runs {
            let server = try ServerProcess(capacity: "64MiB")
            let program = Process()
            program.executableURL = URL(fileURLWithPath: binary)
            program.arguments = ["127.0.0.1:\(server.endpoint.port)", String(run % 2 == 0 ? 4 : 1)]
            program.environment = environment
            let output = Pipe(), input = Pipe(), errors = Pipe()
            program.standardOutput = output
            program.standardInput = input
            program.standardError = errors
            try program.run()
            let pid = program.processIdentifier
            // Never let a hang outlive the test.
            DispatchQueue.global().asyncAfter(deadline: .now() + 30) { if program.isRunning { killTree(pid) } }
            let ready = output.fileHandleForReading.readData(ofLength: 6)
            XCTAssertEqual(String(decoding: ready, as: UTF8.self), "READY\n")
            server.kill()
            let started = Date()
            input.fileHandleForWriting.write("go\n".data(using: .utf8)!)
            program.waitUntilExit()
            let elapsed = Date().timeIntervalSince(started)
            seconds.append(elapsed)
            let log = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(program.terminationReason, .uncaughtSignal, "run \(run): \(log.suffix(2000))")
            XCTAssertEqual(program.terminationStatus, SIGBUS, "run \(run): \(log.suffix(2000))")
            // The first fetch gives up after the retry window (3 s); every later one at once.
            XCTAssertLessThan(elapsed, 10, "run \(run) took \(elapsed) s to die: \(log.suffix(2000))")
            server.stop()
        }
        print("C program killed by SIGBUS after its server died, \(runs) runs: \(seconds.map { String(format: "%.2f", $0) }.joined(separator: ", ")) s")
    }
}

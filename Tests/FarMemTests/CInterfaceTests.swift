import Foundation
import XCTest

/// include/farmemory.h and libFarMemoryC.so from C: compiles
/// Tests/CInterface/farmem_c_example.c with the system C compiler, links it to
/// the built shared library and runs it against a real farmemd.
final class CInterfaceTests: XCTestCase {
    func testCProgramPagesARegionThroughTheSharedLibrary() throws {
        let library = BuiltProducts.directory.appendingPathComponent("libFarMemoryC.so").path
        XCTAssertTrue(FileManager.default.fileExists(atPath: library), "build it first: swift build --product FarMemoryC")
        let repository = BuiltProducts.repository
        let binary = FileManager.default.temporaryDirectory.appendingPathComponent("farmem-c-example-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: binary) }
        let compile = Process()
        compile.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compile.arguments = ["cc", "-Wall", "-Werror", "-I", repository.appendingPathComponent("include").path,
                             repository.appendingPathComponent("Tests/CInterface/farmem_c_example.c").path,
                             "-o", binary, "-L", BuiltProducts.directory.path, "-lFarMemoryC",
                             "-Wl,-rpath," + BuiltProducts.directory.path]
        try compile.run()
        compile.waitUntilExit()
        XCTAssertEqual(compile.terminationStatus, 0, "the C example compiles against include/farmemory.h")

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

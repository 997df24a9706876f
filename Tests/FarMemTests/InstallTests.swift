import Foundation
import XCTest

/// `make install`'s script on a host without Swift: the built libraries and
/// farmemd are installed under a fresh prefix, a C program is compiled with
/// `pkg-config --cflags --libs farmemory`, and everything runs in a mount
/// namespace where the toolchain's runtime directory and the build tree are
/// empty (hidden by tmpfs): only what was installed can be loaded.
final class InstallTests: XCTestCase {
    private func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    func testInstalledLibraryRunsWithoutTheSwiftToolchain() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else {
            throw XCTSkip("hiding the toolchain needs root and unshare(1)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/patchelf") else {
            throw XCTSkip("patchelf is not installed (make deps installs it)")
        }
        let repository = BuiltProducts.repository
        let built = BuiltProducts.directory
        let library = built.appendingPathComponent("libFarMemoryC.so").path
        XCTAssertTrue(FileManager.default.fileExists(atPath: library), "build it first: swift build --product FarMemoryC")
        let prefix = FileManager.default.temporaryDirectory.appendingPathComponent("farmem-install-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: prefix) }
        let install = try run([repository.appendingPathComponent("deploy/install/install-farmem").path, prefix.path, built.path])
        XCTAssertEqual(install.status, 0, install.output)

        // The toolchain's runtime directory, to hide.
        let ldd = try run(["ldd", library])
        let runtimeLine = try XCTUnwrap(ldd.output.split(separator: "\n").first { $0.contains("libswiftCore.so =>") })
        let runtime = try XCTUnwrap(runtimeLine.split(separator: " ").first { $0.hasPrefix("/") }.map { URL(fileURLWithPath: String($0)).deletingLastPathComponent().path })

        let flags = try run(["pkg-config", "--cflags", "--libs", "farmemory"],
                            environment: ["PKG_CONFIG_PATH": prefix.appendingPathComponent("lib/pkgconfig").path])
        XCTAssertEqual(flags.status, 0, flags.output)
        XCTAssertTrue(flags.output.contains("-lFarMemoryC"), flags.output)
        let example = prefix.appendingPathComponent("farmem-c-example").path
        let compile = try run(["sh", "-c", "cc -Wall -Werror \(repository.appendingPathComponent("Tests/CInterface/farmem_c_example.c").path) -o \(example) \(flags.output.trimmingCharacters(in: .whitespacesAndNewlines))"])
        XCTAssertEqual(compile.status, 0, compile.output)

        let server = try ServerProcess(capacity: "512MiB")
        defer { server.stop() }
        let address = "127.0.0.1:\(server.endpoint.port)"
        let bin = prefix.appendingPathComponent("bin").path
        let preload = prefix.appendingPathComponent("lib/farmem/libfarmem-preload.so").path
        // Inside: no toolchain runtime, no build tree.
        let script = """
            mount -t tmpfs none '\(runtime)' && mount -t tmpfs none '\(built.deletingLastPathComponent().path)' || exit 90
            ls '\(runtime)' | wc -l
            '\(example)' \(address) || exit 91
            '\(bin)/farmemd' --help > /dev/null || exit 92
            LD_PRELOAD='\(preload)' FARMEM_SERVERS=\(address) FARMEM_BUDGET=4MiB FARMEM_REPORT=1 \\
                /usr/bin/python3 -c 'b = bytearray(16 << 20); b[5 << 12] = 7; print("preloaded", sum(b[::4096]))' || exit 93
            """
        let hidden = try run(["unshare", "-m", "sh", "-c", script])
        XCTAssertEqual(hidden.status, 0, hidden.output)
        XCTAssertTrue(hidden.output.hasPrefix("0\n"), "the runtime directory is hidden: \(hidden.output)")
        XCTAssertTrue(hidden.output.contains("c-api verified"), hidden.output)
        XCTAssertTrue(hidden.output.contains("preloaded 7"), hidden.output)
        XCTAssertTrue(hidden.output.contains("farmem: far ") && !hidden.output.contains(" 0 evictions"), "paged far: \(hidden.output)")
    }
}

// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "FarMem",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "FarMemory", targets: ["FarMemory"]),
        .library(name: "FarMemServer", targets: ["FarMemServer"]),
        // libFarMemoryC.so, with include/farmemory.h, for C and C++ programs.
        .library(name: "FarMemoryC", type: .dynamic, targets: ["FarMemoryC"]),
        // libfarmem-preload.so: LD_PRELOAD it to put an unchanged program's big allocations in far memory.
        .library(name: "farmem-preload", type: .dynamic, targets: ["FarMemPreload"]),
        .executable(name: "farmemd", targets: ["farmemd"]),
        .executable(name: "farmem", targets: ["farmem"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // Syscall and ioctl wrappers that return -errno (Swift cannot call variadic ioctl).
        .target(name: "CFarMemSys"),
        // libibverbs + librdmacm: connection setup and one-sided READ/WRITE, polled.
        .target(name: "CFarMemRDMA", linkerSettings: [.linkedLibrary("ibverbs"), .linkedLibrary("rdmacm")]),
        // Typed descriptors and Errno over CFarMemSys, in the style of swift-system.
        .target(name: "FarMemSystem", dependencies: ["CFarMemSys"]),
        // The wire protocol: frames, messages, error codes (see protocol/SPEC.md).
        .target(name: "FarMemProtocol", dependencies: ["FarMemSystem"]),
        // The memory server, embeddable (farmem demo) and standalone (farmemd).
        .target(name: "FarMemServer", dependencies: [
            "FarMemProtocol", "FarMemSystem", "CFarMemRDMA", .product(name: "Logging", package: "swift-log"),
        ]),
        // The client library: far-memory regions paged through userfaultfd.
        .target(name: "FarMemory", dependencies: [
            "FarMemProtocol", "FarMemSystem", "CFarMemSys", "CFarMemRDMA", .product(name: "Logging", package: "swift-log"),
        ]),
        // The C interface (include/farmemory.h) over FarMemory.
        .target(name: "FarMemoryC", dependencies: ["FarMemory", "FarMemSystem", "CFarMemSys", .product(name: "Logging", package: "swift-log")]),
        // The far arena's bookkeeping (pure C: it runs inside malloc).
        .target(name: "CFarMemArena"),
        // The LD_PRELOAD library: malloc and mmap interposition in C over the C interface.
        .target(name: "FarMemPreload", dependencies: ["FarMemoryC", "CFarMemArena", "CFarMemSys"],
                cSettings: [.headerSearchPath("../../include"), .headerSearchPath("../CFarMemSys/include")]),
        // Verifiable workloads shared by `farmem demo`, the benchmarks and the tests.
        .target(name: "FarMemWorkloads", dependencies: ["CFarMemSys", "FarMemory"]),
        .executableTarget(name: "farmemd", dependencies: [
            "FarMemServer", "CFarMemSys", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "farmem", dependencies: [
            "FarMemory", "FarMemServer", "FarMemProtocol", "FarMemWorkloads", "CFarMemSys",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Runs the library in its own process for tests whose outcome is a
        // signal (SIGBUS when the server dies) or a SIGKILL of the client.
        .executableTarget(name: "farmem-failure-probe", dependencies: ["FarMemory", "FarMemWorkloads", "FarMemSystem", "CFarMemSys"],
                          path: "Tests/FailureProbe"),
        // The fuzz target over frame decoding and request handling (`make fuzz`;
        // a plain build is a replayer `make test` runs on the seed corpus).
        .executableTarget(name: "farmem-fuzz", dependencies: [
            "FarMemServer", "FarMemProtocol", "FarMemSystem", .product(name: "Logging", package: "swift-log"),
        ], path: "Tests/Fuzz"),
        // Kernel calls only the tests make (an io_uring pin); never linked into a product.
        .target(name: "CFarMemTestSupport", path: "Tests/CTestSupport"),
        .testTarget(name: "FarMemTests", dependencies: [
            "FarMemory", "FarMemServer", "FarMemProtocol", "FarMemSystem", "FarMemWorkloads", "CFarMemSys",
            "CFarMemTestSupport", "CFarMemArena", .product(name: "Logging", package: "swift-log"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)

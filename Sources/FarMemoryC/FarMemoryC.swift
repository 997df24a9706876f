import CFarMemSys
import FarMemSystem
import FarMemory
import Logging
#if canImport(Glibc)
import Glibc
#endif

// The C interface declared in include/farmemory.h. Handles are retained Swift
// objects passed as opaque pointers; nothing here throws across the C boundary.

private func report(_ message: String, into buffer: UnsafeMutablePointer<CChar>?, length: Int) {
    guard let buffer, length > 0 else { return }
    let bytes = Array(message.utf8.prefix(length - 1))
    for (i, byte) in bytes.enumerated() { buffer[i] = CChar(bitPattern: byte) }
    buffer[bytes.count] = 0
}

@_cdecl("farmem_open")
public func farmem_open(_ server: UnsafePointer<CChar>?, _ budgetBytes: Int, _ token: UnsafePointer<CChar>?,
                        _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorLength: Int) -> UnsafeMutableRawPointer? {
    guard let server else {
        report("no server given: HOST:PORT[,HOST:PORT...]", into: errorBuffer, length: errorLength)
        return nil
    }
    let servers: [TCPSocket.Endpoint]
    switch FarMemoryConfiguration.servers(parsing: String(cString: server)) {
    case .success(let list): servers = list
    case .failure(let error):
        report("\(error)", into: errorBuffer, length: errorLength)
        return nil
    }
    // A C program's crashes are its own: the Swift runtime's crash handler,
    // which came with this library, goes (see fm_restore_default_crash_handling).
    _ = fm_restore_default_crash_handling()
    let tokenBytes = token.map { Array(String(cString: $0).utf8) } ?? []
    var configuration = FarMemoryConfiguration(servers: servers, budgetBytes: budgetBytes, token: tokenBytes)
    // FARMEM_METRICS=HOST:PORT serves the statistics for Prometheus.
    if let metrics = getenv("FARMEM_METRICS").map({ String(cString: $0) }), !metrics.isEmpty {
        guard let endpoint = TCPSocket.Endpoint(parsing: metrics) else {
            report("FARMEM_METRICS must be HOST:PORT, got \(metrics)", into: errorBuffer, length: errorLength)
            return nil
        }
        configuration.metricsListen = endpoint
    }
    // FARMEM_VERIFY_PAGES=1: page verification, a debugging aid (see FarMemoryConfiguration.verifiesPages).
    if let verify = getenv("FARMEM_VERIFY_PAGES").map({ String(cString: $0) }), !verify.isEmpty, verify != "0" {
        configuration.verifiesPages = true
    }
    // FARMEM_LOG_LEVEL (default warning): a C program's stderr is its own.
    var logger = Logger(label: "farmemory")
    logger.logLevel = .warning
    if let level = getenv("FARMEM_LOG_LEVEL").map({ String(cString: $0) }), !level.isEmpty {
        guard let parsed = Logger.Level(rawValue: level) else {
            report("FARMEM_LOG_LEVEL must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), got \(level)",
                   into: errorBuffer, length: errorLength)
            return nil
        }
        logger.logLevel = parsed
    }
    do {
        let memory = try FarMemory(configuration: configuration, logger: logger)
        return Unmanaged.passRetained(memory).toOpaque()
    } catch {
        report("\(error)", into: errorBuffer, length: errorLength)
        return nil
    }
}

@_cdecl("farmem_alloc")
public func farmem_alloc(_ handle: UnsafeMutableRawPointer?, _ bytes: Int, _ regionOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                         _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorLength: Int) -> UnsafeMutableRawPointer? {
    farmem_alloc_kind(handle, bytes, 0, regionOut, errorBuffer, errorLength)
}

/// `kind`: farmem_region_kind_t (0 anonymous, 1 memfd, 2 hugetlb).
@_cdecl("farmem_alloc_kind")
public func farmem_alloc_kind(_ handle: UnsafeMutableRawPointer?, _ bytes: Int, _ kind: UInt32,
                              _ regionOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                              _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorLength: Int) -> UnsafeMutableRawPointer? {
    guard let handle else { report("no FarMemory handle", into: errorBuffer, length: errorLength); return nil }
    let kinds: [RegionKind] = [.anonymous, .memfd, .hugetlb]
    guard Int(kind) < kinds.count else { report("unknown region kind \(kind)", into: errorBuffer, length: errorLength); return nil }
    let memory = Unmanaged<FarMemory>.fromOpaque(handle).takeUnretainedValue()
    do {
        let region = try memory.allocate(bytes: bytes, kind: kinds[Int(kind)])
        regionOut?.pointee = Unmanaged.passRetained(region).toOpaque()
        return region.baseAddress
    } catch {
        report("\(error)", into: errorBuffer, length: errorLength)
        return nil
    }
}

@_cdecl("farmem_grow")
public func farmem_grow(_ handle: UnsafeMutableRawPointer?, _ region: UnsafeMutableRawPointer?, _ bytes: Int, _ mayMove: Int32,
                        _ baseOut: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                        _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorLength: Int) -> Int32 {
    guard handle != nil, let region else { report("no FarMemory handle or region", into: errorBuffer, length: errorLength); return -1 }
    let grown = Unmanaged<FarRegion>.fromOpaque(region).takeUnretainedValue()
    defer { baseOut?.pointee = grown.baseAddress }
    do {
        try grown.grow(to: bytes, mayMove: mayMove != 0)
        return 0
    } catch {
        report("\(error)", into: errorBuffer, length: errorLength)
        return -1
    }
}

@_cdecl("farmem_free")
public func farmem_free(_ handle: UnsafeMutableRawPointer?, _ region: UnsafeMutableRawPointer?) {
    guard let region else { return }
    let owned = Unmanaged<FarRegion>.fromOpaque(region).takeRetainedValue()
    owned.close()
}

/// Mirrors farmem_stats_t.
public struct CStatistics {
    var faults, fetches, prefetched, zeroFills, evictions, writeBacks, bytesIn, bytesOut, residentPages, poisoned: UInt64
}

@_cdecl("farmem_stats")
public func farmem_stats(_ handle: UnsafeMutableRawPointer?, _ out: UnsafeMutableRawPointer?) -> Int32 {
    guard let handle, let out else { return -1 }
    let s = Unmanaged<FarMemory>.fromOpaque(handle).takeUnretainedValue().statistics
    out.storeBytes(of: CStatistics(faults: s.faults, fetches: s.fetches, prefetched: s.prefetched, zeroFills: s.zeroFills,
                                   evictions: s.evictions, writeBacks: s.writeBacks, bytesIn: s.bytesIn, bytesOut: s.bytesOut,
                                   residentPages: s.residentPages, poisoned: s.poisoned), as: CStatistics.self)
    return 0
}

@_cdecl("farmem_fault_latency")
public func farmem_fault_latency(_ handle: UnsafeMutableRawPointer?, _ p50: UnsafeMutablePointer<UInt64>?,
                                 _ p99: UnsafeMutablePointer<UInt64>?) -> Int32 {
    guard let handle else { return -1 }
    let s = Unmanaged<FarMemory>.fromOpaque(handle).takeUnretainedValue().statistics
    p50?.pointee = s.serviceP50Nanoseconds
    p99?.pointee = s.serviceP99Nanoseconds
    return 0
}

@_cdecl("farmem_close")
public func farmem_close(_ handle: UnsafeMutableRawPointer?) {
    guard let handle else { return }
    let memory = Unmanaged<FarMemory>.fromOpaque(handle).takeRetainedValue()
    memory.close()
}

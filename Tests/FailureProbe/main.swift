// farmem-failure-probe PORT|HOST:PORT,HOST:PORT... MODE [HOST]
// Fills a far region 4x its budget (16x in a cluster) through the server on
// HOST:PORT (default 127.0.0.1; transport auto, so RDMA where HOST has a
// device) or the cluster listed, prints READY, waits for a line on stdin, then:
//   read-evicted: reads an evicted page (the test killed the server: expect SIGBUS);
//   hold: waits to be killed (the test checks the server frees the pages);
//   read-lost-extent: (a cluster; the test killed both servers holding page 0)
//     reads the page the line names (prints SURVIVOR OK), then page 0: expect SIGBUS;
//   fault-burst: (the test paused the server) blocks the fault handler in a
//     fetch, lets more faults pile up than its first deferral buffer holds,
//     with a REMOVE event behind them, prints PILED, and once the test has
//     resumed the server expects every thread to finish: prints DONE, exit 0.
import CFarMemSys
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
let modes = ["read-evicted", "hold", "fault-burst", "read-lost-extent"]
let servers: [TCPSocket.Endpoint]? = arguments.count >= 2
    ? (UInt16(arguments[1]).map { [TCPSocket.Endpoint(host: arguments.count == 4 ? arguments[3] : "127.0.0.1", port: $0)] }
        ?? (try? FarMemoryConfiguration.servers(parsing: arguments[1]).get()))
    : nil
guard arguments.count == 3 || arguments.count == 4, let servers, modes.contains(arguments[2]) else {
    print("usage: farmem-failure-probe PORT|HOST:PORT,HOST:PORT... \(modes.joined(separator: "|")) [HOST]")
    exit(64)
}
let mode = arguments[2]
// The burst keeps its requests waiting on a paused server: long time-outs.
let patient = mode == "fault-burst"
let configuration = FarMemoryConfiguration(
    servers: servers, budgetBytes: 1 << 20,
    requestTimeoutSeconds: patient ? 60 : 1, retryWindowSeconds: patient ? 60 : 1, prefetchPages: patient ? 0 : 64)
let memory: FarMemory
do { memory = try FarMemory(configuration: configuration) } catch {
    print("ERROR \(error)")
    exit(1)
}
let region = try! memory.allocate(bytes: servers.count > 1 ? 16 << 20 : 4 << 20)
let pattern = PagePattern(seed: 99)
let base = region.baseAddress!
for page in 0..<region.pageCount { _ = pattern.write(page: page, at: base + page * 4096) }
for page in 0..<region.pageCount where !pattern.verify(page: page, at: base + page * 4096).ok {
    print("MISMATCH \(page)")
    exit(2)
}
// The burst's threads exist before READY (thread creation takes mmap_lock).
let burstThreads = patient ? 4400 : 0
let burst = try! memory.allocate(bytes: burstThreads * 4096 + 4096)
let burstBase = UInt(bitPattern: burst.baseAddress!)
let startBurst = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
pthread_rwlock_init(startBurst, nil)
pthread_rwlock_wrlock(startBurst)
let started = Atomic<Int>(0)
let readers = (0..<burstThreads).map { i in
    SmallThread {
        _ = started.add(1, ordering: .relaxed)
        pthread_rwlock_rdlock(startBurst)
        pthread_rwlock_unlock(startBurst)
        // A first touch of a fresh page: one fault each, all different pages.
        UnsafeMutablePointer<UInt8>(bitPattern: burstBase + UInt(i) * 4096)!.pointee = 1
    }
}
while started.load(ordering: .relaxed) < burstThreads { usleep(1000) }

print("READY evictions=\(memory.statistics.evictions) rdma=\(memory.usesRDMA)")
fflush(nil)
_ = readLine()
switch mode {
case "read-evicted":
    // Page 0 was evicted long ago; a register holds another evicted page, as
    // real code's would (a crash handler reads around the registers).
    let value = fm_read_holding(base.assumingMemoryBound(to: UInt64.self), base + region.pageCount / 2 * 4096)
    print("UNEXPECTED read returned \(value)")
    exit(3)
case "read-lost-extent":
    let survivor = Int(readLine() ?? "") ?? -1
    let ok = survivor > 0 && survivor < region.pageCount && pattern.verify(page: survivor, at: base + survivor * 4096).ok
    print(ok ? "SURVIVOR OK" : "SURVIVOR BAD \(survivor)")
    fflush(nil)
    let value = base.load(as: UInt64.self)   // both copies of page 0 are gone
    print("UNEXPECTED read returned \(value)")
    exit(3)
case "fault-burst":
    // Page 0 is on the (paused) server: its fetch holds the handler.
    let fetcher = SmallThread { _ = pattern.verify(page: 0, at: base) }
    usleep(300_000)
    pthread_rwlock_unlock(startBurst)     // every reader faults now; nobody reads their messages
    usleep(500_000)
    // MADV_DONTNEED with the faults unread: its REMOVE event queues behind them, and
    // until it is read every UFFDIO_COPY meets EAGAIN (mmap_changing).
    let discarder = SmallThread { madvise(UnsafeMutableRawPointer(bitPattern: burstBase + UInt(burstThreads) * 4096), 4096, MADV_DONTNEED) }
    usleep(300_000)
    print("PILED")
    fflush(nil)
    fetcher.join()
    readers.forEach { $0.join() }
    discarder.join()
    let ok = pattern.verify(page: 0, at: base).ok
    print(ok ? "DONE \(memory.statistics)" : "MISMATCH 0")
    fflush(nil)
    exit(ok ? 0 : 2)
default:
    while true { pause() }
}

/// A thread with a 64 KiB stack, so that thousands fit.
final class SmallThread: @unchecked Sendable {
    private var handle = pthread_t()
    private let body: () -> Void

    init(_ body: @escaping () -> Void) {
        self.body = body
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setstacksize(&attributes, 64 << 10)
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&handle, &attributes, { context in
            Unmanaged<SmallThread>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        pthread_attr_destroy(&attributes)
        precondition(rc == 0, "pthread_create: \(rc)")
    }

    func join() { pthread_join(handle, nil) }
}

// farmem-failure-probe PORT MODE [HOST]
// Fills a far region 4x its budget through the server on HOST:PORT (default
// 127.0.0.1; transport auto, so RDMA where HOST has a device), prints
// READY, waits for a line on stdin, then:
//   read-evicted: reads an evicted page (the test killed the server: expect SIGBUS);
//   hold: waits to be killed (the test checks the server frees the pages).
import FarMemSystem
import FarMemWorkloads
import FarMemory
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 3 || arguments.count == 4, let port = UInt16(arguments[1]) else {
    print("usage: farmem-failure-probe PORT read-evicted|hold [HOST]")
    exit(64)
}
let configuration = FarMemoryConfiguration(
    server: TCPSocket.Endpoint(host: arguments.count == 4 ? arguments[3] : "127.0.0.1", port: port), budgetBytes: 1 << 20,
    requestTimeoutSeconds: 1, retryWindowSeconds: 1)
let memory: FarMemory
do { memory = try FarMemory(configuration: configuration) } catch {
    print("ERROR \(error)")
    exit(1)
}
let region = try! memory.allocate(bytes: 4 << 20)
let pattern = PagePattern(seed: 99)
let base = region.baseAddress!
for page in 0..<region.pageCount { _ = pattern.write(page: page, at: base + page * 4096) }
for page in 0..<region.pageCount where !pattern.verify(page: page, at: base + page * 4096).ok {
    print("MISMATCH \(page)")
    exit(2)
}
print("READY evictions=\(memory.statistics.evictions) rdma=\(memory.usesRDMA)")
fflush(nil)
_ = readLine()
if arguments[2] == "read-evicted" {
    let value = base.load(as: UInt64.self)   // page 0 was evicted long ago
    print("UNEXPECTED read returned \(value)")
    exit(3)
}
while true { pause() }

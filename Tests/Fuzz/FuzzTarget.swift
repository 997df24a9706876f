#if canImport(Glibc)
import Glibc
#endif
import FarMemProtocol
@testable import FarMemServer
import FarMemSystem
import Foundation
import Logging

/// A coverage-guided fuzz target (libFuzzer) over the frame decoder and the
/// server's request handling: the input is the byte stream a client sends on
/// one connection (a canned HELLO is put in front unless it starts with
/// one), served by a real server event loop over a socket pair, replies
/// drained. After each input the connection's session must be gone and the
/// server must hold nothing: reserved and stored pages back to zero. A
/// crash, a hang (libFuzzer's -timeout) or a leak of capacity is a finding.
///
/// `make fuzz` builds it with -sanitize=fuzzer (FUZZING defined, libFuzzer's
/// main); a plain build gives a replayer: `farmem-fuzz FILE...` runs files
/// (a corpus, a crash) through the same code, which `make test` does with the
/// seed corpus.
enum FuzzHarness {
    static let context: ServerContext = {
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        let configuration = ServerConfiguration(capacityBytes: 64 << 20, frameTimeoutSeconds: 2, transport: .tcp)
        return ServerContext(configuration: configuration, ledger: CapacityLedger(capacityPages: 16384),
                             logger: Logger(label: "fuzz"), rdma: nil)
    }()

    /// Event loops as a server runs them, without a listener: one with
    /// frame buffers to spare, and one whose only buffer is taken for good,
    /// so that it reads whole frames only and parks the rest (a server whose
    /// --buffer-memory is all in use). Inputs alternate between them.
    static let loops: [EventLoop] = {
        let roomy = try! EventLoop(context: context, listener: nil, name: "fuzz-loop", bufferLimit: 4)
        let starved = try! EventLoop(context: context, listener: nil, name: "fuzz-starved", bufferLimit: 1)
        _ = starved.buffers.pool.take()
        roomy.start()
        starved.start()
        return [roomy, starved]
    }()
    nonisolated(unsafe) static var inputs = 0

    static let hello: [UInt8] = {
        let payload = Hello(sessionKey: Array(1...16)).encode()
        var frame = [UInt8](repeating: 0, count: FrameHeader.size)
        frame.withUnsafeMutableBytes {
            FrameHeader(opcode: Opcode.hello.rawValue, requestID: 1, payloadLength: UInt32(payload.count)).encode(into: $0.baseAddress!)
        }
        return frame + payload
    }()

    static func run(_ input: UnsafeRawBufferPointer) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { fatalError("socketpair: \(errno)") }
        let server = TCPSocket(descriptor: FileDescriptor(rawValue: fds[0]))
        let client = fds[1]
        // The client's side: everything sent, then its write half shut, while
        // a thread drains the replies so the server never blocks on them.
        let drain = PosixThread.spawn(name: "fuzz-drain") {
            var sink = [UInt8](repeating: 0, count: 65536)
            while read(client, &sink, sink.count) > 0 {}
        }
        let startsWithHello = input.count >= 4 && input[0] == 0x46 && input[1] == 0x4D && input[3] == Opcode.hello.rawValue
        let stream = (startsWithHello ? [] : hello) + Array(input)
        let feeder = PosixThread.spawn(name: "fuzz-feed") {
            stream.withUnsafeBytes { raw in
                var sent = 0
                while sent < raw.count {
                    let n = write(client, raw.baseAddress! + sent, raw.count - sent)
                    if n <= 0 { break }   // the server closed on a bad frame
                    sent += n
                }
            }
            shutdown(client, Int32(SHUT_WR))
        }
        // The server's event loop serves the socket until the connection ends
        // (the loop closes the socket then).
        let closedBefore = context.connectionsClosed.load(ordering: .relaxed)
        inputs += 1
        loops[inputs % 2].adopt(server)
        while context.connectionsClosed.load(ordering: .relaxed) == closedBefore { usleep(20) }
        feeder.join()
        drain.join()
        close(client)
        // The one connection of its session is gone: so is everything it held.
        let reserved = context.ledger.reservedPages, stored = context.ledger.storedPages
        if reserved != 0 || stored != 0 || context.sessions.count != 0 {
            fatalError("after the connection closed the server still holds \(reserved) reserved and \(stored) stored pages, \(context.sessions.count) sessions")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafeRawPointer, _ size: Int) -> CInt {
    FuzzHarness.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

#if FUZZING
/// SwiftPM links an executable's entry point as `<module>_main`: with
/// libFuzzer, that hands over to libFuzzer's driver (its command line:
/// corpus directories, -max_total_time, -runs, ...).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt) -> CInt

@_cdecl("farmem_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
}
#else
/// Without libFuzzer: runs each file (or every file of each directory) once.
@main
struct FuzzReplay {
    static func main() {
        var files: [String] = []
        for argument in CommandLine.arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory), isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []
                files += names.sorted().map { argument + "/" + $0 }
            } else {
                files.append(argument)
            }
        }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            data.withUnsafeBytes { FuzzHarness.run($0) }
        }
        print("farmem-fuzz: \(files.count) inputs replayed, the server held nothing after each")
    }
}
#endif

#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys

/// A joinable pthread running a closure. Pager and server workers are plain
/// threads: they block in syscalls and must never wait on Swift concurrency.
public final class PosixThread: @unchecked Sendable {
    private var handle = pthread_t()
    private let body: @Sendable () -> Void
    private let name: String

    private init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }

    /// Starts `body` on a new thread named `name` (shown by top -H and gdb; 15 chars max).
    ///
    /// The thread blocks every asynchronous signal from its first instruction
    /// on (it inherits the mask set around pthread_create): the program's
    /// signals (SIGINT, SIGUSR1, a profiler's SIGPROF, ...) go to the program's
    /// own threads, never to a library thread. It also keeps a crash handler
    /// that stops "all other threads" by signalling them (the Swift runtime's
    /// sends SIGUSR1, SIGUSR2 or SIGPROF) from stopping the fault handler:
    /// that handler dumps memory around the crashed thread's registers, and a
    /// far page among it is served only while the fault handler runs; stopped,
    /// the dump and the dying process waited forever.
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) -> PosixThread {
        let thread = PosixThread(name: name, body: body)
        let retained = Unmanaged.passRetained(thread).toOpaque()
        var blocked = sigset_t(), saved = sigset_t()
        sigfillset(&blocked)
        // Synchronous signals stay deliverable: they report this thread's own faults.
        for signal in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT, SIGSYS] { sigdelset(&blocked, signal) }
        pthread_sigmask(SIG_SETMASK, &blocked, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        let rc = pthread_create(&thread.handle, nil, { context in
            let thread = Unmanaged<PosixThread>.fromOpaque(context!).takeRetainedValue()
            fm_set_thread_name(String(thread.name.prefix(15)))
            thread.body()
            return nil
        }, retained)
        precondition(rc == 0, "pthread_create failed: \(Errno(rawValue: rc))")
        return thread
    }

    /// Starts `body` on a thread nobody joins: it frees its stack and
    /// descriptor itself when `body` returns. (A joinable thread that is never
    /// joined keeps them for good: about 8 KiB of touched stack each.)
    public static func spawnDetached(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = spawn(name: name, body)
        let rc = pthread_detach(thread.handle)
        precondition(rc == 0, "pthread_detach failed: \(Errno(rawValue: rc))")
    }

    public func join() { pthread_join(handle, nil) }
}

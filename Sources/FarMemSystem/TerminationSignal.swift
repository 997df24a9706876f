#if canImport(Glibc)
import Glibc
#endif

/// Blocks the calling thread until SIGINT or SIGTERM arrives (servers run
/// until then and shut down cleanly). The signals are blocked process-wide
/// first, so no other thread is interrupted by them.
public func waitForTerminationSignal() {
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    var received: Int32 = 0
    sigwait(&signals, &received)
}

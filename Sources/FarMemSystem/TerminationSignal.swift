#if canImport(Glibc)
import Glibc
#endif

/// Blocks the calling thread until SIGINT or SIGTERM arrives (servers run
/// until then and shut down cleanly). The signals are blocked process-wide
/// first, so no other thread is interrupted by them.
public func waitForTerminationSignal() { waitForTerminationSignal(onHangup: nil) }

/// The same, and each SIGHUP calls `onHangup` (a server's "reload your
/// configuration") on the calling thread; without one SIGHUP is ignored.
public func waitForTerminationSignal(onHangup: (() -> Void)?) {
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    sigaddset(&signals, SIGHUP)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    while true {
        var received: Int32 = 0
        sigwait(&signals, &received)
        if received != SIGHUP { return }
        onHangup?()
    }
}

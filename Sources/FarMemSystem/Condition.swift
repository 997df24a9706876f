#if canImport(Glibc)
import Glibc
#endif

/// A condition variable paired with its own mutex (pthread), for the evictor's job wait.
public final class Condition: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    public init() {
        pthread_mutex_init(&mutex, nil)
        // Deadlines on the monotonic clock: a wall-clock jump neither stretches nor cuts a wait.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }
    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }
    public func signal() {
        pthread_mutex_lock(&mutex)
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&mutex)
    }
    /// Waits until `ready()` is true (checked under the mutex, so no wake-up is
    /// lost), or at most `timeoutMilliseconds`. Returns whether it is ready.
    @discardableResult
    public func wait(until ready: () -> Bool, timeoutMilliseconds: Int? = nil) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard let timeoutMilliseconds else {
            while !ready() { pthread_cond_wait(&cond, &mutex) }
            return true
        }
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let nanoseconds = deadline.tv_nsec + timeoutMilliseconds % 1000 * 1_000_000
        deadline.tv_sec += timeoutMilliseconds / 1000 + nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        while !ready() {
            if pthread_cond_timedwait(&cond, &mutex, &deadline) == ETIMEDOUT { return ready() }
        }
        return true
    }
}

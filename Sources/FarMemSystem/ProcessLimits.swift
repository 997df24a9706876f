#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys

/// CPUs this process may run on now (sched_getaffinity, so a cpuset or
/// `taskset` counts, not only the machine's total).
public func onlineProcessorCount() -> Int {
    let usable = Int(fm_usable_cpus())
    return usable > 0 ? usable : max(sysconf(Int32(_SC_NPROCESSORS_ONLN)), 1)
}

/// Raises this process's soft limit on open descriptors to its hard limit
/// (a server holds one per connection; the usual soft limit of 1024 is a
/// default for interactive shells). Returns the limit now in force.
@discardableResult
public func raiseDescriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
    }
    return limit.rlim_cur > UInt64(Int.max) ? Int.max : Int(limit.rlim_cur)
}

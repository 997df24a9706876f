// Thin C layer under FarMemSystem: the userfaultfd ioctls, madvise and a few
// other calls Swift cannot make directly (variadic syscall/ioctl, _IOWR macros).
// Every function returns >= 0 on success and -errno on failure; none touches
// memory registered with userfaultfd.
#ifndef CFARMEMSYS_H
#define CFARMEMSYS_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Kernel feature bits (UFFDIO_API.features) FarMem cares about. Debian 12's
// headers lack the newer ones, so they are spelled out here.
#define FM_UFFD_FEATURE_PAGEFAULT_FLAG_WP   (1ULL << 0)
#define FM_UFFD_FEATURE_EVENT_FORK          (1ULL << 1)
#define FM_UFFD_FEATURE_EVENT_REMAP         (1ULL << 2)
#define FM_UFFD_FEATURE_EVENT_REMOVE        (1ULL << 3)
#define FM_UFFD_FEATURE_MISSING_HUGETLBFS   (1ULL << 4)
#define FM_UFFD_FEATURE_MISSING_SHMEM       (1ULL << 5)
#define FM_UFFD_FEATURE_EVENT_UNMAP         (1ULL << 6)
#define FM_UFFD_FEATURE_SIGBUS              (1ULL << 7)
#define FM_UFFD_FEATURE_THREAD_ID           (1ULL << 8)
#define FM_UFFD_FEATURE_MINOR_HUGETLBFS     (1ULL << 9)
#define FM_UFFD_FEATURE_MINOR_SHMEM         (1ULL << 10)
#define FM_UFFD_FEATURE_EXACT_ADDRESS       (1ULL << 11)
#define FM_UFFD_FEATURE_WP_HUGETLBFS_SHMEM  (1ULL << 12)
#define FM_UFFD_FEATURE_WP_UNPOPULATED      (1ULL << 13)
#define FM_UFFD_FEATURE_POISON              (1ULL << 14)
#define FM_UFFD_FEATURE_WP_ASYNC            (1ULL << 15)
#define FM_UFFD_FEATURE_MOVE                (1ULL << 16)

// Message kinds read from the descriptor.
#define FM_UFFD_EVENT_PAGEFAULT 0x12
#define FM_UFFD_EVENT_FORK      0x13
#define FM_UFFD_EVENT_REMAP     0x14
#define FM_UFFD_EVENT_REMOVE    0x15
#define FM_UFFD_EVENT_UNMAP     0x16

#define FM_UFFD_PAGEFAULT_FLAG_WRITE (1ULL << 0)
#define FM_UFFD_PAGEFAULT_FLAG_WP    (1ULL << 1)
#define FM_UFFD_PAGEFAULT_FLAG_MINOR (1ULL << 2)

#define FM_UFFD_REGISTER_MODE_MISSING (1ULL << 0)
#define FM_UFFD_REGISTER_MODE_WP      (1ULL << 1)
#define FM_UFFD_REGISTER_MODE_MINOR   (1ULL << 2)

/// One message as read(2) returns it, flattened so Swift needs no unions.
typedef struct {
    uint8_t event;       // FM_UFFD_EVENT_*
    uint64_t flags;      // pagefault flags
    uint64_t address;    // pagefault address; remap: from; remove/unmap: start
    uint64_t arg1;       // remap: to; remove/unmap: end; fork: child uffd
    uint64_t arg2;       // remap: len
    uint32_t thread_id;  // pagefault, with FEATURE_THREAD_ID
} fm_uffd_msg;

/// userfaultfd(2) with O_CLOEXEC | O_NONBLOCK (| UFFD_USER_MODE_ONLY if asked).
int fm_uffd_open(int user_mode_only);
/// open("/dev/userfaultfd") + USERFAULTFD_IOC_NEW: the path for processes
/// that may open the device but lack CAP_SYS_PTRACE.
int fm_uffd_open_dev(void);
/// UFFDIO_API. `*features` in: requested; out: what the kernel grants.
int fm_uffd_api(int fd, uint64_t *features, uint64_t *ioctls);
int fm_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls);
int fm_uffd_unregister(int fd, uint64_t start, uint64_t len);
/// UFFDIO_COPY. Returns bytes copied (>= 0) or -errno; on a partial copy the
/// byte count is returned through *copied as well.
int fm_uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len, int write_protect, int dont_wake, int64_t *copied);
int fm_uffd_zeropage(int fd, uint64_t dst, uint64_t len, int dont_wake);
int fm_uffd_writeprotect(int fd, uint64_t start, uint64_t len, int protect, int dont_wake);
int fm_uffd_wake(int fd, uint64_t start, uint64_t len);
int fm_uffd_poison(int fd, uint64_t start, uint64_t len, int dont_wake);
/// UFFDIO_MOVE src -> dst (dst must be registered on the same descriptor).
int fm_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len, int allow_src_holes, int dont_wake, int64_t *moved);
/// Reads up to `max` messages. Returns the count, 0 if none are pending
/// (EAGAIN), or -errno.
int fm_uffd_read(int fd, fm_uffd_msg *out, int max);

int fm_madvise(uint64_t start, uint64_t len, int advice);
int fm_eventfd(void);
int fm_eventfd_signal(int fd);
int fm_eventfd_drain(int fd);
/// poll() on up to two descriptors for POLLIN. Returns a bit mask of ready
/// descriptors (bit 0: fd0, bit 1: fd1), 0 on time-out, or -errno.
int fm_poll2(int fd0, int fd1, int timeout_ms);
/// poll(2) for input on `count` (at most 64) descriptors. A bit mask of the
/// ready ones (bit i: fds[i]), 0 on time-out or EINTR, or -errno.
int64_t fm_poll_many(const int *fds, int count, int timeout_ms);

/// accept4 with SOCK_CLOEXEC (a GNU extension Swift's Glibc does not expose).
int fm_accept(int listener);

/* epoll, unpacked: struct epoll_event is packed on x86-64, so Swift gets
   plain arrays of tokens and event masks instead. */
int fm_epoll_create(void);
int fm_epoll_control(int epfd, int op, int fd, uint32_t events, uint64_t token);
int fm_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms);
/* Non-blocking accept (the listener may be shared by several event loops). */
int fm_accept_nonblocking(int listener);
int fm_set_nonblocking(int fd);
/* Bytes queued for reading on a socket (FIONREAD), or -errno. */
int fm_queued_bytes(int fd);
/* CPUs this process may run on (its affinity mask), or 0 if unknown. */
int fm_usable_cpus(void);
/// pthread_setname_np for the calling thread.
void fm_set_thread_name(const char *name);

/// Relaxed atomic counters on plain memory (Swift's Atomic cannot live in arrays).
static inline void fm_atomic_add_u64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint64_t fm_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fm_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/// Sequentially consistent ones, for state several threads agree on (a
/// cluster's copies of an extent, and the writes under way to it).
static inline uint64_t fm_atomic_load_sc_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void fm_atomic_store_sc_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t fm_atomic_add_sc_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t fm_atomic_or_sc_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t fm_atomic_and_sc_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }

/// Baseline: touches `pages` fresh pages of a region whose MISSING faults a
/// plain C handler thread (poll + read + UFFDIO_COPY from local memory) serves.
/// Writes each touch's latency and the total time. Returns 0 or -errno.
int fm_baseline_uffd_roundtrip(uint64_t pages, uint64_t *latencies_ns, uint64_t *total_ns);

/// mremap(2) (variadic in glibc). Returns the new address or -errno.
int64_t fm_mremap(uint64_t old_address, uint64_t old_size, uint64_t new_size, int flags, uint64_t new_address);
/// UFFDIO_CONTINUE: maps pages the page cache already holds (a memfd region's
/// minor and missing faults). Returns bytes mapped, or -errno (*mapped set).
int fm_uffd_continue(int fd, uint64_t start, uint64_t len, int write_protect, int dont_wake, int64_t *mapped);
/// memfd_create(name, MFD_CLOEXEC, with MFD_HUGETLB | MFD_HUGE_2MB if
/// `huge_pages`) sized to `size` bytes. The fd, or -errno.
int fm_memfd_create(const char *name, uint64_t size, int huge_pages);
/// mmap(MAP_SHARED, with MAP_NORESERVE if `no_reserve`) of `size` bytes of
/// `fd` from offset 0, read-write. The address, or -errno.
int64_t fm_map_shared(int fd, uint64_t size, int no_reserve);
/// mincore(2) of one page: 1 if it is in memory (for a shared file mapping:
/// in the page cache), 0 if not, or -errno.
int fm_page_in_memory(uint64_t address);
/// fallocate(PUNCH_HOLE | KEEP_SIZE): frees [offset, offset + len) of a file's
/// pages (a memfd's page cache). Sends no userfaultfd event. 0 or -errno.
int fm_punch_hole(int fd, uint64_t offset, uint64_t len);
/// Allocates [offset, offset+len) of a file (fallocate mode 0): -ENOSPC when
/// a hugetlbfs file finds no free huge page, instead of a SIGBUS on first touch.
int fm_allocate_range(int fd, uint64_t offset, uint64_t len);
/// mremap(old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, new): moves the
/// pages, replacing what is at `new_address`. 0 or -errno.
int fm_mremap_fixed(uint64_t old_address, uint64_t size, uint64_t new_address);
/// mmap of anonymous private read-write memory exactly at `address`
/// (MAP_FIXED_NOREPLACE, plus MAP_NORESERVE if asked). The address or -errno.
int64_t fm_map_anonymous_at(uint64_t address, uint64_t size, int no_reserve);

/// Handler placement at the floor: mode 1 = a handler thread spinning on a
/// non-blocking read; mode 2 = the faulting thread itself (UFFD_FEATURE_SIGBUS
/// and a signal handler doing UFFDIO_COPY). Same output as above.
int fm_baseline_uffd_placement(uint64_t pages, int mode, uint64_t *latencies_ns, uint64_t *total_ns);

/// The same handler behind a region of `pages` that a workload can use:
/// first touches fault and are served zeros from local memory; no eviction.
struct fm_uffd_floor;
struct fm_uffd_floor *fm_uffd_floor_start(uint64_t pages, int *err);
void *fm_uffd_floor_base(struct fm_uffd_floor *floor);
void fm_uffd_floor_stop(struct fm_uffd_floor *floor);

/// Test support: reads the word at `address` while a callee-saved register
/// (r12 on x86-64) holds `held`, as real code holds a base or a next pointer:
/// a crash handler that dumps memory around the registers then reads `held`.
uint64_t fm_read_holding(const volatile uint64_t *address, const void *held);
/// Test support: fork; the child reads one byte at `address` and exits 0.
/// Returns the child's raw wait status or -errno.
int fm_fork_and_read(uint64_t address);

/// prctl(PR_SET_PDEATHSIG, SIGKILL): this process is killed when the thread
/// that started it exits (even if it is stopped). Returns 0, or -ESRCH when
/// the parent is already gone.
int fm_die_with_parent(void);
/// Keeps the optimizer from deleting a benchmark's touch loop.
void fm_sink(uint64_t value);
/// Monotonic clock in nanoseconds.
uint64_t fm_now_ns(void);
/// The Swift runtime installs a crash handler (which runs swift-backtrace)
/// for SIGSEGV, SIGBUS and the other fatal signals in every process it is
/// loaded into. A C program that links the library, or gets it preloaded,
/// did not ask for that: this puts those handlers (only the runtime's; a
/// program's own stay) back to the default, unless SWIFT_BACKTRACE is set.
/// The runtime's handler stops the other threads and can wait forever when
/// several threads crash at once. Returns how many handlers it reset.
int fm_restore_default_crash_handling(void);
/// A 64-bit hash of one 4 KiB page (page verification, a debugging aid).
/// Never 0, so 0 can mean "no hash".
uint64_t fm_page_hash(const void *page);

/// pthread_atfork(prepare, parent, child). 0 or -errno.
int fm_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void));

/// What tracking a page's first write costs (write_tracking_baseline.c).
typedef struct {
    uint64_t sync_fault_ns;       // median: a write-protect fault served by a handler thread
    uint64_t async_write_ns;      // median: the same write under UFFD_FEATURE_WP_ASYNC
    uint64_t scan_ns;             // one PAGEMAP_SCAN finding and re-protecting every written page
    uint64_t scan_written_pages;  // how many it found (all of them, if it works)
} fm_write_tracking_t;
/// Measures both over `pages` populated anonymous pages. 0, or -errno.
int fm_baseline_write_tracking(uint64_t pages, fm_write_tracking_t *out);

#ifdef __cplusplus
}
#endif
#endif

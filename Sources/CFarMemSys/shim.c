#define _GNU_SOURCE
#include "cfarmemsys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

// Newer uapi pieces missing from Debian 12's 6.1 headers.
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFDIO_POISON
struct uffdio_poison { struct uffdio_range range; __u64 mode; __s64 updated; };
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 move; };
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
#endif

static inline int neg_errno(void) { return -errno; }

int fm_uffd_open(int user_mode_only) {
    int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
    long fd = syscall(SYS_userfaultfd, flags);
    return fd < 0 ? neg_errno() : (int)fd;
}

int fm_uffd_open_dev(void) {
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return neg_errno();
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int err = fd < 0 ? neg_errno() : 0;
    close(dev);
    return fd < 0 ? err : fd;
}

int fm_uffd_api(int fd, uint64_t *features, uint64_t *ioctls) {
    struct uffdio_api api = { .api = UFFD_API, .features = *features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) return neg_errno();
    *features = api.features;
    if (ioctls) *ioctls = api.ioctls;
    return 0;
}

int fm_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls) {
    struct uffdio_register reg = { .range = { start, len }, .mode = mode };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) return neg_errno();
    if (ioctls) *ioctls = reg.ioctls;
    return 0;
}

int fm_uffd_unregister(int fd, uint64_t start, uint64_t len) {
    struct uffdio_range range = { start, len };
    return ioctl(fd, UFFDIO_UNREGISTER, &range) < 0 ? neg_errno() : 0;
}

int fm_uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len, int write_protect, int dont_wake, int64_t *copied) {
    struct uffdio_copy c = {
        .dst = dst, .src = (uint64_t)(uintptr_t)src, .len = len,
        .mode = (write_protect ? UFFDIO_COPY_MODE_WP : 0) | (dont_wake ? UFFDIO_COPY_MODE_DONTWAKE : 0),
    };
    int rc = ioctl(fd, UFFDIO_COPY, &c);
    int err = rc < 0 ? neg_errno() : 0;
    if (copied) *copied = c.copy;
    return rc < 0 ? err : (int)c.copy;
}

int fm_uffd_zeropage(int fd, uint64_t dst, uint64_t len, int dont_wake) {
    struct uffdio_zeropage z = { .range = { dst, len }, .mode = dont_wake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0 };
    return ioctl(fd, UFFDIO_ZEROPAGE, &z) < 0 ? neg_errno() : 0;
}

int fm_uffd_writeprotect(int fd, uint64_t start, uint64_t len, int protect, int dont_wake) {
    struct uffdio_writeprotect wp = {
        .range = { start, len },
        .mode = (protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (dont_wake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0),
    };
    return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0 ? neg_errno() : 0;
}

int fm_uffd_wake(int fd, uint64_t start, uint64_t len) {
    struct uffdio_range range = { start, len };
    return ioctl(fd, UFFDIO_WAKE, &range) < 0 ? neg_errno() : 0;
}

int fm_uffd_poison(int fd, uint64_t start, uint64_t len, int dont_wake) {
    struct uffdio_poison p = { .range = { start, len }, .mode = dont_wake ? UFFDIO_POISON_MODE_DONTWAKE : 0 };
    return ioctl(fd, UFFDIO_POISON, &p) < 0 ? neg_errno() : 0;
}

int fm_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len, int allow_src_holes, int dont_wake, int64_t *moved) {
    struct uffdio_move m = {
        .dst = dst, .src = src, .len = len,
        .mode = (allow_src_holes ? UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES : 0) | (dont_wake ? UFFDIO_MOVE_MODE_DONTWAKE : 0),
    };
    int rc = ioctl(fd, UFFDIO_MOVE, &m);
    int err = rc < 0 ? neg_errno() : 0;
    if (moved) *moved = m.move;
    return rc < 0 ? err : (int)m.move;
}

#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif

int fm_uffd_continue(int fd, uint64_t start, uint64_t len, int write_protect, int dont_wake, int64_t *mapped) {
    struct uffdio_continue c = {
        .range = {start, len},
        .mode = (write_protect ? UFFDIO_CONTINUE_MODE_WP : 0) | (dont_wake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0),
    };
    int rc = ioctl(fd, UFFDIO_CONTINUE, &c);
    int err = rc < 0 ? neg_errno() : 0;
    if (mapped) *mapped = c.mapped;
    return rc < 0 ? err : (int)c.mapped;
}

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

int fm_memfd_create(const char *name, uint64_t size, int huge_pages) {
    int fd = memfd_create(name, MFD_CLOEXEC | (huge_pages ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
    if (fd < 0) return neg_errno();
    if (ftruncate(fd, (off_t)size) != 0) {
        int err = neg_errno();
        close(fd);
        return err;
    }
    return fd;
}

int64_t fm_map_shared(int fd, uint64_t size, int no_reserve) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | (no_reserve ? MAP_NORESERVE : 0), fd, 0);
    return p == MAP_FAILED ? neg_errno() : (int64_t)(uintptr_t)p;
}

int fm_page_in_memory(uint64_t address) {
    unsigned char present = 0;
    return mincore((void *)(uintptr_t)address, 4096, &present) < 0 ? neg_errno() : (present & 1);
}

int fm_punch_hole(int fd, uint64_t offset, uint64_t len) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) < 0 ? neg_errno() : 0;
}

int fm_allocate_range(int fd, uint64_t offset, uint64_t len) {
    return fallocate(fd, 0, (off_t)offset, (off_t)len) < 0 ? neg_errno() : 0;
}

int fm_uffd_read(int fd, fm_uffd_msg *out, int max) {
    struct uffd_msg msgs[64];
    if (max > 64) max = 64;
    ssize_t n = read(fd, msgs, sizeof(struct uffd_msg) * (size_t)max);
    if (n < 0) return errno == EAGAIN ? 0 : neg_errno();
    int count = (int)(n / (ssize_t)sizeof(struct uffd_msg));
    for (int i = 0; i < count; i++) {
        struct uffd_msg *m = &msgs[i];
        fm_uffd_msg *o = &out[i];
        memset(o, 0, sizeof(*o));
        o->event = m->event;
        switch (m->event) {
        case UFFD_EVENT_PAGEFAULT:
            o->flags = m->arg.pagefault.flags;
            o->address = m->arg.pagefault.address;
            o->thread_id = m->arg.pagefault.feat.ptid;
            break;
        case UFFD_EVENT_FORK:
            o->arg1 = m->arg.fork.ufd;
            break;
        case UFFD_EVENT_REMAP:
            o->address = m->arg.remap.from;
            o->arg1 = m->arg.remap.to;
            o->arg2 = m->arg.remap.len;
            break;
        case UFFD_EVENT_REMOVE:
        case UFFD_EVENT_UNMAP:
            o->address = m->arg.remove.start;
            o->arg1 = m->arg.remove.end;
            break;
        }
    }
    return count;
}

int fm_madvise(uint64_t start, uint64_t len, int advice) {
    return madvise((void *)(uintptr_t)start, len, advice) < 0 ? neg_errno() : 0;
}

int fm_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? neg_errno() : fd;
}

int fm_eventfd_signal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof one) < 0 && errno != EAGAIN ? neg_errno() : 0;
}

int fm_eventfd_drain(int fd) {
    uint64_t value;
    return read(fd, &value, sizeof value) < 0 && errno != EAGAIN ? neg_errno() : 0;
}

int fm_poll2(int fd0, int fd1, int timeout_ms) {
    struct pollfd p[2] = { { .fd = fd0, .events = POLLIN }, { .fd = fd1, .events = POLLIN } };
    int n = poll(p, fd1 >= 0 ? 2 : 1, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : neg_errno();
    int mask = 0;
    if (p[0].revents) mask |= 1;
    if (fd1 >= 0 && p[1].revents) mask |= 2;
    return mask;
}

int64_t fm_poll_many(const int *fds, int count, int timeout_ms) {
    struct pollfd p[64];
    if (count > 64) count = 64;
    for (int i = 0; i < count; i++) p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
    int n = poll(p, (nfds_t)count, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : neg_errno();
    int64_t mask = 0;
    for (int i = 0; i < count; i++) if (p[i].revents) mask |= (int64_t)1 << i;
    return mask;
}

int fm_fork_and_read(uint64_t address) {
    pid_t pid = fork();
    if (pid < 0) return neg_errno();
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);   /* no crash reporter: just die of the signal */
        signal(SIGBUS, SIG_DFL);
        volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)address;
        uint8_t v = *p;
        _exit(v == 0xFF ? 0 : 0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return neg_errno();
    }
    return status;
}

void fm_sink(uint64_t value) {
    __asm__ volatile("" : : "r"(value) : "memory");
}

uint64_t fm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t fm_read_holding(const volatile uint64_t *address, const void *held) {
#if defined(__x86_64__)
    uint64_t value;
    __asm__ volatile("mov %1, %%r12\n\tmov (%2), %0" : "=r"(value) : "r"(held), "r"(address) : "r12", "memory");
    return value;
#else
    (void)held;
    return *address;
#endif
}

uint64_t fm_page_hash(const void *page) {
    const uint64_t *words = page;
    uint64_t hash = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 512; i++) {
        hash ^= words[i];
        hash *= 0xff51afd7ed558ccdull;
        hash ^= hash >> 29;
    }
    return hash ? hash : 1;
}

int fm_accept(int listener) {
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    return fd < 0 ? neg_errno() : fd;
}

int fm_accept_nonblocking(int listener) {
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return fd < 0 ? neg_errno() : fd;
}

int fm_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return neg_errno();
    return 0;
}

int fm_queued_bytes(int fd) {
    int queued = 0;
    return ioctl(fd, FIONREAD, &queued) < 0 ? neg_errno() : queued;
}

int fm_usable_cpus(void) {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
}

int fm_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? neg_errno() : fd;
}

int fm_epoll_control(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = { .events = events, .data.u64 = token };
    return epoll_ctl(epfd, op, fd, &event) < 0 ? neg_errno() : 0;
}

int fm_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event ready[64];
    int n = epoll_wait(epfd, ready, capacity < 64 ? capacity : 64, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : neg_errno();
    for (int i = 0; i < n; i++) {
        tokens[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return n;
}

void fm_set_thread_name(const char *name) {
    pthread_setname_np(pthread_self(), name);
}

int64_t fm_mremap(uint64_t old_address, uint64_t old_size, uint64_t new_size, int flags, uint64_t new_address) {
    void *p = mremap((void *)(uintptr_t)old_address, old_size, new_size, flags, (void *)(uintptr_t)new_address);
    return p == MAP_FAILED ? neg_errno() : (int64_t)(uintptr_t)p;
}

int fm_mremap_fixed(uint64_t old_address, uint64_t size, uint64_t new_address) {
    void *p = mremap((void *)(uintptr_t)old_address, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(uintptr_t)new_address);
    return p == MAP_FAILED ? neg_errno() : 0;
}

int64_t fm_map_anonymous_at(uint64_t address, uint64_t size, int no_reserve) {
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | (no_reserve ? MAP_NORESERVE : 0);
    void *p = mmap((void *)(uintptr_t)address, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) return neg_errno();
    if ((uintptr_t)p != address) {   // a kernel before 4.17 takes the flag as a hint
        munmap(p, size);
        return -EEXIST;
    }
    return (int64_t)(uintptr_t)p;
}

int fm_die_with_parent(void) {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return neg_errno();
    // The parent may have gone before the call: then nobody would signal us.
    return getppid() != parent ? -ESRCH : 0;
}

int fm_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void)) {
    int err = pthread_atfork(prepare, parent, child);
    return err ? -err : 0;
}

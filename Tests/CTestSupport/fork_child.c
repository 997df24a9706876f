// A forked child that checks and writes a far region (the fork tests).
// The test process is multithreaded: between fork and _exit the child runs
// only this code, which takes no lock and allocates nothing.
#define _GNU_SOURCE
#include "cfarmemtestsupport.h"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_pass(uint64_t base, int pages, int pass) {
    for (int page = 0; page < pages; page++) {
        volatile uint64_t *words = (volatile uint64_t *)(uintptr_t)(base + (uint64_t)page * 4096);
        // Read first: the page comes in clean (write-protected in the child),
        // and the write takes a write-protect fault on the child's userfaultfd.
        if (words[511] == fmt_child_word(page, 511, pass)) continue;
        for (int w = 0; w < 512; w++) words[w] = fmt_child_word(page, w, pass);
    }
}

int fmt_fork_check_and_write(uint64_t base, int pages, const uint64_t *expected, uint64_t (*hash)(const void *),
                             int mode, fmt_fork_result_t *result) {
    // The child reports here: a shared page, mapped before the fork.
    fmt_fork_result_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) return -errno;
    shared->first_bad_page = -1;
    uint64_t started = now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        munmap(shared, 4096);
        return err;
    }
    if (pid == 0) {
        if (mode == FMT_CHILD_FORKS) {
            // The grandchild checks (through the userfaultfd the kernel gives it
            // at this fork, handed to the same monitor); the child reports it.
            pid_t grandchild = fork();
            if (grandchild < 0) _exit(4);
            if (grandchild == 0) mode = FMT_CHILD_CHECKS;
            else {
                int status = 0;
                while (waitpid(grandchild, &status, 0) < 0 && errno == EINTR) {}
                _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 3);
            }
        }
        uint64_t checked = now_ns();
        for (int page = 0; page < pages; page++) {
            if (hash((const void *)(uintptr_t)(base + (uint64_t)page * 4096)) != expected[page]) {
                shared->first_bad_page = page;
                _exit(1);
            }
        }
        shared->check_ns = now_ns() - checked;
        if (mode == FMT_CHILD_WRITES) {
            // Twice over the whole region: the first pass's pages are evicted
            // (written back from under the child) before the second rewrites them.
            write_pass(base, pages, 1);
            write_pass(base, pages, 2);
        } else if (mode == FMT_CHILD_UNMAPS) {
            // Only its own mapping goes: the parent's pages must stay.
            if (munmap((void *)(uintptr_t)base, (size_t)pages * 4096) != 0) _exit(2);
        }
        _exit(0);
    }
    result->fork_ns = now_ns() - started;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            int err = -errno;
            munmap(shared, 4096);
            return err;
        }
    }
    result->child_ns = now_ns() - started;
    result->check_ns = shared->check_ns;
    result->first_bad_page = shared->first_bad_page;
    munmap(shared, 4096);
    return status;
}

int fmt_fork_waiting(uint64_t address, int *release_fd) {
    int fds[2];
    if (pipe(fds) != 0) return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        close(fds[0]);
        close(fds[1]);
        return err;
    }
    if (pid == 0) {
        signal(SIGBUS, SIG_DFL);   // no crash reporter: die of it, the parent reads the status
        close(fds[1]);
        char go;
        while (read(fds[0], &go, 1) < 0 && errno == EINTR) {}
        _exit(*(volatile uint8_t *)(uintptr_t)address & 0x7f);
    }
    close(fds[0]);
    *release_fd = fds[1];
    return pid;
}

int fmt_release_and_wait(int pid, int release_fd) {
    char go = 1;
    (void)write(release_fd, &go, 1);
    close(release_fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -errno;
    }
    return status;
}

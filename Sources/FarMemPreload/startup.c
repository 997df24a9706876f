// Start-up and exit: the environment, the library handle, fork, the report.
//
//   FARMEM_SERVERS=host:port[,host:port...]  required
//   FARMEM_BUDGET=256MiB        resident far memory at most (default 256 MiB)
//   FARMEM_MIN_ALLOC=1MiB       smaller allocations stay local (default 1 MiB)
//   FARMEM_TOKEN=...            the servers' shared token, if they have one
//   FARMEM_FALLBACK=local       run with local memory if the servers cannot be used
//   FARMEM_REPORT=1             one summary line on stderr at exit
//   FARMEM_METRICS=host:port    statistics for Prometheus (read by farmem_open)
#define _GNU_SOURCE
#include "farmem_preload.h"
#include "farmem_arena.h"
#include "farmemory.h"
#include "cfarmemsys.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Atomic int fm_state = fm_state_starting;
size_t fm_min_alloc = (size_t)1 << 20;
void *fm_library;
static bool reports;
static uint64_t budget_bytes;
static pid_t parent_pid;
/// stderr as it was at start: programs such as coreutils close fd 2 in an
/// atexit handler, before the report is written.
static int report_descriptor = 2;

static void say(const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t written = write(report_descriptor, text, length);
        if (written <= 0) return;
        text += written;
        length -= (size_t)written;
    }
}

static const char *environment(const char *name) {
    const char *value = getenv(name);
    return value && *value ? value : NULL;
}

/// A fork's child that touches far memory gets SIGSEGV (see
/// fm_far_reserve_in_child); where the program has no handler of its own,
/// this says why before the default action ends it.
static void explain_fault_in_child(int number, siginfo_t *info, void *context) {
    (void)context;
    if (info && (fm_far_contains(info->si_addr, fm_far_block) || fm_far_contains(info->si_addr, fm_far_mapping))) {
        char message[256];
        snprintf(message, sizeof message,
                 "farmem: process %d, a fork of %d, touched far memory at %p: far memory is not inherited across fork (see README, fork)\n",
                 (int)getpid(), (int)parent_pid, info->si_addr);
        say(message);
    }
    signal(number, SIG_DFL);   // the access repeats and the default action ends the process
}

static void after_fork_in_child(void) {
    fm_private_after_fork_in_child();
    if (fm_state != fm_state_far) { fm_far_reserve_in_child(); return; }
    fm_state = fm_state_forked;
    fm_far_reserve_in_child();
    struct sigaction current;
    if (sigaction(SIGSEGV, NULL, &current) == 0 && !(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_DFL) {
        struct sigaction explain = {.sa_sigaction = explain_fault_in_child, .sa_flags = SA_SIGINFO};
        sigemptyset(&explain.sa_mask);
        sigaction(SIGSEGV, &explain, NULL);
    }
}

static void format_bytes(char *out, size_t size, uint64_t bytes) {
    if (bytes >= (1ull << 30)) snprintf(out, size, "%.2f GiB", (double)bytes / (1ull << 30));
    else snprintf(out, size, "%.1f MiB", (double)bytes / (1ull << 20));
}

__attribute__((destructor)) static void report_at_exit(void) {
    if (!reports || fm_state != fm_state_far || getpid() != parent_pid) return;
    fm_far_counters_t far = fm_far_counters();
    farmem_stats_t stats = {0};
    uint64_t p50 = 0, p99 = 0;
    fm_internal_enter();
    farmem_stats(fm_library, &stats);
    farmem_fault_latency(fm_library, &p50, &p99);
    fm_internal_leave();
    char allocated[32], peak[32], budget[32], line[640];
    format_bytes(allocated, sizeof allocated, far.bytes_allocated);
    format_bytes(peak, sizeof peak, far.bytes_peak);
    format_bytes(budget, sizeof budget, budget_bytes);
    snprintf(line, sizeof line,
             "farmem: far %s allocated in %llu blocks (peak %s live, budget %s); %llu faults, %llu fetches (+%llu prefetched), "
             "%llu evictions, %llu write-backs; fault p50 %.1f us, p99 %.1f us; %llu allocations served locally\n",
             allocated, (unsigned long long)far.blocks_allocated, peak, budget, (unsigned long long)stats.faults,
             (unsigned long long)stats.fetches, (unsigned long long)stats.prefetched, (unsigned long long)stats.evictions,
             (unsigned long long)stats.write_backs, (double)p50 / 1000, (double)p99 / 1000,
             (unsigned long long)far.local_fallbacks);
    say(line);
}

/// Stops the program at start (or, with FARMEM_FALLBACK=local, runs it on local memory).
static void cannot_start(const char *why) {
    char message[640];
    if (environment("FARMEM_FALLBACK") && strcmp(environment("FARMEM_FALLBACK"), "local") == 0) {
        snprintf(message, sizeof message, "farmem: %s; FARMEM_FALLBACK=local: running with local memory only\n", why);
        say(message);
        fm_state = fm_state_local;
        return;
    }
    snprintf(message, sizeof message, "farmem: %s (set FARMEM_FALLBACK=local to run with local memory instead)\n", why);
    say(message);
    _exit(1);
}

__attribute__((constructor)) static void start(void) {
    parent_pid = getpid();
    fm_real();
    fm_restore_default_crash_handling();   // its crashes are its own, as without the preload
    reports = environment("FARMEM_REPORT") && strcmp(environment("FARMEM_REPORT"), "0") != 0;
    if (reports) {
        int copy = fcntl(2, F_DUPFD_CLOEXEC, 100);   // high, out of the way of programs that expect low numbers
        if (copy >= 0) report_descriptor = copy;
    }
    const char *servers = environment("FARMEM_SERVERS");
    if (!servers) { cannot_start("FARMEM_SERVERS is not set (HOST:PORT[,HOST:PORT...])"); return; }
    budget_bytes = 256ull << 20;
    char why[512];
    if (environment("FARMEM_BUDGET") && fm_parse_bytes(environment("FARMEM_BUDGET"), &budget_bytes) != 0) {
        snprintf(why, sizeof why, "FARMEM_BUDGET=%s is not a byte count (such as 256MiB)", environment("FARMEM_BUDGET"));
        cannot_start(why);
        return;
    }
    uint64_t min_alloc = fm_min_alloc;
    if (environment("FARMEM_MIN_ALLOC") && (fm_parse_bytes(environment("FARMEM_MIN_ALLOC"), &min_alloc) != 0 || min_alloc < 4096)) {
        snprintf(why, sizeof why, "FARMEM_MIN_ALLOC=%s is not a byte count of at least 4KiB", environment("FARMEM_MIN_ALLOC"));
        cannot_start(why);
        return;
    }
    fm_min_alloc = (size_t)min_alloc;
    char error[384] = "";
    fm_internal_enter();
    fm_library = farmem_open(servers, (size_t)budget_bytes, environment("FARMEM_TOKEN"), error, sizeof error);
    fm_internal_leave();
    if (!fm_library) {
        snprintf(why, sizeof why, "cannot use far memory at %s: %s", servers, error);
        cannot_start(why);
        return;
    }
    pthread_atfork(NULL, NULL, after_fork_in_child);
    fm_state = fm_state_far;
}

// Crash handling that a library must not impose on its host program.
#define _GNU_SOURCE
#include "cfarmemsys.h"
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

int fm_restore_default_crash_handling(void) {
    const char *asked = getenv("SWIFT_BACKTRACE");
    if (asked && *asked) return 0;
    // The signals the Swift runtime's crash handler takes (CrashHandlerLinux).
    static const int signals[] = {SIGQUIT, SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGSEGV, SIGTRAP};
    int reset = 0;
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        struct sigaction current;
        if (sigaction(signals[i], NULL, &current) != 0) continue;
        void *handler = (current.sa_flags & SA_SIGINFO) ? (void *)current.sa_sigaction : (void *)current.sa_handler;
        if (handler == (void *)SIG_DFL || handler == (void *)SIG_IGN) continue;
        // Only the runtime's own handler: one the program installed stays.
        Dl_info where;
        if (dladdr(handler, &where) && where.dli_fname && strstr(where.dli_fname, "libswiftCore")) {
            struct sigaction standard;
            memset(&standard, 0, sizeof standard);
            standard.sa_handler = SIG_DFL;
            sigemptyset(&standard.sa_mask);
            if (sigaction(signals[i], &standard, NULL) == 0) reset++;
        }
    }
    return reset;
}

// Threads the library starts are internal for life: a pager thread that took
// far memory for its own buffers would fault on pages only it can serve.
// pthread_create is interposed only to pass the mark on to the library's
// threads (a thread created by an internal thread is internal); the
// program's own threads are created untouched.
#define _GNU_SOURCE
#include "farmem_preload.h"
#include <errno.h>
#include <pthread.h>

__thread int fm_internal __attribute__((tls_model("initial-exec")));

typedef struct {
    void *(*start)(void *);
    void *argument;
} internal_start_t;

static void *start_internal(void *context) {
    internal_start_t start = *(internal_start_t *)context;
    fm_private_free(context);
    fm_internal = 1;
    return start.start(start.argument);
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attributes, void *(*start)(void *), void *argument) {
    const fm_real_functions_t *real = fm_real();
    if (!fm_internal) return real->pthread_create(thread, attributes, start, argument);
    internal_start_t *context = fm_private_allocate(sizeof *context, 0);
    if (!context) return EAGAIN;   // as pthread_create reports a lack of resources
    *context = (internal_start_t){start, argument};
    int result = real->pthread_create(thread, attributes, start_internal, context);
    if (result != 0) fm_private_free(context);
    return result;
}

// Thin C layer over libibverbs and librdmacm for FarMem's RDMA transport.
// Everything returns >= 0 (or a handle) on success and -errno (or NULL with
// *err = -errno) on failure. Completions are polled, never waited for with
// interrupts, and every wait has a time-out, so a lost peer is an error, not a hang.
#ifndef CFARMEMRDMA_H
#define CFARMEMRDMA_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Number of RDMA devices present (0: no RDMA here).
int fm_rdma_device_count(void);

// ---- client side -----------------------------------------------------------

typedef struct fm_rdma_conn fm_rdma_conn;

/// Resolves HOST:PORT over RDMA-CM, creates a protection domain, completion
/// queue, RC queue pair and a registered local buffer of `buffer_size` bytes,
/// and connects, sending `private_data` (the server's ticket). On failure
/// returns NULL, sets *err to -errno and writes a reason into `why`.
fm_rdma_conn *fm_rdma_connect(const char *host, uint16_t port, const void *private_data, uint8_t private_len,
                              size_t buffer_size, int timeout_ms, int *err, char *why, size_t why_len);
/// The registered local buffer (page aligned).
void *fm_rdma_buffer(fm_rdma_conn *conn);
/// Posts `count` RDMA READs (or WRITEs) of `length` bytes each with one
/// doorbell: remote_addrs[i] <-> buffer + local_offsets[i], all under `rkey`,
/// then polls until the last completes. Returns 0, -ETIMEDOUT, or -EIO with
/// the completion status in *wc_status.
/// RDMA READs of `count` pages (4 KiB each): remote_addrs[i] -> local +
/// local_offsets[i], straight into `local` (a page cache, through a shared
/// region's second mapping), which is registered for the transfer and
/// deregistered after it: no copy out of the connection's buffer. As
/// fm_rdma_transfer; *registration_failed set if `local` could not be
/// registered (nothing was posted: use the buffer instead).
int fm_rdma_read_in_place(fm_rdma_conn *conn, uint32_t count, const uint64_t *remote_addrs, const uint64_t *local_offsets,
                          void *local, uint32_t rkey, int timeout_ms, int *wc_status, int *registration_failed);
int fm_rdma_transfer(fm_rdma_conn *conn, int write, uint32_t count, const uint64_t *remote_addrs,
                     const uint64_t *local_offsets, uint32_t length, uint32_t rkey, int timeout_ms, int *wc_status);
const char *fm_rdma_status_string(int wc_status);
void fm_rdma_close(fm_rdma_conn *conn);

// ---- server side -----------------------------------------------------------

typedef struct fm_rdma_listener fm_rdma_listener;

/// Binds an RDMA-CM listener to HOST:PORT (port 0 picks one, see *bound_port).
fm_rdma_listener *fm_rdma_listen(const char *host, uint16_t port, uint16_t *bound_port, int *err, char *why, size_t why_len);

enum { FM_RDMA_EVENT_NONE = 0, FM_RDMA_EVENT_CONNECT_REQUEST = 1, FM_RDMA_EVENT_ESTABLISHED = 2,
       FM_RDMA_EVENT_DISCONNECTED = 3, FM_RDMA_EVENT_OTHER = 4 };

typedef struct {
    int type;
    void *id;                  // the connection's rdma_cm_id
    uint8_t private_data[56];
    uint8_t private_len;
    int cm_event;              // raw RDMA_CM_EVENT_* for logs
} fm_rdma_event;

/// Waits up to timeout_ms for the next connection event (FM_RDMA_EVENT_NONE on time-out).
int fm_rdma_next_event(fm_rdma_listener *listener, fm_rdma_event *out, int timeout_ms);
/// Allocates a protection domain on the device of connection `id`.
void *fm_rdma_alloc_pd(void *id);
int fm_rdma_dealloc_pd(void *pd);
/// Creates the connection's queue pair in `pd` and accepts it.
int fm_rdma_accept(void *id, void *pd);
/// Rejects a connection request and frees its id.
int fm_rdma_reject(void *id, const char *reason);
/// Disconnects and frees a server-side connection.
void fm_rdma_drop(void *id);
/// Registers [addr, addr+length) in `pd` for remote read and write.
void *fm_rdma_register(void *pd, void *addr, size_t length, int *err);
uint32_t fm_rdma_rkey(void *mr);
int fm_rdma_deregister(void *mr);
void fm_rdma_listener_close(fm_rdma_listener *listener);
/// Last RDMA-CM event name, for messages.
const char *fm_rdma_cm_event_name(int cm_event);

#ifdef __cplusplus
}
#endif
#endif

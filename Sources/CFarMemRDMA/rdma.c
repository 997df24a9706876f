#define _GNU_SOURCE
#include "cfarmemrdma.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#define FM_RDMA_MAX_WR 512

struct fm_rdma_conn {
    struct rdma_event_channel *channel;
    struct rdma_cm_id *id;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_mr *mr;
    void *buffer;
    size_t buffer_size;
    uint64_t next_wr_id;
};

struct fm_rdma_listener {
    struct rdma_event_channel *channel;
    struct rdma_cm_id *id;
};

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Says which verbs or RDMA-CM call failed and why; returns -errno as the error code. */
static int call_failed(char *why, size_t why_len, const char *call) {
    int error = errno;
    snprintf(why, why_len, "%s: %s", call, strerror(error));
    return -error;
}

int fm_rdma_device_count(void) {
    int count = 0;
    struct ibv_device **list = ibv_get_device_list(&count);
    if (list) ibv_free_device_list(list);
    return list ? count : 0;
}

const char *fm_rdma_cm_event_name(int cm_event) { return rdma_event_str((enum rdma_cm_event_type)cm_event); }
const char *fm_rdma_status_string(int wc_status) { return ibv_wc_status_str((enum ibv_wc_status)wc_status); }

/// Waits for one CM event of type `expected` on a non-blocking channel.
static int wait_cm_event(struct rdma_event_channel *channel, enum rdma_cm_event_type expected, int timeout_ms,
                         char *why, size_t why_len) {
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        struct rdma_cm_event *event = NULL;
        if (rdma_get_cm_event(channel, &event) == 0) {
            enum rdma_cm_event_type type = event->event;
            int status = event->status;
            rdma_ack_cm_event(event);
            if (type == expected) return 0;
            snprintf(why, why_len, "expected %s, got %s (status %d)", rdma_event_str(expected), rdma_event_str(type), status);
            return type == RDMA_CM_EVENT_REJECTED ? -ECONNREFUSED : -EHOSTUNREACH;
        }
        if (errno != EAGAIN) return call_failed(why, why_len, "rdma_get_cm_event");
        uint64_t now = now_ms();
        if (now >= deadline) { snprintf(why, why_len, "timed out waiting for %s", rdma_event_str(expected)); return -ETIMEDOUT; }
        struct pollfd p = { .fd = channel->fd, .events = POLLIN };
        poll(&p, 1, (int)(deadline - now));
    }
}

void fm_rdma_close(fm_rdma_conn *c) {
    if (!c) return;
    if (c->id && c->id->qp) { rdma_disconnect(c->id); rdma_destroy_qp(c->id); }
    if (c->mr) ibv_dereg_mr(c->mr);
    if (c->cq) ibv_destroy_cq(c->cq);
    if (c->pd) ibv_dealloc_pd(c->pd);
    if (c->id) rdma_destroy_id(c->id);
    if (c->channel) rdma_destroy_event_channel(c->channel);
    free(c->buffer);
    free(c);
}

fm_rdma_conn *fm_rdma_connect(const char *host, uint16_t port, const void *private_data, uint8_t private_len,
                              size_t buffer_size, int timeout_ms, int *err, char *why, size_t why_len) {
    fm_rdma_conn *c = calloc(1, sizeof *c);
    struct addrinfo *ai = NULL;
    int rc = 0;
    why[0] = 0;
    if (!c) { *err = -ENOMEM; return NULL; }
    c->buffer_size = buffer_size;
    if (posix_memalign(&c->buffer, 4096, buffer_size) != 0) { rc = -ENOMEM; goto fail; }
    memset(c->buffer, 0, buffer_size);
    if (!(c->channel = rdma_create_event_channel())) { rc = -errno; snprintf(why, why_len, "no RDMA-CM (%s)", strerror(errno)); goto fail; }
    fcntl(c->channel->fd, F_SETFL, fcntl(c->channel->fd, F_GETFL) | O_NONBLOCK);
    if (rdma_create_id(c->channel, &c->id, NULL, RDMA_PS_TCP)) { rc = call_failed(why, why_len, "rdma_create_id"); goto fail; }
    char service[8];
    snprintf(service, sizeof service, "%u", port);
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };
    if (getaddrinfo(host, service, &hints, &ai) != 0) { rc = -EINVAL; snprintf(why, why_len, "cannot resolve %s", host); goto fail; }
    if (rdma_resolve_addr(c->id, NULL, ai->ai_addr, timeout_ms)) { rc = call_failed(why, why_len, "rdma_resolve_addr"); goto fail; }
    if ((rc = wait_cm_event(c->channel, RDMA_CM_EVENT_ADDR_RESOLVED, timeout_ms, why, why_len))) goto fail;
    if (rdma_resolve_route(c->id, timeout_ms)) { rc = call_failed(why, why_len, "rdma_resolve_route"); goto fail; }
    if ((rc = wait_cm_event(c->channel, RDMA_CM_EVENT_ROUTE_RESOLVED, timeout_ms, why, why_len))) goto fail;
    if (!(c->pd = ibv_alloc_pd(c->id->verbs))) { rc = call_failed(why, why_len, "ibv_alloc_pd"); goto fail; }
    if (!(c->cq = ibv_create_cq(c->id->verbs, FM_RDMA_MAX_WR * 2, NULL, NULL, 0))) { rc = call_failed(why, why_len, "ibv_create_cq"); goto fail; }
    struct ibv_qp_init_attr qp = {
        .send_cq = c->cq, .recv_cq = c->cq, .qp_type = IBV_QPT_RC, .sq_sig_all = 0,
        .cap = { .max_send_wr = FM_RDMA_MAX_WR, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1 },
    };
    if (rdma_create_qp(c->id, c->pd, &qp)) { rc = call_failed(why, why_len, "rdma_create_qp"); goto fail; }
    if (!(c->mr = ibv_reg_mr(c->pd, c->buffer, buffer_size, IBV_ACCESS_LOCAL_WRITE))) { rc = call_failed(why, why_len, "ibv_reg_mr"); goto fail; }
    struct rdma_conn_param param = {
        .private_data = private_data, .private_data_len = private_len,
        .initiator_depth = 16, .responder_resources = 16, .retry_count = 7, .rnr_retry_count = 7,
    };
    if (rdma_connect(c->id, &param)) { rc = call_failed(why, why_len, "rdma_connect"); goto fail; }
    if ((rc = wait_cm_event(c->channel, RDMA_CM_EVENT_ESTABLISHED, timeout_ms, why, why_len))) goto fail;
    freeaddrinfo(ai);
    return c;
fail:
    if (ai) freeaddrinfo(ai);
    fm_rdma_close(c);
    *err = rc ? rc : -EIO;
    return NULL;
}

void *fm_rdma_buffer(fm_rdma_conn *c) { return c->buffer; }

// Posts the READs/WRITEs between remote_addrs[i] and local + local_offsets[i]
// (memory registered as `lkey`), then polls until the last completes.
static int post_and_wait(fm_rdma_conn *c, int write, uint32_t count, const uint64_t *remote_addrs, uint64_t local,
                         const uint64_t *local_offsets, uint32_t length, uint32_t lkey, uint32_t rkey, int timeout_ms,
                         int *wc_status) {
    struct ibv_sge sges[FM_RDMA_MAX_WR];
    struct ibv_send_wr wrs[FM_RDMA_MAX_WR];
    uint64_t last = 0;
    for (uint32_t i = 0; i < count; i++) {
        sges[i] = (struct ibv_sge){ .addr = local + local_offsets[i], .length = length, .lkey = lkey };
        last = ++c->next_wr_id;
        wrs[i] = (struct ibv_send_wr){
            .wr_id = last, .sg_list = &sges[i], .num_sge = 1,
            .opcode = write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ,
            // Only the last is signalled: RC completes in order, and an error
            // on any earlier one still produces a completion.
            .send_flags = i + 1 == count ? IBV_SEND_SIGNALED : 0,
            .wr.rdma = { .remote_addr = remote_addrs[i], .rkey = rkey },
            .next = i + 1 < count ? &wrs[i + 1] : NULL,
        };
    }
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(c->id->qp, wrs, &bad);
    if (rc) return -rc;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    for (unsigned spins = 0;; spins++) {
        struct ibv_wc wc;
        int n = ibv_poll_cq(c->cq, 1, &wc);
        if (n < 0) return -EIO;
        if (n == 1) {
            if (wc.status != IBV_WC_SUCCESS) { *wc_status = wc.status; return -EIO; }
            if (wc.wr_id == last) return 0;
            continue;
        }
        if ((spins & 1023) == 1023 && now_ms() > deadline) return -ETIMEDOUT;
    }
}

int fm_rdma_transfer(fm_rdma_conn *c, int write, uint32_t count, const uint64_t *remote_addrs,
                     const uint64_t *local_offsets, uint32_t length, uint32_t rkey, int timeout_ms, int *wc_status) {
    if (count == 0) return 0;
    if (count > FM_RDMA_MAX_WR) return -E2BIG;
    for (uint32_t i = 0; i < count; i++) {
        if (local_offsets[i] + length > c->buffer_size) return -EINVAL;
    }
    return post_and_wait(c, write, count, remote_addrs, (uint64_t)(uintptr_t)c->buffer, local_offsets, length,
                         c->mr->lkey, rkey, timeout_ms, wc_status);
}

int fm_rdma_read_in_place(fm_rdma_conn *c, uint32_t count, const uint64_t *remote_addrs, const uint64_t *local_offsets,
                          void *local, uint32_t rkey, int timeout_ms, int *wc_status, int *registration_failed) {
    *registration_failed = 0;
    if (count == 0) return 0;
    if (count > FM_RDMA_MAX_WR) return -E2BIG;
    struct ibv_mr *mr = ibv_reg_mr(c->pd, local, (size_t)count * 4096, IBV_ACCESS_LOCAL_WRITE);
    if (!mr) {
        *registration_failed = 1;
        return -errno;
    }
    int rc = post_and_wait(c, 0, count, remote_addrs, (uint64_t)(uintptr_t)local, local_offsets, 4096, mr->lkey, rkey,
                           timeout_ms, wc_status);
    // A READ still in flight (a time-out) cannot land afterwards: its key is
    // invalid once deregistered, so it fails (and the caller drops the connection).
    ibv_dereg_mr(mr);
    return rc;
}

// ---- server side -----------------------------------------------------------

fm_rdma_listener *fm_rdma_listen(const char *host, uint16_t port, uint16_t *bound_port, int *err, char *why, size_t why_len) {
    fm_rdma_listener *l = calloc(1, sizeof *l);
    struct addrinfo *ai = NULL;
    int rc = 0;
    why[0] = 0;
    if (!l) { *err = -ENOMEM; return NULL; }
    if (fm_rdma_device_count() == 0) { rc = -ENODEV; snprintf(why, why_len, "no RDMA device on this host"); goto fail; }
    if (!(l->channel = rdma_create_event_channel())) { rc = -errno; snprintf(why, why_len, "no RDMA-CM (%s)", strerror(errno)); goto fail; }
    fcntl(l->channel->fd, F_SETFL, fcntl(l->channel->fd, F_GETFL) | O_NONBLOCK);
    if (rdma_create_id(l->channel, &l->id, NULL, RDMA_PS_TCP)) { rc = call_failed(why, why_len, "rdma_create_id"); goto fail; }
    char service[8];
    snprintf(service, sizeof service, "%u", port);
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    if (getaddrinfo(host, service, &hints, &ai) != 0) { rc = -EINVAL; snprintf(why, why_len, "cannot resolve %s", host); goto fail; }
    if (rdma_bind_addr(l->id, ai->ai_addr)) { rc = -errno; snprintf(why, why_len, "rdma_bind_addr %s: %s", host, strerror(errno)); goto fail; }
    if (!l->id->verbs) { rc = -ENODEV; snprintf(why, why_len, "%s is not the address of an RDMA device", host); goto fail; }
    if (rdma_listen(l->id, 64)) { rc = call_failed(why, why_len, "rdma_listen"); goto fail; }
    *bound_port = ntohs(rdma_get_src_port(l->id));
    freeaddrinfo(ai);
    return l;
fail:
    if (ai) freeaddrinfo(ai);
    fm_rdma_listener_close(l);
    *err = rc ? rc : -EIO;
    return NULL;
}

void fm_rdma_listener_close(fm_rdma_listener *l) {
    if (!l) return;
    if (l->id) rdma_destroy_id(l->id);
    if (l->channel) rdma_destroy_event_channel(l->channel);
    free(l);
}

int fm_rdma_next_event(fm_rdma_listener *l, fm_rdma_event *out, int timeout_ms) {
    memset(out, 0, sizeof *out);
    struct pollfd p = { .fd = l->channel->fd, .events = POLLIN };
    int n = poll(&p, 1, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    if (n == 0) return 0;
    struct rdma_cm_event *event = NULL;
    if (rdma_get_cm_event(l->channel, &event)) return errno == EAGAIN ? 0 : -errno;
    out->id = event->id;
    out->cm_event = event->event;
    switch (event->event) {
    case RDMA_CM_EVENT_CONNECT_REQUEST:
        out->type = FM_RDMA_EVENT_CONNECT_REQUEST;
        out->private_len = event->param.conn.private_data_len > 56 ? 56 : event->param.conn.private_data_len;
        if (event->param.conn.private_data) memcpy(out->private_data, event->param.conn.private_data, out->private_len);
        break;
    case RDMA_CM_EVENT_ESTABLISHED: out->type = FM_RDMA_EVENT_ESTABLISHED; break;
    // Every way an accepted connection can end is a disconnect to the server.
    case RDMA_CM_EVENT_DISCONNECTED:
    case RDMA_CM_EVENT_TIMEWAIT_EXIT:
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_REJECTED:
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
        out->type = FM_RDMA_EVENT_DISCONNECTED; break;
    default: out->type = FM_RDMA_EVENT_OTHER; break;
    }
    rdma_ack_cm_event(event);
    return 1;
}

void *fm_rdma_alloc_pd(void *id) { return ibv_alloc_pd(((struct rdma_cm_id *)id)->verbs); }
int fm_rdma_dealloc_pd(void *pd) { return -ibv_dealloc_pd(pd); }

int fm_rdma_accept(void *raw_id, void *pd) {
    struct rdma_cm_id *id = raw_id;
    // The server posts nothing: a small CQ for the QP's bookkeeping suffices.
    struct ibv_cq *cq = ibv_create_cq(id->verbs, 4, NULL, NULL, 0);
    if (!cq) return -errno;
    struct ibv_qp_init_attr qp = {
        .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
        .cap = { .max_send_wr = 1, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1 },
    };
    if (rdma_create_qp(id, pd, &qp)) { int rc = -errno; ibv_destroy_cq(cq); return rc; }
    id->context = cq;
    struct rdma_conn_param param = { .responder_resources = 16, .initiator_depth = 16, .rnr_retry_count = 7 };
    if (rdma_accept(id, &param)) return -errno;
    return 0;
}

int fm_rdma_reject(void *id, const char *reason) {
    int rc = rdma_reject(id, reason, (uint8_t)strnlen(reason, 48)) ? -errno : 0;
    rdma_destroy_id(id);   // a refused request must not keep its id
    return rc;
}

void fm_rdma_drop(void *raw_id) {
    struct rdma_cm_id *id = raw_id;
    if (id->qp) { rdma_disconnect(id); rdma_destroy_qp(id); }
    if (id->context) { ibv_destroy_cq(id->context); id->context = NULL; }
    rdma_destroy_id(id);
}

void *fm_rdma_register(void *pd, void *addr, size_t length, int *err) {
    struct ibv_mr *mr = ibv_reg_mr(pd, addr, length, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
    if (!mr) *err = -errno;
    return mr;
}

uint32_t fm_rdma_rkey(void *mr) { return ((struct ibv_mr *)mr)->rkey; }
int fm_rdma_deregister(void *mr) { return -ibv_dereg_mr(mr); }

/* TEST EMULATION of the ef_vi receive API subset capfan uses (declarations: include/etherfabric,
 * capfan's own). Not Onload; nothing here talks to hardware. The "wire" is a pcap file
 * ($CAPFAN_EFVI_EMUL_PCAP, microsecond or nanosecond); ef_eventq_poll turns its frames into events
 * using the buffers the application posted:
 *
 *   RX                      one buffer per frame; prefix (PREFIX bytes: ts, length, sync flags)
 *   RX SOP|CONT ... final   frames longer than one buffer (final event: whole length + prefix)
 *   RX_NO_DESC_TRUNC        a multi-buffer frame found too few posted buffers (rest lost)
 *   RX_DISCARD              every $CAPFAN_EFVI_EMUL_DISCARD_EVERY-th frame, reason cycling
 *                           CSUM_BAD, CRC_BAD, TRUNC, MCAST_MISMATCH, OTHER
 *   RX_MULTI                with EF_VI_RX_EVENT_MERGE: up to 15 single-buffer frames per event
 *   RESET                   before frame $CAPFAN_EFVI_EMUL_RESET_AT (1-based); posted buffers lost
 *   timestamps              pcap time; every $CAPFAN_EFVI_EMUL_UNSYNC_EVERY-th without IN_SYNC
 *   pacing                  $CAPFAN_EFVI_EMUL_PACE=1: frame k "arrives" (is deliverable) only when
 *                           the wall clock reaches t0 + (ts_k - ts_0), t0 = the first
 *                           ef_driver_open; its hardware timestamp is then that arrival time
 *                           (CLOCK_REALTIME), so a reader can measure its own latency
 *   interrupts              every ef_driver_open is an eventfd; ef_vi_prime(vi, dh, current)
 *                           arms dh: it becomes readable at once if the VI has events past
 *                           `current` or a frame has arrived, else (a helper thread) when the
 *                           next frame arrives. Frames move to event queues only in
 *                           ef_eventq_poll, as on the wire; the eventfd is drained by the next prime
 *
 * Frames wait on the wire while the target VI has no posted buffer (nothing is lost that way,
 * so the tests can count exactly). With a VI set, frames go to VI (hash of the IPv4 addresses
 * and ports) % n. $CAPFAN_EFVI_EMUL_BUF_LEN sets the buffer length (default 2048).
 * capfan_efvi_emul_* functions report what was injected, for the tests' oracles. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "etherfabric/ef_vi.h"

#define PREFIX 16
#define MAX_VIS 32
#define MAX_REGS 16
#define DMA_BASE 0x100000000ull
#define EVQ 4096

struct emul_vi {
    int idx, flags, rxq_cap;
    ef_addr *ring_addr;  /* posted descriptors (FIFO) */
    ef_request_id *ring_id;
    unsigned r_head, r_tail, r_pushed; /* r_tail..r_pushed posted and pushed; ..r_head initialised */
    ef_event evq[EVQ];
    unsigned e_head, e_tail;
    ef_request_id done[EVQ]; /* completed ids for unbundle */
    unsigned d_head, d_tail;
    int multi_open;      /* index of the open RX_MULTI event in evq, -1 none */
    int armed_fd;        /* primed: the driver handle to wake, -1 none */
};

static struct {
    int loaded;
    FILE *f;
    int nsec;
    uint8_t frame[65536];
    uint32_t flen;
    uint64_t fts;
    int have;            /* a frame is waiting on the wire */
    int done;
    uint64_t nframes;
    int buf_len;
    uint64_t discard_every, reset_at, unsync_every;
    struct { uint8_t *base; size_t len; ef_addr dma; } regs[MAX_REGS];
    int nregs;
    struct emul_vi *vis[MAX_VIS];
    int nvis;            /* VIs receiving (all members of the set, or the single VI) */
    int set_n;
    uint64_t inj_discards[EF_EVENT_RX_DISCARD_MAX], inj_resets, inj_trunc, inj_jumbo, delivered, unsynced, filters;
    int pace;            /* frames arrive on the wall clock */
    uint64_t t0_ns, first_ts; int have_first;
    uint64_t primes, wakes;
    int waker_up;
    pthread_cond_t armed;
} W;

/* One lock over the emulated NIC: the application thread and the interrupt thread share it. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* When the waiting frame arrives (realtime ns); 0 = already there (not paced). */
static uint64_t arrival(void) {
    return W.pace ? W.t0_ns + (W.fts - W.first_ts) : 0;
}

static uint64_t env_u64(const char *name) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : 0;
}

static void wire_init(void) {
    if (W.loaded) return;
    W.loaded = 1;
    W.buf_len = (int)(env_u64("CAPFAN_EFVI_EMUL_BUF_LEN") ? env_u64("CAPFAN_EFVI_EMUL_BUF_LEN") : 2048);
    W.discard_every = env_u64("CAPFAN_EFVI_EMUL_DISCARD_EVERY");
    W.reset_at = env_u64("CAPFAN_EFVI_EMUL_RESET_AT");
    W.unsync_every = env_u64("CAPFAN_EFVI_EMUL_UNSYNC_EVERY");
    W.pace = env_u64("CAPFAN_EFVI_EMUL_PACE") != 0;
    W.t0_ns = now_real();
    pthread_cond_init(&W.armed, NULL);
    const char *path = getenv("CAPFAN_EFVI_EMUL_PCAP");
    W.f = path ? fopen(path, "rb") : NULL;
    uint32_t hdr[6];
    if (!W.f || fread(hdr, 4, 6, W.f) != 6) {
        W.done = 1;
        return;
    }
    W.nsec = hdr[0] == 0xA1B23C4Du;
}

/* Next frame from the pcap into W.frame (W.have). */
static void wire_next(void) {
    if (W.have || W.done) return;
    uint32_t h[4];
    if (!W.f || fread(h, 4, 4, W.f) != 4 || h[2] > sizeof W.frame || fread(W.frame, 1, h[2], W.f) != h[2]) {
        W.done = 1;
        return;
    }
    W.flen = h[2];
    W.fts = (uint64_t)h[0] * 1000000000ull + (W.nsec ? h[1] : (uint64_t)h[1] * 1000u);
    if (!W.have_first) {
        W.first_ts = W.fts;
        W.have_first = 1;
    }
    W.have = 1;
    W.nframes++;
}

static uint8_t *dma_ptr(ef_addr a) {
    for (int i = 0; i < W.nregs; i++)
        if (a >= W.regs[i].dma && a < W.regs[i].dma + W.regs[i].len) return W.regs[i].base + (a - W.regs[i].dma);
    return NULL;
}

static void ev_push(struct emul_vi *v, ef_event e) {
    v->evq[v->e_head++ % EVQ] = e;
}

static unsigned posted(struct emul_vi *v) { return v->r_pushed - v->r_tail; }

/* ------------------------------------------------------------------ control path */

int ef_driver_open(ef_driver_handle *dh) {
    pthread_mutex_lock(&mu);
    wire_init();
    pthread_mutex_unlock(&mu);
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return -errno;
    *dh = fd;
    return 0;
}
int ef_driver_close(ef_driver_handle dh) {
    pthread_mutex_lock(&mu);
    for (int i = 0; i < W.nvis; i++)
        if (W.vis[i]->armed_fd == dh) W.vis[i]->armed_fd = -1;
    pthread_mutex_unlock(&mu);
    return close(dh) ? -errno : 0;
}

int ef_pd_alloc_by_name(ef_pd *pd, ef_driver_handle dh, const char *ifname, enum ef_pd_flags flags) {
    (void)dh; (void)flags;
    if (strncmp(ifname, "emul", 4) != 0) return -ENODEV; /* the emulation has interfaces emul0.. */
    memset(pd, 0, sizeof *pd);
    snprintf(pd->emul_name, sizeof pd->emul_name, "%s", ifname);
    return 0;
}
int ef_pd_free(ef_pd *pd, ef_driver_handle dh) { (void)pd; (void)dh; return 0; }

int ef_memreg_alloc(ef_memreg *mr, ef_driver_handle dh, ef_pd *pd, ef_driver_handle pd_dh, void *mem, size_t len) {
    (void)dh; (void)pd; (void)pd_dh;
    if (((uintptr_t)mem & 4095) || W.nregs == MAX_REGS) return -EINVAL;
    ef_addr dma = DMA_BASE * (ef_addr)(W.nregs + 1);
    W.regs[W.nregs].base = mem;
    W.regs[W.nregs].len = len;
    W.regs[W.nregs].dma = dma;
    W.nregs++;
    mr->emul_base = mem;
    mr->emul_len = len;
    mr->emul_dma = dma;
    return 0;
}
int ef_memreg_free(ef_memreg *mr, ef_driver_handle dh) { (void)mr; (void)dh; return 0; }
ef_addr ef_memreg_dma_addr(ef_memreg *mr, size_t offset) { return mr->emul_dma + offset; }

static int vi_new(ef_vi *vi, int rxq, int flags) {
    if (W.nvis == MAX_VIS) return -ENOSPC;
    struct emul_vi *v = calloc(1, sizeof *v);
    v->rxq_cap = rxq > 0 ? rxq : 512;
    if (v->rxq_cap > EVQ / 2) v->rxq_cap = EVQ / 2;
    v->ring_addr = calloc((size_t)v->rxq_cap, sizeof *v->ring_addr);
    v->ring_id = calloc((size_t)v->rxq_cap, sizeof *v->ring_id);
    v->flags = flags;
    v->multi_open = -1;
    v->armed_fd = -1;
    v->idx = W.nvis;
    W.vis[W.nvis++] = v;
    vi->emul = v;
    return v->idx;
}

int ef_vi_alloc_from_pd(ef_vi *vi, ef_driver_handle vi_dh, ef_pd *pd, ef_driver_handle pd_dh, int evq_capacity,
                        int rxq_capacity, int txq_capacity, ef_vi *evq_opt, ef_driver_handle evq_dh,
                        enum ef_vi_flags flags) {
    (void)vi_dh; (void)pd; (void)pd_dh; (void)evq_capacity; (void)txq_capacity; (void)evq_opt; (void)evq_dh;
    return vi_new(vi, rxq_capacity, (int)flags);
}
int ef_vi_free(ef_vi *vi, ef_driver_handle dh) { (void)vi; (void)dh; return 0; }

int ef_vi_set_alloc_from_pd(ef_vi_set *set, ef_driver_handle dh, ef_pd *pd, ef_driver_handle pd_dh, int n_vis) {
    (void)dh; (void)pd; (void)pd_dh;
    if (n_vis < 1 || n_vis > MAX_VIS) return -EINVAL;
    set->emul_id = 1;
    set->emul_n = n_vis;
    W.set_n = n_vis;
    return 0;
}
int ef_vi_set_free(ef_vi_set *set, ef_driver_handle dh) { (void)set; (void)dh; return 0; }

int ef_vi_alloc_from_set(ef_vi *vi, ef_driver_handle vi_dh, ef_vi_set *set, ef_driver_handle set_dh, int index_in_vi_set,
                         int evq_capacity, int rxq_capacity, int txq_capacity, ef_vi *evq_opt,
                         ef_driver_handle evq_dh, enum ef_vi_flags flags) {
    (void)vi_dh; (void)set_dh; (void)evq_capacity; (void)txq_capacity; (void)evq_opt; (void)evq_dh;
    if (index_in_vi_set != W.nvis || index_in_vi_set >= set->emul_n) return -EINVAL;
    return vi_new(vi, rxq_capacity, (int)flags);
}

void ef_filter_spec_init(ef_filter_spec *fs, enum ef_filter_flags flags) { (void)flags; memset(fs, 0, sizeof *fs); }
int ef_filter_spec_set_port_sniff(ef_filter_spec *fs, int promiscuous) { fs->emul_kind = promiscuous ? 2 : 1; return 0; }
int ef_filter_spec_set_unicast_all(ef_filter_spec *fs) { fs->emul_kind = 3; return 0; }
int ef_filter_spec_set_multicast_all(ef_filter_spec *fs) { fs->emul_kind = 4; return 0; }
int ef_filter_spec_set_ip4_local(ef_filter_spec *fs, int protocol, unsigned host_be32, int port_be16) {
    fs->emul_kind = 5; fs->emul_proto = protocol; fs->emul_host = host_be32; fs->emul_port = port_be16;
    return 0;
}
int ef_filter_spec_set_ip4_full(ef_filter_spec *fs, int protocol, unsigned host_be32, int port_be16,
                                unsigned rhost_be32, int rport_be16) {
    ef_filter_spec_set_ip4_local(fs, protocol, host_be32, port_be16);
    fs->emul_kind = 6; fs->emul_rhost = rhost_be32; fs->emul_rport = rport_be16;
    return 0;
}
/* Filters are recorded, not applied: the emulated wire is already "what matched". */
int ef_vi_filter_add(ef_vi *vi, ef_driver_handle dh, const ef_filter_spec *fs, ef_filter_cookie *c) {
    (void)vi; (void)dh;
    if (!fs->emul_kind) return -EINVAL;
    if (c) c->emul_id = (int)W.filters;
    W.filters++;
    return 0;
}
int ef_vi_set_filter_add(ef_vi_set *set, ef_driver_handle dh, const ef_filter_spec *fs, ef_filter_cookie *c) {
    (void)set;
    return ef_vi_filter_add(NULL, dh, fs, c);
}

/* ------------------------------------------------------------------ datapath */

int ef_vi_receive_buffer_len(ef_vi *vi) { (void)vi; return W.buf_len; }
int ef_vi_receive_prefix_len(ef_vi *vi) { (void)vi; return PREFIX; }
int ef_vi_receive_capacity(ef_vi *vi) { return vi->emul->rxq_cap; }
int ef_vi_receive_fill_level(ef_vi *vi) { return (int)(vi->emul->r_head - vi->emul->r_tail); }

int ef_vi_receive_init(ef_vi *vi, ef_addr addr, ef_request_id id) {
    struct emul_vi *v = vi->emul;
    pthread_mutex_lock(&mu);
    int rc = 0;
    if (v->r_head - v->r_tail >= (unsigned)v->rxq_cap) rc = -EAGAIN;
    else if (addr & (EF_VI_DMA_ALIGN - 1) || !dma_ptr(addr)) rc = -EINVAL;
    if (!rc) {
        v->ring_addr[v->r_head % (unsigned)v->rxq_cap] = addr;
        v->ring_id[v->r_head % (unsigned)v->rxq_cap] = id;
        v->r_head++;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}
void ef_vi_receive_push(ef_vi *vi) {
    pthread_mutex_lock(&mu);
    vi->emul->r_pushed = vi->emul->r_head;
    pthread_mutex_unlock(&mu);
}

/* Take the oldest posted buffer. */
static ef_request_id take(struct emul_vi *v, uint8_t **p) {
    unsigned i = v->r_tail++ % (unsigned)v->rxq_cap;
    *p = dma_ptr(v->ring_addr[i]);
    return v->ring_id[i];
}

static void write_prefix(uint8_t *p, uint64_t ts, uint32_t len, int sync) {
    memset(p, 0, PREFIX);
    memcpy(p, &ts, 8);
    uint16_t l = (uint16_t)(len > 65535 ? 65535 : len);
    memcpy(p + 8, &l, 2);
    p[10] = (uint8_t)(EF_VI_SYNC_FLAG_CLOCK_SET | (sync ? EF_VI_SYNC_FLAG_CLOCK_IN_SYNC : 0));
}

static int target_vi(void) {
    if (W.nvis <= 1) return 0;
    const uint8_t *f = W.frame;
    uint32_t h = 0;
    if (W.flen >= 38 && f[12] == 0x08 && f[13] == 0x00) {
        uint32_t a = 0, b = 0;
        memcpy(&a, f + 26, 4); memcpy(&b, f + 30, 4);
        uint16_t sp = (uint16_t)(f[34] << 8 | f[35]), dp = (uint16_t)(f[36] << 8 | f[37]);
        h = (a ^ b) * 2654435761u ^ (uint32_t)(sp ^ dp) * 40503u;
        h ^= h >> 16;
    }
    return (int)(h % (uint32_t)W.nvis);
}

static void reset_all(void) {
    W.inj_resets++;
    for (int i = 0; i < W.nvis; i++) {
        struct emul_vi *v = W.vis[i];
        v->r_tail = v->r_pushed = v->r_head; /* posted buffers are lost */
        v->multi_open = -1;
        ev_push(v, (ef_event){.generic = {EF_EVENT_TYPE_RESET}});
    }
}

/* Deliver the waiting frame to its VI's event queue; 0 if it must keep waiting. */
static int deliver(void) {
    struct emul_vi *v = W.vis[target_vi()];
    if (!posted(v) || v->e_head - v->e_tail > EVQ - 32) return 0;
    if (W.pace) {
        uint64_t at = arrival();
        if (now_real() < at) return 0; /* still on its way */
        W.fts = at;                    /* stamped when it arrived */
    }
    uint64_t n = W.nframes;
    if (W.reset_at && n == W.reset_at) {
        W.reset_at = 0;
        reset_all();
        return 1; /* the frame keeps waiting; reposting comes next */
    }
    int sync = !(W.unsync_every && n % W.unsync_every == 0);
    uint32_t total = W.flen + PREFIX, blen = (uint32_t)W.buf_len;
    int merge = (v->flags & EF_VI_RX_EVENT_MERGE) != 0;
    if (W.discard_every && n % W.discard_every == 0) {
        static const unsigned reasons[] = {EF_EVENT_RX_DISCARD_CSUM_BAD, EF_EVENT_RX_DISCARD_CRC_BAD,
                                           EF_EVENT_RX_DISCARD_TRUNC, EF_EVENT_RX_DISCARD_MCAST_MISMATCH,
                                           EF_EVENT_RX_DISCARD_OTHER};
        unsigned r = reasons[(n / W.discard_every - 1) % 5];
        uint8_t *p;
        ef_request_id id = take(v, &p);
        write_prefix(p, W.fts, W.flen, sync);
        memcpy(p + PREFIX, W.frame, (total < blen ? total : blen) - PREFIX);
        ef_event e = {.rx_discard = {EF_EVENT_TYPE_RX_DISCARD, (unsigned)v->idx, (unsigned)id,
                                     total < blen ? total : blen, EF_EVENT_FLAG_SOP, r}};
        v->multi_open = -1;
        ev_push(v, e);
        W.inj_discards[r]++;
        W.have = 0;
        return 1;
    }
    if (total <= blen) {
        uint8_t *p;
        ef_request_id id = take(v, &p);
        write_prefix(p, W.fts, W.flen, sync);
        memcpy(p + PREFIX, W.frame, W.flen);
        if (merge) {
            v->done[v->d_head++ % EVQ] = id;
            ef_event *open = v->multi_open >= 0 ? &v->evq[(unsigned)v->multi_open % EVQ] : NULL;
            if (open && open->rx_multi.n_descs < EF_VI_RECEIVE_BATCH) {
                open->rx_multi.n_descs++;
            } else {
                v->multi_open = (int)v->e_head;
                ev_push(v, (ef_event){.rx_multi = {EF_EVENT_TYPE_RX_MULTI, (unsigned)v->idx, 1, 0, 0}});
            }
        } else {
            ev_push(v, (ef_event){.rx = {EF_EVENT_TYPE_RX, (unsigned)v->idx, (unsigned)id, total, EF_EVENT_FLAG_SOP}});
        }
    } else { /* jumbo: SOP|CONT, CONT..., final */
        v->multi_open = -1;
        W.inj_jumbo++;
        uint32_t off = 0; /* bytes of prefix+frame written */
        int first = 1;
        while (off < total) {
            if (!posted(v)) {
                ev_push(v, (ef_event){.rx_no_desc_trunc = {EF_EVENT_TYPE_RX_NO_DESC_TRUNC, (unsigned)v->idx}});
                W.inj_trunc++;
                break;
            }
            uint8_t *p;
            ef_request_id id = take(v, &p);
            uint32_t chunk = total - off < blen ? total - off : blen;
            if (first) {
                write_prefix(p, W.fts, W.flen, sync);
                memcpy(p + PREFIX, W.frame, chunk - PREFIX);
            } else {
                memcpy(p, W.frame + off - PREFIX, chunk);
            }
            off += chunk;
            int last = off >= total;
            unsigned flags = (first ? EF_EVENT_FLAG_SOP : 0) | (last ? 0 : EF_EVENT_FLAG_CONT);
            ev_push(v, (ef_event){.rx = {EF_EVENT_TYPE_RX, (unsigned)v->idx, (unsigned)id, last ? total : chunk, flags}});
            first = 0;
        }
    }
    if (!sync) W.unsynced++;
    W.delivered++;
    W.have = 0;
    return 1;
}

int ef_eventq_poll(ef_vi *vi, ef_event *evs, int evs_len) {
    struct emul_vi *v = vi->emul;
    pthread_mutex_lock(&mu);
    for (;;) { /* move frames from the wire until this VI has enough events or the wire waits */
        if (v->e_head - v->e_tail >= (unsigned)evs_len + 1) break;
        wire_next();
        if (!W.have || !deliver()) break;
    }
    int n = 0;
    /* an RX_MULTI still growing is handed out only when nothing else can be added to it */
    while (n < evs_len && v->e_tail != v->e_head) {
        if ((int)v->e_tail == v->multi_open) v->multi_open = -1;
        evs[n++] = v->evq[v->e_tail++ % EVQ];
    }
    pthread_mutex_unlock(&mu);
    return n;
}

/* ------------------------------------------------------------------ interrupts */

static void wake(struct emul_vi *v) {
    uint64_t one = 1;
    if (v->armed_fd >= 0 && write(v->armed_fd, &one, sizeof one) == (ssize_t)sizeof one) W.wakes++;
    v->armed_fd = -1;
}

/* The interrupt thread: wakes the primed VIs when the next frame arrives on the wire. */
static void *waker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        int any = 0;
        for (int i = 0; i < W.nvis; i++) any |= W.vis[i]->armed_fd >= 0;
        wire_next();
        if (!any || !W.have) { /* nobody waits, or the wire is over: sleep until the next prime */
            pthread_cond_wait(&W.armed, &mu);
            continue;
        }
        uint64_t at = arrival(), now = now_real();
        if (at <= now) {
            for (int i = 0; i < W.nvis; i++) wake(W.vis[i]);
            continue;
        }
        struct timespec ts = {(time_t)(at / 1000000000ull), (long)(at % 1000000000ull)};
        pthread_cond_timedwait(&W.armed, &mu, &ts); /* CLOCK_REALTIME, like arrival() */
    }
    return NULL;
}

unsigned ef_eventq_current(ef_vi *vi) { return vi->emul->e_tail; }

int ef_vi_prime(ef_vi *vi, ef_driver_handle dh, unsigned current_ptr) {
    struct emul_vi *v = vi->emul;
    uint64_t drain;
    pthread_mutex_lock(&mu);
    while (read(dh, &drain, sizeof drain) > 0) {} /* a new wait: forget earlier wakeups */
    W.primes++;
    v->armed_fd = dh;
    wire_next();
    if (v->e_head != current_ptr || (W.have && arrival() <= now_real())) {
        wake(v); /* something is already there: interrupt at once */
    } else if (W.pace && W.have) {
        if (!W.waker_up) {
            pthread_t t;
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
            W.waker_up = pthread_create(&t, &a, waker, NULL) == 0;
            pthread_attr_destroy(&a);
        }
        pthread_cond_signal(&W.armed);
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int ef_vi_receive_unbundle(ef_vi *vi, const ef_event *ev, ef_request_id *ids) {
    struct emul_vi *v = vi->emul;
    int n = 0;
    for (unsigned k = 0; k < ev->rx_multi.n_descs && v->d_tail != v->d_head; k++) ids[n++] = v->done[v->d_tail++ % EVQ];
    return n;
}

int ef_vi_receive_get_bytes(ef_vi *vi, const void *pkt, uint16_t *bytes_out) {
    (void)vi;
    memcpy(bytes_out, (const uint8_t *)pkt + 8, 2);
    return 0;
}

int ef_vi_receive_get_precise_timestamp(ef_vi *vi, const void *pkt, ef_precisetime *ts_out) {
    if (!(vi->emul->flags & EF_VI_RX_TIMESTAMPS)) return -ENODATA;
    uint64_t ts;
    const uint8_t *p = pkt;
    memcpy(&ts, p, 8);
    ts_out->tv_sec = (int64_t)(ts / 1000000000ull);
    ts_out->tv_nsec = (uint32_t)(ts % 1000000000ull);
    ts_out->tv_nsec_frac = 0;
    ts_out->tv_flags = p[10];
    return (p[10] & EF_VI_SYNC_FLAG_CLOCK_IN_SYNC) ? 0 : -EL2NSYNC;
}

/* ------------------------------------------------------------------ test oracles */

int capfan_efvi_emul_done(void) {
    pthread_mutex_lock(&mu);
    if (!W.done && !W.have) wire_next();
    int done = W.done && !W.have;
    for (int i = 0; done && i < W.nvis; i++)
        if (W.vis[i]->e_head != W.vis[i]->e_tail) done = 0;
    pthread_mutex_unlock(&mu);
    return done;
}
uint64_t capfan_efvi_emul_primes(void) { return W.primes; }
uint64_t capfan_efvi_emul_wakes(void) { return W.wakes; }
uint64_t capfan_efvi_emul_discards(int reason) { return reason >= 0 && reason < EF_EVENT_RX_DISCARD_MAX ? W.inj_discards[reason] : 0; }
uint64_t capfan_efvi_emul_resets(void) { return W.inj_resets; }
uint64_t capfan_efvi_emul_truncs(void) { return W.inj_trunc; }
uint64_t capfan_efvi_emul_jumbo(void) { return W.inj_jumbo; }
uint64_t capfan_efvi_emul_delivered(void) { return W.delivered; }
uint64_t capfan_efvi_emul_unsynced(void) { return W.unsynced; }
uint64_t capfan_efvi_emul_filters(void) { return W.filters; }
int capfan_efvi_emul_posted(int vi) { return vi < W.nvis ? (int)posted(W.vis[vi]) : -1; }

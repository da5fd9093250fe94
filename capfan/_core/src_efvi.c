/* Solarflare/AMD ef_vi capture source (Onload's libciul). Compiled only when the etherfabric
 * headers are found at build time (build.py OPTIONAL); the tests compile it against capfan's own
 * ef_vi emulation (tests/emul/efvi).
 *
 * The ring's packet arena is registered as ef_vi packet memory (ef_memreg_alloc; ring files are
 * MAP_SHARED, which keeps the registration valid across fork). The arena is cut into fixed
 * buffers (BUF_STRIDE, never crossing a 4 KiB NIC page); buffer i's request id is i. The NIC DMAs
 * a prefix (ef_vi_receive_prefix_len) and the frame into a posted buffer; the producer publishes
 * a descriptor whose `off` is the frame start inside the arena, and every consumer reads it in
 * place. Buffer life cycle (as in src_afxdp.c): free -> posted (NIC owns it) -> published (seq,
 * buffer) -> free again once the ring's tail has passed its seq. The tail only moves as far as
 * reliable consumers allow (capfan_producer_reclaim), so a consumer holding a batch keeps its
 * buffers from being reposted.
 *
 * Events: RX (jumbo frames arrive as SOP|CONT ... final; the final event's length is the whole
 * frame's length incl. prefix. With opts.jumbo = 1 the buffers are kept until the final event and
 * the frame is copied whole into the jumbo area -- the last jumbo_bytes of the arena, never posted
 * to the NIC, allocated in seq order like a small ring and freed as the ring's tail passes: one
 * memcpy of the frame, only for frames longer than a buffer. If consumers hold the whole jumbo
 * area, or with opts.jumbo = 0, the frame is published from its first buffer, cut to that buffer
 * and counted as truncated, and continuation buffers go straight back to the free list),
 * RX_DISCARD (counted per reason, frame not published), RX_NO_DESC_TRUNC (the jumbo in progress
 * ran out of posted buffers: published with what arrived, counted), RX_MULTI / RX_MULTI_DISCARD
 * (EF_VI_RX_EVENT_MERGE: ef_vi_receive_unbundle, length from the prefix), RESET (every posted
 * buffer is considered lost to the NIC and reposted). Hardware timestamps come from
 * ef_vi_receive_get_precise_timestamp (read before the next poll) with their sync flags.
 *
 * RSS: rss_vis > 0 allocates a VI set of that many VIs; filters go on the set, which spreads
 * matching traffic over its VIs; VI i publishes as port `port + i`.
 * Filters (comma separated): sniff, sniff-promisc, all-unicast, all-multicast,
 * udp|tcp:HOST:PORT (local), udp|tcp:HOST:PORT:RHOST:RPORT (5-tuple). Default: sniff-promisc.
 *
 * Waiting: wait = 0 polls the event queues with IDLE_SLEEP_NS naps while idle (lowest latency,
 * costs CPU); wait = 1, after spin_us without packets, primes every VI (ef_vi_prime with the event
 * queue's current position: the NIC interrupts on the next event) and blocks in ppoll() on the
 * VIs' driver handles (one per VI) until an event or the timeout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "source_impl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <etherfabric/base.h>
#include <etherfabric/ef_vi.h>
#include <etherfabric/memreg.h>
#include <etherfabric/pd.h>
#include <etherfabric/vi.h>

#define LINKTYPE_ETHERNET 1u
#define BUF_STRIDE 2048u      /* arena bytes per ef_vi buffer (a power of two, <= 4 KiB) */
#define MAX_VIS 32
#define POST_BATCH 8          /* 7000-series NICs push descriptors in multiples of 8 */
#define POLL_EVS 64
#define IDLE_SLEEP_NS 20000
#define MAX_JUMBO_BUFS 64     /* buffers one reassembled frame may span (128 KiB > any frame) */
#define JUMBO_ALIGN 64u

typedef struct buf_ref { uint64_t seq; uint32_t buf; } buf_ref;
typedef struct jumbo_ref { uint64_t seq, start; uint32_t len; } jumbo_ref; /* start: monotonic jumbo-area position */

typedef struct vi_state {
    ef_vi vi;
    ef_driver_handle dh;    /* the VI's own driver handle: interrupt mode blocks on it */
    int up, dh_open;
    int jumbo;              /* a jumbo frame is in progress */
    uint32_t j_buf, j_have; /* its first buffer, frame bytes received so far */
    uint64_t j_ts;
    uint16_t j_flags;
    uint32_t j_nparts;      /* reassembly: buffers held (first included) and the frame bytes of each */
    uint32_t j_part_buf[MAX_JUMBO_BUFS], j_part_len[MAX_JUMBO_BUFS];
} vi_state;

typedef struct efvi {
    capfan_source base;
    capfan_efvi_opts o;
    capfan_efvi_counters c;
    capfan_producer *p;
    ef_driver_handle dh;
    int dh_open, pd_up, mr_up, set_up;
    ef_pd pd;
    ef_memreg mr;
    ef_vi_set set;
    vi_state v[MAX_VIS];
    int nvis;
    uint8_t *arena;
    uint32_t nbufs, buf_len, prefix, snaplen;
    uint64_t ndesc;
    int full_drop;
    uint32_t *free_bufs, nfree;
    uint8_t *posted;        /* buffer -> VI index + 1 while the NIC owns it */
    buf_ref *fifo;          /* published buffers in seq order (circular, nbufs entries) */
    uint32_t fifo_first, fifo_len;
    uint64_t jbase, jlen;   /* jumbo area: arena offset and bytes (0 = none) */
    uint64_t jw;            /* next monotonic position in the jumbo area */
    jumbo_ref *jfifo;       /* reassembled frames in seq order (circular, jcap entries) */
    uint32_t jcap, jfirst, jcount;
    int starved;            /* last poll took nothing because the ring had no room */
    uint64_t last_rx_ns;    /* interrupt mode: when a packet last arrived (spin_us window) */
} efvi;

/* ------------------------------------------------------------------ buffers */

static void fifo_push(efvi *e, uint64_t seq, uint32_t buf) {
    uint32_t i = e->fifo_first + e->fifo_len;
    if (i >= e->nbufs) i -= e->nbufs;
    e->fifo[i] = (buf_ref){seq, buf};
    e->fifo_len++;
}

static void jfifo_release_below(efvi *e, uint64_t tail) {
    while (e->jcount && e->jfifo[e->jfirst].seq < tail) {
        if (++e->jfirst == e->jcap) e->jfirst = 0;
        e->jcount--;
    }
}

static void fifo_release_below(efvi *e, uint64_t tail) {
    while (e->fifo_len && e->fifo[e->fifo_first].seq < tail) {
        e->free_bufs[e->nfree++] = e->fifo[e->fifo_first].buf;
        if (++e->fifo_first == e->nbufs) e->fifo_first = 0;
        e->fifo_len--;
    }
    jfifo_release_below(e, tail);
}

static void jfifo_push(efvi *e, uint64_t seq, uint64_t start, uint32_t len) {
    uint32_t i = e->jfirst + e->jcount;
    if (i >= e->jcap) i -= e->jcap;
    e->jfifo[i] = (jumbo_ref){seq, start, len};
    e->jcount++;
}

/* Room for len bytes in the jumbo area (a frame never wraps); returns the monotonic position,
 * releasing the oldest reassembled frames as far as the ring's consumers allow, or UINT64_MAX. */
static uint64_t jumbo_alloc(efvi *e, uint32_t len) {
    uint64_t need = ((uint64_t)len + JUMBO_ALIGN - 1) & ~(uint64_t)(JUMBO_ALIGN - 1);
    if (!e->jlen || need > e->jlen) return UINT64_MAX;
    uint64_t a = e->jw, o = a % e->jlen;
    if (o + need > e->jlen) a += e->jlen - o;
    fifo_release_below(e, capfan_producer_tail(e->p));
    while (e->jcount && (e->jcount == e->jcap || a + need - e->jfifo[e->jfirst].start > e->jlen)) {
        uint64_t seq = e->jfifo[e->jfirst].seq;
        if (capfan_producer_reclaim(e->p, seq + 1) <= seq) return UINT64_MAX; /* a consumer holds it */
        fifo_release_below(e, capfan_producer_tail(e->p));
    }
    e->jw = a + need;
    return a;
}

/* Get `need` free buffers, releasing the oldest packets only as far as needed and allowed. */
static void reclaim_bufs(efvi *e, uint32_t need) {
    fifo_release_below(e, capfan_producer_tail(e->p));
    if (e->nfree >= need || !e->fifo_len) return;
    uint32_t k = need - e->nfree;
    if (k > e->fifo_len) k = e->fifo_len;
    uint32_t i = e->fifo_first + k - 1;
    if (i >= e->nbufs) i -= e->nbufs;
    fifo_release_below(e, capfan_producer_reclaim(e->p, e->fifo[i].seq + 1));
}

static void buf_free(efvi *e, uint32_t b) {
    e->posted[b] = 0;
    e->free_bufs[e->nfree++] = b;
}

/* Keep every VI's RX queue stocked (in batches of POST_BATCH when the queue allows). */
static void refill(efvi *e) {
    for (int i = 0; i < e->nvis; i++) {
        ef_vi *vi = &e->v[i].vi;
        int cap = ef_vi_receive_capacity(vi), room = cap - ef_vi_receive_fill_level(vi);
        int batch = cap < POST_BATCH ? cap : POST_BATCH;
        if (room < batch || room <= 0) continue;
        reclaim_bufs(e, (uint32_t)room);
        int n = room < (int)e->nfree ? room : (int)e->nfree;
        if (n < room) e->c.held_back++;
        n -= n % batch;
        for (int k = 0; k < n; k++) {
            uint32_t b = e->free_bufs[--e->nfree];
            e->posted[b] = (uint8_t)(i + 1);
            ef_vi_receive_init(vi, ef_memreg_dma_addr(&e->mr, (size_t)b * BUF_STRIDE), (ef_request_id)b);
        }
        if (n) {
            ef_vi_receive_push(vi);
            e->c.reposted += (uint64_t)n;
        }
    }
}

/* ------------------------------------------------------------------ publishing */

/* Hardware timestamp of the frame in buffer b (call before the next poll). */
static uint64_t rx_time(efvi *e, ef_vi *vi, uint32_t b, uint16_t *flags) {
    *flags = 0;
    if (e->o.hw_timestamps) {
        ef_precisetime t;
        memset(&t, 0, sizeof t);
        int rc = ef_vi_receive_get_precise_timestamp(vi, e->arena + (size_t)b * BUF_STRIDE, &t);
        if ((rc == 0 || rc == -EL2NSYNC) && (t.tv_flags & EF_VI_SYNC_FLAG_CLOCK_SET)) {
            *flags = CAPFAN_F_HWTS;
            if (t.tv_flags & EF_VI_SYNC_FLAG_CLOCK_IN_SYNC) *flags |= CAPFAN_F_HWTS_SYNC;
            else e->c.hwts_unsynced++;
            e->base.st.hw_timestamps++;
            return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
        }
    }
    return capfan_now_realtime_ns();
}

/* Publish the frame of buffer b (wirelen bytes, at most what the buffer holds). */
static void publish(efvi *e, int vi_idx, uint32_t b, uint32_t wirelen, uint64_t ts, uint16_t flags) {
    e->posted[b] = 0;
    e->base.st.packets++;
    e->base.st.bytes += wirelen;
    if (capfan_producer_reserve_desc(e->p, 0) != 0) { /* drop policy: counted by the ring too */
        e->free_bufs[e->nfree++] = b;
        e->base.st.ring_drops++;
        return;
    }
    uint32_t room = e->buf_len - e->prefix;
    uint32_t caplen = wirelen < room ? wirelen : room;
    if (caplen > e->snaplen) caplen = e->snaplen;
    if (caplen > 65535) caplen = 65535;
    if (caplen < wirelen) {
        flags |= CAPFAN_F_TRUNCATED;
        e->base.st.truncated++;
    }
    fifo_push(e, capfan_producer_head(e->p), b);
    capfan_producer_commit_at(e->p, (uint32_t)((size_t)b * BUF_STRIDE + e->prefix), ts, caplen,
                              wirelen > 65535 ? 65535 : wirelen, (uint16_t)(e->o.port + vi_idx), flags);
    e->base.st.published++;
}

/* Copy a multi-buffer frame (v's parts) into the jumbo area and publish it from there; the
 * buffers go back to the free list. Returns 0, or -1 if the area is held (nothing done). */
static int publish_reassembled(efvi *e, int vi_idx, uint32_t wirelen) {
    vi_state *v = &e->v[vi_idx];
    uint32_t have = 0;
    for (uint32_t k = 0; k < v->j_nparts; k++) have += v->j_part_len[k];
    uint32_t caplen = have < wirelen ? have : wirelen;
    if (caplen > e->snaplen) caplen = e->snaplen;
    if (caplen > 65535) caplen = 65535;
    uint64_t at = jumbo_alloc(e, caplen);
    if (at == UINT64_MAX) return -1;
    e->base.st.packets++;
    e->base.st.bytes += wirelen;
    uint16_t flags = v->j_flags;
    if (capfan_producer_reserve_desc(e->p, 0) != 0) {
        e->base.st.ring_drops++;
    } else {
        uint64_t off = e->jbase + at % e->jlen;
        uint8_t *dst = e->arena + off;
        uint32_t done = 0;
        for (uint32_t k = 0; k < v->j_nparts && done < caplen; k++) {
            uint32_t n = v->j_part_len[k] < caplen - done ? v->j_part_len[k] : caplen - done;
            const uint8_t *src = e->arena + (size_t)v->j_part_buf[k] * BUF_STRIDE + (k == 0 ? e->prefix : 0);
            memcpy(dst + done, src, n);
            done += n;
        }
        if (caplen < wirelen) {
            flags |= CAPFAN_F_TRUNCATED;
            e->base.st.truncated++;
        }
        jfifo_push(e, capfan_producer_head(e->p), at, caplen);
        capfan_producer_commit_at(e->p, (uint32_t)off, v->j_ts, caplen, wirelen > 65535 ? 65535 : wirelen,
                                  (uint16_t)(e->o.port + vi_idx), flags);
        e->base.st.published++;
        e->c.jumbo_reassembled++;
    }
    for (uint32_t k = 0; k < v->j_nparts; k++) buf_free(e, v->j_part_buf[k]);
    v->j_nparts = 0;
    return 0;
}

static void count_discard(efvi *e, unsigned reason) {
    e->c.discards[reason < 7 ? reason : 7]++;
    e->base.st.malformed++;
}

/* Finish a jumbo in progress (total: the whole frame's length): reassembled into the jumbo
 * area, or published from its first buffer, cut to it. */
static void jumbo_end(efvi *e, int i, uint32_t total) {
    vi_state *v = &e->v[i];
    v->jumbo = 0;
    if (e->o.jumbo && v->j_nparts) {
        if (publish_reassembled(e, i, total) == 0) return;
        e->c.jumbo_no_room++;
        for (uint32_t k = 1; k < v->j_nparts; k++) buf_free(e, v->j_part_buf[k]);
        v->j_nparts = 0;
    }
    publish(e, i, v->j_buf, total, v->j_ts, v->j_flags);
}

/* Keep buffer b (frame bytes `len`) as a part of the frame being reassembled. */
static void jumbo_keep(efvi *e, vi_state *v, uint32_t b, uint32_t len) {
    if (v->j_nparts == MAX_JUMBO_BUFS) { /* longer than any frame: keep what fits */
        e->base.st.malformed++;
        buf_free(e, b);
        return;
    }
    v->j_part_buf[v->j_nparts] = b;
    v->j_part_len[v->j_nparts++] = len;
}

static void on_rx(efvi *e, int i, const ef_event *ev) {
    vi_state *v = &e->v[i];
    uint32_t b = (uint32_t)EF_EVENT_RX_RQ_ID(*ev);
    uint32_t bytes = (uint32_t)EF_EVENT_RX_BYTES(*ev);
    int sop = EF_EVENT_RX_SOP(*ev) != 0, cont = EF_EVENT_RX_CONT(*ev) != 0;
    if (b >= e->nbufs) {
        e->base.st.malformed++;
        return;
    }
    if (sop && v->jumbo) { /* the previous jumbo never ended: publish what came */
        e->base.st.malformed++;
        jumbo_end(e, i, v->j_have);
    }
    if (!sop && !v->jumbo) { /* continuation of a frame we did not see start */
        e->base.st.malformed++;
        buf_free(e, b);
        return;
    }
    if (sop && !cont) { /* the common case: one buffer, one frame */
        uint16_t fl;
        uint64_t ts = rx_time(e, &v->vi, b, &fl);
        publish(e, i, b, bytes > e->prefix ? bytes - e->prefix : 0, ts, fl);
        return;
    }
    if (sop) { /* first buffer of a jumbo */
        v->jumbo = 1;
        v->j_buf = b;
        v->j_ts = rx_time(e, &v->vi, b, &v->j_flags);
        uint32_t inbuf = bytes < e->buf_len ? bytes : e->buf_len;
        v->j_have = inbuf > e->prefix ? inbuf - e->prefix : 0;
        v->j_nparts = 0;
        if (e->o.jumbo) jumbo_keep(e, v, b, v->j_have);
        e->c.jumbo++;
        return;
    }
    if (cont) { /* a full continuation buffer */
        uint32_t inbuf = bytes < e->buf_len ? bytes : e->buf_len;
        if (e->o.jumbo) jumbo_keep(e, v, b, inbuf);
        else buf_free(e, b); /* cut to the first buffer: continuation bytes are not kept */
        v->j_have += inbuf;
        return;
    }
    /* final: its length is the whole frame's (incl. prefix); this buffer holds the rest */
    uint32_t total = bytes > e->prefix ? bytes - e->prefix : 0;
    if (total < v->j_have) total = v->j_have + bytes; /* a NIC reporting the last piece only */
    uint32_t rest = total - v->j_have;
    if (rest > e->buf_len) rest = e->buf_len;
    if (e->o.jumbo) jumbo_keep(e, v, b, rest);
    else buf_free(e, b);
    v->j_have += rest;
    jumbo_end(e, i, total);
}

static void on_multi(efvi *e, int i, const ef_event *ev, int discard) {
    vi_state *v = &e->v[i];
    ef_request_id ids[EF_VI_RECEIVE_BATCH];
    int n = ef_vi_receive_unbundle(&v->vi, ev, ids);
    e->c.rx_multi++;
    for (int k = 0; k < n; k++) {
        uint32_t b = (uint32_t)ids[k];
        if (b >= e->nbufs) { e->base.st.malformed++; continue; }
        if (discard) {
            count_discard(e, EF_EVENT_RX_MULTI_DISCARD_TYPE(*ev));
            buf_free(e, b);
            continue;
        }
        uint16_t len = 0, fl;
        ef_vi_receive_get_bytes(&v->vi, e->arena + (size_t)b * BUF_STRIDE, &len);
        uint64_t ts = rx_time(e, &v->vi, b, &fl);
        publish(e, i, b, len, ts, fl);
    }
}

/* The NIC reset: whatever it owned is gone; repost from scratch. */
static void on_reset(efvi *e, int i) {
    e->c.resets++;
    if (e->v[i].jumbo) { /* its buffers (the first, and kept continuations) are freed below */
        e->v[i].jumbo = 0;
        e->v[i].j_nparts = 0;
    }
    for (uint32_t b = 0; b < e->nbufs; b++)
        if (e->posted[b] == (uint8_t)(i + 1)) buf_free(e, b);
}

/* Free descriptors (reclaiming as far as reliable consumers allow), up to `want`. */
static uint64_t desc_room(efvi *e, uint64_t want) {
    uint64_t head = capfan_producer_head(e->p), tail = capfan_producer_tail(e->p);
    if (head - tail + want > e->ndesc) tail = capfan_producer_reclaim(e->p, head + want - e->ndesc);
    fifo_release_below(e, tail);
    return e->ndesc - (head - tail);
}

/* Poll every VI once; returns packets published. */
static int poll_once(efvi *e, uint32_t max) {
    uint64_t before = e->base.st.published;
    e->starved = 0;
    ef_event evs[POLL_EVS];
    for (int i = 0; i < e->nvis; i++) {
        int want = POLL_EVS;
        if ((uint32_t)want > max) want = (int)max;
        if (!e->full_drop) { /* block policy: take from the NIC only what the ring can hold */
            uint64_t room = desc_room(e, (uint64_t)want * (e->o.merge ? EF_VI_RECEIVE_BATCH : 1));
            if (e->o.merge) room /= EF_VI_RECEIVE_BATCH;
            if (room < (uint64_t)want) want = (int)room;
            if (want <= 0) {
                e->starved = 1;
                continue;
            }
        }
        int n = ef_eventq_poll(&e->v[i].vi, evs, want);
        for (int k = 0; k < n; k++) {
            switch (EF_EVENT_TYPE(evs[k])) {
            case EF_EVENT_TYPE_RX:
                on_rx(e, i, &evs[k]);
                break;
            case EF_EVENT_TYPE_RX_DISCARD: {
                uint32_t b = (uint32_t)EF_EVENT_RX_DISCARD_RQ_ID(evs[k]);
                count_discard(e, EF_EVENT_RX_DISCARD_TYPE(evs[k]));
                if (b < e->nbufs) buf_free(e, b);
                break;
            }
            case EF_EVENT_TYPE_RX_NO_DESC_TRUNC:
                e->c.no_desc_trunc++;
                e->base.st.nic_drops++;
                if (e->v[i].jumbo) jumbo_end(e, i, e->v[i].j_have);
                break;
            case EF_EVENT_TYPE_RX_MULTI:
                on_multi(e, i, &evs[k], 0);
                break;
            case EF_EVENT_TYPE_RX_MULTI_DISCARD:
                on_multi(e, i, &evs[k], 1);
                break;
            case EF_EVENT_TYPE_RESET:
                on_reset(e, i);
                break;
            default:
                break;
            }
        }
    }
    if (e->base.st.published != before) capfan_producer_flush(e->p);
    return (int)(e->base.st.published - before);
}

/* ------------------------------------------------------------------ source ops */

static uint32_t efvi_linktype(capfan_source *s, uint32_t port) {
    (void)s; (void)port;
    return LINKTYPE_ETHERNET;
}

static int efvi_prepare(capfan_source *s, capfan_producer *p) {
    efvi *e = (efvi *)s;
    if (p != e->p)
        return capfan_set_error(CAPFAN_EINVAL, "this ef_vi source uses the arena of the ring it was opened with; "
                                "open another source for another ring");
    capfan_producer_set_external(p, (int)BUF_STRIDE);
    for (int i = 0; i < e->nvis; i++) {
        int rc = capfan_producer_set_linktype(p, e->o.port + (uint32_t)i, LINKTYPE_ETHERNET);
        if (rc) return rc;
    }
    return 0;
}

/* Interrupt mode: prime every VI, then sleep in ppoll() on their driver handles until an event
 * arrives or `until` (monotonic ns) passes. */
static void wait_interrupt(efvi *e, uint64_t until) {
    struct pollfd fds[MAX_VIS];
    for (int i = 0; i < e->nvis; i++) {
        ef_vi_prime(&e->v[i].vi, e->v[i].dh, ef_eventq_current(&e->v[i].vi));
        fds[i] = (struct pollfd){.fd = e->v[i].dh, .events = POLLIN};
    }
    e->c.primes++;
    uint64_t now = capfan_now_monotonic_ns();
    if (now >= until) return;
    uint64_t left = until - now;
    struct timespec ts = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
    if (ppoll(fds, (nfds_t)e->nvis, &ts, NULL) > 0) e->c.wakeups++;
}

static int efvi_recv(capfan_source *s, capfan_producer *p, uint32_t max, int64_t timeout_ns) {
    efvi *e = (efvi *)s;
    if (!max) max = 1;
    uint64_t end = timeout_ns < 0 ? UINT64_MAX : capfan_now_monotonic_ns() + (uint64_t)timeout_ns;
    for (;;) {
        refill(e);
        int n = poll_once(e, max);
        if (n) {
            refill(e);
            if (e->o.wait) e->last_rx_ns = capfan_now_monotonic_ns();
            return n;
        }
        uint64_t now = capfan_now_monotonic_ns();
        if (now >= end) return 0;
        /* block only when the NIC has nothing for us: a full ring (block policy) is polled */
        if (e->o.wait && !e->starved && now - e->last_rx_ns >= (uint64_t)e->o.spin_us * 1000u) {
            wait_interrupt(e, end);
            continue;
        }
        struct timespec ts = {0, IDLE_SLEEP_NS};
        nanosleep(&ts, NULL);
    }
}

static void efvi_close(capfan_source *s) {
    efvi *e = (efvi *)s;
    for (int i = 0; i < MAX_VIS; i++) {
        if (e->v[i].up) ef_vi_free(&e->v[i].vi, e->v[i].dh);
        if (e->v[i].dh_open) ef_driver_close(e->v[i].dh);
    }
    if (e->set_up) ef_vi_set_free(&e->set, e->dh);
    if (e->mr_up) ef_memreg_free(&e->mr, e->dh);
    if (e->pd_up) ef_pd_free(&e->pd, e->dh);
    if (e->dh_open) ef_driver_close(e->dh);
    free(e->free_bufs);
    free(e->posted);
    free(e->fifo);
    free(e->jfifo);
    free(e);
}

static const capfan_source_ops EFVI_OPS = {
    .kind = "efvi",
    .linktype = efvi_linktype,
    .prepare = efvi_prepare,
    .recv = efvi_recv,
    .stats = NULL,
    .close = efvi_close,
};

/* ------------------------------------------------------------------ filters */

/* Parse one "proto:host:port[:rhost:rport]" item into spec. */
static int parse_ip_filter(ef_filter_spec *fs, const char *item) {
    char buf[160], *save = NULL;
    snprintf(buf, sizeof buf, "%s", item);
    char *f[6];
    int n = 0;
    for (char *t = strtok_r(buf, ":", &save); t && n < 6; t = strtok_r(NULL, ":", &save)) f[n++] = t;
    if (n != 3 && n != 5) return -1;
    int proto = strcmp(f[0], "udp") == 0 ? 17 : strcmp(f[0], "tcp") == 0 ? 6 : -1;
    struct in_addr a, ra;
    if (proto < 0 || inet_pton(AF_INET, f[1], &a) != 1) return -1;
    int port = atoi(f[2]);
    if (port <= 0 || port > 65535) return -1;
    if (n == 3) return ef_filter_spec_set_ip4_local(fs, proto, a.s_addr, htons((uint16_t)port));
    int rport = atoi(f[4]);
    if (inet_pton(AF_INET, f[3], &ra) != 1 || rport <= 0 || rport > 65535) return -1;
    return ef_filter_spec_set_ip4_full(fs, proto, a.s_addr, htons((uint16_t)port), ra.s_addr, htons((uint16_t)rport));
}

static int add_filters(efvi *e) {
    char list[1024], *save = NULL;
    snprintf(list, sizeof list, "%s", e->o.filters && *e->o.filters ? e->o.filters : "sniff-promisc");
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ') item++;
        ef_filter_spec fs;
        ef_filter_spec_init(&fs, EF_FILTER_FLAG_NONE);
        int rc;
        if (strcmp(item, "sniff") == 0) rc = ef_filter_spec_set_port_sniff(&fs, 0);
        else if (strcmp(item, "sniff-promisc") == 0) rc = ef_filter_spec_set_port_sniff(&fs, 1);
        else if (strcmp(item, "all-unicast") == 0) rc = ef_filter_spec_set_unicast_all(&fs);
        else if (strcmp(item, "all-multicast") == 0) rc = ef_filter_spec_set_multicast_all(&fs);
        else if (strncmp(item, "udp:", 4) == 0 || strncmp(item, "tcp:", 4) == 0) {
            rc = parse_ip_filter(&fs, item);
            if (rc == -1)
                return capfan_set_error(CAPFAN_EINVAL, "bad ef_vi filter %s: want udp|tcp:HOST:PORT or "
                                        "udp|tcp:HOST:PORT:RHOST:RPORT (IPv4)", item);
        } else {
            return capfan_set_error(CAPFAN_EINVAL, "unknown ef_vi filter %s: one of sniff, sniff-promisc, all-unicast, "
                                    "all-multicast, udp|tcp:HOST:PORT[:RHOST:RPORT]", item);
        }
        if (rc < 0) return capfan_set_error(CAPFAN_ENOTSUP, "ef_vi filter %s not supported on %s: %s", item, e->o.ifname, strerror(-rc));
        rc = e->set_up ? ef_vi_set_filter_add(&e->set, e->dh, &fs, NULL) : ef_vi_filter_add(&e->v[0].vi, e->dh, &fs, NULL);
        if (rc < 0)
            return capfan_set_error(rc == -EPERM || rc == -EACCES ? CAPFAN_EPERM : CAPFAN_ESYS,
                                    "cannot add ef_vi filter %s on %s: %s", item, e->o.ifname, strerror(-rc));
    }
    return 0;
}

/* ------------------------------------------------------------------ open */

/* A driver handle of VI i's own (interrupt mode blocks on it; separate handles keep wakeups per VI). */
static int vi_handle(efvi *e, int i) {
    int rc = ef_driver_open(&e->v[i].dh);
    if (rc < 0)
        return capfan_set_error(CAPFAN_ESYS, "ef_driver_open for VI %d: %s (is the Onload/sfc_char driver loaded?)",
                                i, strerror(-rc));
    e->v[i].dh_open = 1;
    return 0;
}

capfan_source *capfan_efvi_open(const capfan_efvi_opts *o, capfan_producer *p) {
    if (!o || !o->ifname || !p) {
        capfan_set_error(CAPFAN_EINVAL, "ef_vi source needs an interface name and a producer");
        return NULL;
    }
    if (o->rss_vis < 0 || o->rss_vis > MAX_VIS) {
        capfan_set_error(CAPFAN_EINVAL, "ef_vi rss_vis must be 0..%d", MAX_VIS);
        return NULL;
    }
    efvi *e = calloc(1, sizeof *e);
    if (!e) {
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    e->base.ops = &EFVI_OPS;
    e->o = *o;
    e->p = p;
    capfan_ring_stats rs;
    capfan_ring_stats_get(capfan_producer_ring(p), &rs);
    uint64_t alen = 0;
    e->arena = capfan_producer_arena(p, &alen);
    e->ndesc = rs.ndesc;
    e->full_drop = rs.full_policy != 0;
    e->snaplen = rs.snaplen ? rs.snaplen : 65535;
    if (o->jumbo) { /* the jumbo area: the arena's last jumbo_bytes (auto: an eighth, at most 16 MiB) */
        uint64_t j = o->jumbo_bytes ? o->jumbo_bytes : alen / 8;
        if (!o->jumbo_bytes && j > (16u << 20)) j = 16u << 20;
        j &= ~(uint64_t)(BUF_STRIDE - 1);
        if (j + 16 * BUF_STRIDE > alen) {
            capfan_set_error(CAPFAN_EINVAL, "ef_vi jumbo_bytes %llu leaves too little of the ring arena (%llu bytes) "
                             "for receive buffers: make the arena larger or jumbo_bytes smaller",
                             (unsigned long long)j, (unsigned long long)alen);
            goto fail;
        }
        e->jlen = j;
        e->jbase = alen - j;
        e->jcap = (uint32_t)(j / 1024 + 1);
        e->jfifo = malloc(sizeof *e->jfifo * e->jcap);
        if (!e->jfifo) {
            capfan_set_error(CAPFAN_ESYS, "out of memory for the ef_vi jumbo area");
            goto fail;
        }
        alen = e->jbase;
    }
    uint64_t nb = alen / BUF_STRIDE;
    if (nb > (1u << 24)) nb = 1u << 24;
    if (((uintptr_t)e->arena & (EF_VI_DMA_ALIGN - 1)) || nb < 16) {
        capfan_set_error(CAPFAN_EINVAL, "the ring arena (%llu bytes) is too small or misaligned for ef_vi buffers",
                         (unsigned long long)alen);
        goto fail;
    }
    e->nbufs = (uint32_t)nb;
    if (o->wait < 0 || o->wait > 1 || o->jumbo < 0 || o->jumbo > 1) {
        capfan_set_error(CAPFAN_EINVAL, "ef_vi wait must be 0 (poll) or 1 (interrupt), jumbo 0 (truncate) or 1 (reassemble)");
        goto fail;
    }
    e->free_bufs = malloc(sizeof *e->free_bufs * e->nbufs);
    e->posted = calloc(e->nbufs, 1);
    e->fifo = malloc(sizeof *e->fifo * e->nbufs);
    if (!e->free_bufs || !e->posted || !e->fifo) {
        capfan_set_error(CAPFAN_ESYS, "out of memory for %u ef_vi buffers", e->nbufs);
        goto fail;
    }
    /* packets a previous producer left in the ring (between tail and head, e.g. after a crash)
     * keep their buffers until reclaimed; the other buffers start free */
    {
        const capfan_desc *d = capfan_ring_desc(capfan_producer_ring(p));
        uint64_t mask = rs.ndesc - 1, head = capfan_producer_head(p);
        uint64_t jprev = 0;
        for (uint64_t q = capfan_producer_tail(p); q < head; q++) {
            const capfan_desc *x = &d[q & mask];
            if (x->seq == q && e->jlen && x->off >= e->jbase && x->off < e->jbase + e->jlen && e->jcount < e->jcap) {
                uint64_t a = jprev - jprev % e->jlen + (x->off - e->jbase); /* back to a monotonic position */
                if (a < jprev) a += e->jlen;
                jfifo_push(e, q, a, x->caplen);
                jprev = a + ((x->caplen + JUMBO_ALIGN - 1) & ~(JUMBO_ALIGN - 1));
                e->jw = jprev;
                continue;
            }
            uint64_t b = x->off / BUF_STRIDE;
            if (x->seq != q || b >= e->nbufs || e->posted[b]) continue;
            e->posted[b] = 0xff; /* busy marker, cleared below */
            fifo_push(e, q, (uint32_t)b);
        }
        for (uint32_t b = e->nbufs; b-- > 0;) {
            if (e->posted[b]) e->posted[b] = 0;
            else e->free_bufs[e->nfree++] = b;
        }
    }

    int rc = ef_driver_open(&e->dh);
    if (rc < 0) {
        capfan_set_error(CAPFAN_ESYS, "ef_driver_open: %s (is the Onload/sfc_char driver loaded?)", strerror(-rc));
        goto fail;
    }
    e->dh_open = 1;
    rc = ef_pd_alloc_by_name(&e->pd, e->dh, o->ifname, EF_PD_DEFAULT);
    if (rc < 0) {
        capfan_set_error(rc == -EPERM ? CAPFAN_EPERM : CAPFAN_ESYS, "ef_pd_alloc_by_name %s: %s", o->ifname, strerror(-rc));
        goto fail;
    }
    e->pd_up = 1;
    rc = ef_memreg_alloc(&e->mr, e->dh, &e->pd, e->dh, e->arena, (size_t)e->nbufs * BUF_STRIDE);
    if (rc < 0) {
        capfan_set_error(CAPFAN_ESYS, "cannot register the ring arena as ef_vi packet memory on %s: %s "
                         "(pinning needs CAP_IPC_LOCK or a large RLIMIT_MEMLOCK)", o->ifname, strerror(-rc));
        goto fail;
    }
    e->mr_up = 1;
    enum ef_vi_flags fl = EF_VI_FLAGS_DEFAULT;
    if (o->hw_timestamps) fl = (enum ef_vi_flags)(fl | EF_VI_RX_TIMESTAMPS);
    if (o->merge) fl = (enum ef_vi_flags)(fl | EF_VI_RX_EVENT_MERGE);
    int evq = o->evq_size > 0 ? o->evq_size : -1, rxq = o->rxq_size > 0 ? o->rxq_size : -1;
    if (o->rss_vis > 0) {
        rc = ef_vi_set_alloc_from_pd(&e->set, e->dh, &e->pd, e->dh, o->rss_vis);
        if (rc < 0) {
            capfan_set_error(CAPFAN_ESYS, "ef_vi_set_alloc_from_pd (%d VIs) on %s: %s", o->rss_vis, o->ifname, strerror(-rc));
            goto fail;
        }
        e->set_up = 1;
        for (int i = 0; i < o->rss_vis; i++) {
            if ((rc = vi_handle(e, i)) < 0) goto fail;
            rc = ef_vi_alloc_from_set(&e->v[i].vi, e->v[i].dh, &e->set, e->dh, i, evq, rxq, 0, NULL, -1, fl);
            if (rc < 0) {
                capfan_set_error(CAPFAN_ESYS, "ef_vi_alloc_from_set %d on %s: %s", i, o->ifname, strerror(-rc));
                goto fail;
            }
            e->v[i].up = 1;
            e->nvis++;
        }
    } else {
        if ((rc = vi_handle(e, 0)) < 0) goto fail;
        rc = ef_vi_alloc_from_pd(&e->v[0].vi, e->v[0].dh, &e->pd, e->dh, evq, rxq, 0, NULL, -1, fl);
        if (rc < 0) {
            capfan_set_error(CAPFAN_ESYS, "ef_vi_alloc_from_pd on %s: %s", o->ifname, strerror(-rc));
            goto fail;
        }
        e->v[0].up = 1;
        e->nvis = 1;
    }
    e->buf_len = (uint32_t)ef_vi_receive_buffer_len(&e->v[0].vi);
    e->prefix = (uint32_t)ef_vi_receive_prefix_len(&e->v[0].vi);
    if (e->buf_len > BUF_STRIDE || e->prefix >= e->buf_len) {
        capfan_set_error(CAPFAN_ENOTSUP, "ef_vi buffer length %u (prefix %u) does not fit capfan's %u-byte buffers",
                         e->buf_len, e->prefix, BUF_STRIDE);
        goto fail;
    }
    if ((rc = add_filters(e)) != 0) goto fail;
    return &e->base;
fail:
    efvi_close(&e->base);
    return NULL;
}

int capfan_efvi_emulated(void) {
#ifdef CAPFAN_EMUL_EF_VI_H
    return 1; /* compiled against tests/emul/efvi: only ever in a test build */
#else
    return 0;
#endif
}

int capfan_efvi_counters_get(capfan_source *s, capfan_efvi_counters *out) {
    if (!s || s->ops != &EFVI_OPS) return capfan_set_error(CAPFAN_EINVAL, "not an ef_vi source");
    *out = ((efvi *)s)->c;
    return 0;
}

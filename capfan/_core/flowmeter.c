/* capfan flow meter: a fixed-size bidirectional flow table fed by parsed packets (see
 * flowmeter.h for the contract).
 *
 * Memory is allocated once in capfan_flowmeter_new(): the flow entries, their hash buckets and
 * the first-fragment table. Only the output buffer of ended records grows. Expiry is O(1) per
 * packet: flows sit on three intrusive lists whose heads are always the next to expire:
 *   - idle: every flow, by last-seen. A packet only updates last_ns (moving the flow to the
 *     tail would touch two more random entries per packet); the head is requeued lazily when
 *     it turns out to have been seen since it was queued (second chance), so the head is the
 *     least recently seen flow (give or take capture reordering) and the victim when the
 *     table is full;
 *   - active: open flows with packets, by record start (FIFO);
 *   - linger: flows that ended (FIN both ways / RST), by the end of their linger time (FIFO,
 *     the linger being the same for all).
 */
#include "flowmeter.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define NIL UINT32_MAX
#define CHUNK 64            /* packets parsed before the torn check of a lossy batch */
#define OUT_INITIAL 1024    /* records the output buffer holds before it first grows */
#define MAX_TABLE (1u << 30)
#define PF_DIST 24          /* packets ahead whose headers are prefetched while parsing */

_Static_assert(sizeof(capfan_flow_record) == 136, "records.py FLOW_DTYPE is 136 bytes");
_Static_assert((unsigned)CAPFAN_P_IPV6_EXT == (unsigned)CAPFAN_FLOW_IPV6_EXT &&
               (unsigned)CAPFAN_P_TUNNEL == (unsigned)CAPFAN_FLOW_TUNNEL &&
               (unsigned)CAPFAN_P_DECAP == (unsigned)CAPFAN_FLOW_DECAP &&
               (unsigned)CAPFAN_P_QINQ == (unsigned)CAPFAN_FLOW_QINQ &&
               (unsigned)CAPFAN_P_MPLS == (unsigned)CAPFAN_FLOW_MPLS,
               "parser flags are ORed into record flags as they are");
_Static_assert((unsigned)CAPFAN_PARSE_MPLS == (unsigned)CAPFAN_DECAP_MPLS &&
               (unsigned)CAPFAN_PARSE_GRE == (unsigned)CAPFAN_DECAP_GRE &&
               (unsigned)CAPFAN_PARSE_VXLAN == (unsigned)CAPFAN_DECAP_VXLAN,
               "decap switches are parser options");

#define PKT_FLAGS (CAPFAN_FLOW_IPV6_EXT | CAPFAN_FLOW_TUNNEL | CAPFAN_FLOW_DECAP | \
                   CAPFAN_FLOW_QINQ | CAPFAN_FLOW_MPLS)
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Canonical flow key, compared as six 64-bit words: (a, pa) is the lower endpoint so both
 * directions build the same key. IPv4 addresses are stored IPv4-mapped. */
typedef union fkey {
    struct {
        uint8_t a[16], b[16];
        uint16_t pa, pb;
        uint16_t vlan, inner_vlan;
        uint16_t icmp;  /* ICMP type<<8|code, replies folded onto their request; 0 otherwise */
        uint8_t version, proto;
        uint16_t _pad;
    } f;
    uint64_t w[6];
} fkey;
_Static_assert(sizeof(fkey) == 48, "key is six words");

typedef struct link { uint32_t prev, next; } link;
typedef struct list { uint32_t head, tail; } list;

enum flow_state { ST_FREE = 0, ST_OPEN, ST_EMPTY, ST_LINGER };
enum qlist { Q_NONE = 0, Q_ACTIVE, Q_LINGER };

/* One flow; counters per endpoint side (0 = key.a, 1 = key.b), mapped to initiator/responder
 * only when the record is written, so a late SYN just flips `init`. */
typedef struct flow {
    fkey k;
    uint32_t hnext;      /* next in hash bucket */
    uint32_t hash;       /* symmetric flow hash (record) */
    link lru;            /* idle list; free list when unused */
    link q;              /* active or linger list (qlist says which) */
    union {              /* one word: an open flow has no linger, a lingering one no active timeout */
        uint64_t first_ns;      /* ST_OPEN: start of the current record (active timeout) */
        uint64_t linger_until;  /* ST_LINGER */
    };
    uint64_t last_ns;    /* last packet, either side (idle timeout) */
    uint64_t queued_ns;  /* last_ns when (re)queued on the idle list */
    uint64_t pk[2], oct[2], l2[2], start[2], end[2];
    uint16_t flags, port, first_icmp;
    uint8_t tflags[2];
    uint8_t init;        /* side of the initiator */
    uint8_t fin;         /* bit per side that sent a FIN */
    uint8_t state;       /* flow_state */
    uint8_t qlist;       /* qlist */
} flow;
/* Three whole cache lines on a 64-byte aligned table: meter_chunk prefetches exactly those. */
_Static_assert(sizeof(flow) == 192, "flow entry is three cache lines");

/* A first fragment's ports, so the later fragments of its datagram join its flow. */
typedef struct frag {
    uint8_t src[16], dst[16];
    uint32_t id;
    uint16_t vlan, inner_vlan;
    uint8_t version, proto;
    uint16_t sport, dport;
    uint32_t hnext;
    link q;              /* FIFO by arrival (= by expiry: one timeout for all); free list */
    uint64_t ts;
} frag;

struct capfan_flowmeter {
    capfan_flowmeter_config cfg;
    flow *flows;
    uint32_t *buckets;
    uint32_t bucket_mask;
    uint32_t nflows, used_hw;    /* capacity; entries ever handed out (lazy first touch) */
    uint32_t free_head;
    list idle, active, linger;
    frag *frags;
    uint32_t *fbuckets;
    uint32_t fbucket_mask;
    uint32_t nfrags, frags_hw, frag_free, frags_used;
    list fq;
    capfan_flow_record *out;
    uint32_t out_head, out_len, out_cap;
    uint64_t wall_at_pkt;        /* CLOCK_REALTIME when packets last arrived (0: never) */
    uint64_t now_at_pkt;         /* the clock then */
    capfan_flowmeter_stats st;
};

static const char *const BAD_NAMES[CAPFAN_BAD_MAX] = {
    "none", "linktype", "l2_truncated", "ip_truncated", "ip_version", "ip_header",
    "ipv6_ext", "l4_truncated", "tunnel", "torn",
};

const char *capfan_flowmeter_bad_name(uint32_t reason) {
    return reason < CAPFAN_BAD_MAX ? BAD_NAMES[reason] : NULL;
}

static uint64_t wall_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Zeroed memory for a big table, on transparent huge pages where the kernel allows (a flow
 * lookup is a random access: 4 KiB pages would add a TLB miss to each). Pages are touched
 * only as entries are used. */
static void *table_alloc(size_t bytes) {
    if (bytes < (2u << 20)) { /* cache-line aligned, so flow entries do not straddle lines */
        size_t rounded = (bytes + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, rounded ? rounded : 64);
        if (p) memset(p, 0, rounded);
        return p;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

static void table_free(void *p, size_t bytes) {
    if (!p) return;
    if (bytes < (2u << 20)) free(p);
    else munmap(p, bytes);
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t p = 1;
    while (p < n && p < (1u << 31)) p <<= 1;
    return p;
}

/* ---- intrusive lists (indices into fm->flows) ---- */

static inline link *lk(flow *f, int q) { return q ? &f->q : &f->lru; }

static inline void list_push(flow *fl, list *L, uint32_t i, int q) {
    link *l = lk(&fl[i], q);
    l->prev = L->tail;
    l->next = NIL;
    if (L->tail != NIL) lk(&fl[L->tail], q)->next = i;
    else L->head = i;
    L->tail = i;
}

static inline void list_del(flow *fl, list *L, uint32_t i, int q) {
    link *l = lk(&fl[i], q);
    if (l->prev != NIL) lk(&fl[l->prev], q)->next = l->next;
    else L->head = l->next;
    if (l->next != NIL) lk(&fl[l->next], q)->prev = l->prev;
    else L->tail = l->prev;
}

static inline void q_leave(capfan_flowmeter *fm, uint32_t i) {
    flow *f = &fm->flows[i];
    if (f->qlist == Q_ACTIVE) list_del(fm->flows, &fm->active, i, 1);
    else if (f->qlist == Q_LINGER) list_del(fm->flows, &fm->linger, i, 1);
    f->qlist = Q_NONE;
}

/* Move flow i from the idle list's head to its tail: it was seen since it was queued. */
static inline void requeue(capfan_flowmeter *fm, uint32_t i) {
    list_del(fm->flows, &fm->idle, i, 0);
    list_push(fm->flows, &fm->idle, i, 0);
    fm->flows[i].queued_ns = fm->flows[i].last_ns;
}

/* ---- records ---- */

static void out_push(capfan_flowmeter *fm, const capfan_flow_record *r) {
    if (fm->out_len == fm->out_cap) {
        if (fm->out_head) { /* reuse what drain already took */
            memmove(fm->out, fm->out + fm->out_head, (size_t)(fm->out_len - fm->out_head) * sizeof *r);
            fm->out_len -= fm->out_head;
            fm->out_head = 0;
        } else {
            uint32_t cap = fm->out_cap ? fm->out_cap * 2 : OUT_INITIAL;
            capfan_flow_record *o = cap > fm->out_cap ? realloc(fm->out, (size_t)cap * sizeof *r) : NULL;
            if (!o) { fm->st.records_lost++; return; }
            fm->out = o;
            fm->out_cap = cap;
        }
    }
    fm->out[fm->out_len++] = *r;
}

/* Write the flow's current record with `reason` (nothing if it holds no packets). */
static void emit(capfan_flowmeter *fm, flow *f, uint8_t reason) {
    int i = f->init, o = !i;
    if (!f->pk[0] && !f->pk[1]) return;
    capfan_flow_record r;
    memset(&r, 0, sizeof r);
    uint64_t s0 = f->pk[0] ? f->start[0] : UINT64_MAX, s1 = f->pk[1] ? f->start[1] : UINT64_MAX;
    r.start_ns = s0 < s1 ? s0 : s1;
    r.end_ns = f->end[0] > f->end[1] ? f->end[0] : f->end[1];
    r.rev_start_ns = f->pk[o] ? f->start[o] : 0;
    r.rev_end_ns = f->pk[o] ? f->end[o] : 0;
    r.packets = f->pk[i];
    r.rev_packets = f->pk[o];
    r.octets = f->oct[i];
    r.rev_octets = f->oct[o];
    r.l2_octets = f->l2[i];
    r.rev_l2_octets = f->l2[o];
    memcpy(r.src, i ? f->k.f.b : f->k.f.a, 16);
    memcpy(r.dst, i ? f->k.f.a : f->k.f.b, 16);
    r.hash = f->hash;
    if (f->k.f.icmp || f->k.f.proto == 1 || f->k.f.proto == 58) {
        r.sport = 0;
        r.dport = f->first_icmp;
    } else {
        r.sport = i ? f->k.f.pb : f->k.f.pa;
        r.dport = i ? f->k.f.pa : f->k.f.pb;
    }
    r.vlan = f->k.f.vlan;
    r.inner_vlan = f->k.f.inner_vlan;
    r.port = f->port;
    r.flags = f->flags;
    r.ip_version = f->k.f.version;
    r.proto = f->k.f.proto;
    r.tcp_flags = f->tflags[i];
    r.rev_tcp_flags = f->tflags[o];
    r.end_reason = reason;
    fm->st.flows_ended[reason]++;
    out_push(fm, &r);
}

static void reset_counters(flow *f) {
    memset(f->pk, 0, sizeof f->pk);
    memset(f->oct, 0, sizeof f->oct);
    memset(f->l2, 0, sizeof f->l2);
    memset(f->start, 0, sizeof f->start);
    memset(f->end, 0, sizeof f->end);
    f->tflags[0] = f->tflags[1] = 0;
    f->flags &= CAPFAN_FLOW_SYN_INITIATOR; /* direction knowledge outlives the record */
}

/* ---- flow table ---- */

static inline uint32_t bucket_of(const capfan_flowmeter *fm, uint32_t hash, const fkey *k) {
    uint64_t x = (uint64_t)hash ^ ((uint64_t)k->f.vlan << 32 | (uint64_t)k->f.inner_vlan << 48) ^
                 ((uint64_t)k->f.icmp << 16);
    x *= 0x9e3779b97f4a7c15ull;
    return (uint32_t)(x >> 32) & fm->bucket_mask;
}

static inline int key_eq(const fkey *x, const fkey *y) {
    return ((x->w[0] ^ y->w[0]) | (x->w[1] ^ y->w[1]) | (x->w[2] ^ y->w[2]) | (x->w[3] ^ y->w[3]) |
            (x->w[4] ^ y->w[4]) | (x->w[5] ^ y->w[5])) == 0;
}

/* Remove flow i from the table, its lists and the bucket; it becomes free. */
static void flow_free(capfan_flowmeter *fm, uint32_t i) {
    flow *f = &fm->flows[i];
    uint32_t *pp = &fm->buckets[bucket_of(fm, f->hash, &f->k)];
    while (*pp != i) pp = &fm->flows[*pp].hnext;
    *pp = f->hnext;
    list_del(fm->flows, &fm->idle, i, 0);
    q_leave(fm, i);
    f->state = ST_FREE;
    f->lru.next = fm->free_head;
    fm->free_head = i;
    fm->st.flows_active--;
}

/* End flow i: write its record and free it. */
static void flow_end(capfan_flowmeter *fm, uint32_t i, uint8_t reason) {
    emit(fm, &fm->flows[i], reason);
    flow_free(fm, i);
}

static uint32_t flow_alloc(capfan_flowmeter *fm) {
    uint32_t i;
    if (fm->free_head != NIL) {
        i = fm->free_head;
        fm->free_head = fm->flows[i].lru.next;
    } else if (fm->used_hw < fm->nflows) {
        i = fm->used_hw++;
    } else { /* full: the least recently seen flow makes room */
        uint32_t v = fm->idle.head;
        while (fm->flows[v].last_ns > fm->flows[v].queued_ns) { /* seen since queued */
            requeue(fm, v);
            v = fm->idle.head;
        }
        flow *f = &fm->flows[v];
        if (f->state == ST_LINGER) flow_end(fm, v, CAPFAN_END_EOF); /* it was over anyway */
        else flow_end(fm, v, CAPFAN_END_RESOURCES);
        i = fm->free_head;
        fm->free_head = fm->flows[i].lru.next;
    }
    return i;
}

/* ---- fragments ---- */

static inline uint32_t frag_bucket(const capfan_flowmeter *fm, const capfan_pkt_info *in) {
    uint64_t x = (uint64_t)in->frag_id * 0x9e3779b97f4a7c15ull;
    for (int j = 0; j < 16; j += 8) {
        uint64_t a, b;
        memcpy(&a, in->src + j, 8);
        memcpy(&b, in->dst + j, 8);
        x = (x ^ a ^ (b << 1 | b >> 63)) * 0xff51afd7ed558ccdull;
    }
    x ^= (uint64_t)in->proto << 8 | in->vlan;
    x *= 0xc4ceb9fe1a85ec53ull;
    return (uint32_t)(x >> 32) & fm->fbucket_mask;
}

static inline int frag_match(const frag *g, const capfan_pkt_info *in) {
    return g->id == in->frag_id && g->proto == in->proto && g->version == in->ip_version &&
           g->vlan == in->vlan && g->inner_vlan == in->inner_vlan &&
           memcmp(g->src, in->src, 16) == 0 && memcmp(g->dst, in->dst, 16) == 0;
}

static inline link *flk(frag *g) { return &g->q; }

static void frag_qdel(capfan_flowmeter *fm, uint32_t i) {
    link *l = flk(&fm->frags[i]);
    if (l->prev != NIL) flk(&fm->frags[l->prev])->next = l->next;
    else fm->fq.head = l->next;
    if (l->next != NIL) flk(&fm->frags[l->next])->prev = l->prev;
    else fm->fq.tail = l->prev;
}

static void frag_qpush(capfan_flowmeter *fm, uint32_t i) {
    link *l = flk(&fm->frags[i]);
    l->prev = fm->fq.tail;
    l->next = NIL;
    if (fm->fq.tail != NIL) flk(&fm->frags[fm->fq.tail])->next = i;
    else fm->fq.head = i;
    fm->fq.tail = i;
}

static void frag_free(capfan_flowmeter *fm, uint32_t i) {
    frag *g = &fm->frags[i];
    capfan_pkt_info probe;
    memcpy(probe.src, g->src, 16);
    memcpy(probe.dst, g->dst, 16);
    probe.frag_id = g->id;
    probe.proto = g->proto;
    probe.vlan = g->vlan;
    uint32_t *pp = &fm->fbuckets[frag_bucket(fm, &probe)];
    while (*pp != i) pp = &fm->frags[*pp].hnext;
    *pp = g->hnext;
    frag_qdel(fm, i);
    g->q.next = fm->frag_free;
    fm->frag_free = i;
    fm->frags_used--;
}

static uint32_t frag_find(capfan_flowmeter *fm, const capfan_pkt_info *in, uint32_t b) {
    for (uint32_t i = fm->fbuckets[b]; i != NIL; i = fm->frags[i].hnext)
        if (frag_match(&fm->frags[i], in)) return i;
    return NIL;
}

/* Remember a first fragment's ports (src/dst as in the packet). */
static void frag_remember(capfan_flowmeter *fm, const capfan_pkt_info *in, uint64_t ts) {
    uint32_t b = frag_bucket(fm, in);
    uint32_t i = frag_find(fm, in, b);
    if (i != NIL) { /* duplicate first fragment: refresh */
        frag_qdel(fm, i);
    } else {
        if (fm->frag_free != NIL) {
            i = fm->frag_free;
            fm->frag_free = fm->frags[i].q.next;
        } else if (fm->frags_hw < fm->nfrags) {
            i = fm->frags_hw++;
        } else { /* full: forget the oldest */
            frag_free(fm, fm->fq.head);
            i = fm->frag_free;
            fm->frag_free = fm->frags[i].q.next;
        }
        frag *g = &fm->frags[i];
        memcpy(g->src, in->src, 16);
        memcpy(g->dst, in->dst, 16);
        g->id = in->frag_id;
        g->vlan = in->vlan;
        g->inner_vlan = in->inner_vlan;
        g->version = in->ip_version;
        g->proto = in->proto;
        g->hnext = fm->fbuckets[b];
        fm->fbuckets[b] = i;
        fm->frags_used++;
    }
    frag *g = &fm->frags[i];
    g->sport = in->sport;
    g->dport = in->dport;
    g->ts = ts;
    frag_qpush(fm, i);
}

/* ---- time ---- */

/* End whatever is due at fm->st.now_ns; each loop stops at the first entry not due. */
static void expire(capfan_flowmeter *fm) {
    uint64_t now = fm->st.now_ns;
    flow *fl = fm->flows;
    uint64_t idle = fm->cfg.idle_timeout_ns, active = fm->cfg.active_timeout_ns;
    while (fm->linger.head != NIL && fl[fm->linger.head].linger_until <= now)
        flow_end(fm, fm->linger.head, CAPFAN_END_EOF);
    if (idle) {
        /* only heads queued an idle time ago can be idle; seen since: requeue (second chance) */
        while (fm->idle.head != NIL && fl[fm->idle.head].queued_ns + idle <= now) {
            uint32_t i = fm->idle.head;
            if (fl[i].last_ns + idle <= now) {
                flow_end(fm, i, fl[i].state == ST_LINGER ? CAPFAN_END_EOF : CAPFAN_END_IDLE);
            } else {
                requeue(fm, i);
            }
        }
    }
    if (active) {
        while (fm->active.head != NIL && fl[fm->active.head].first_ns + active <= now) {
            uint32_t i = fm->active.head;
            emit(fm, &fl[i], CAPFAN_END_ACTIVE); /* the flow goes on in a new record */
            reset_counters(&fl[i]);
            fl[i].state = ST_EMPTY;
            q_leave(fm, i);
        }
    }
    while (fm->fq.head != NIL && fm->frags[fm->fq.head].ts + fm->cfg.fragment_timeout_ns <= now)
        frag_free(fm, fm->fq.head);
}

/* ---- metering one packet ---- */

/* Request type an ICMP reply folds onto (so both directions share a key); errors flagged. */
static inline uint8_t icmp_fold(uint8_t v6, uint8_t type, uint16_t *flags) {
    if (!v6) {
        switch (type) {
        case 0: return 8;    /* echo reply -> echo request */
        case 14: return 13;  /* timestamp */
        case 16: return 15;  /* information */
        case 18: return 17;  /* address mask */
        case 9: return 10;   /* router advertisement -> solicitation */
        case 3: case 4: case 5: case 11: case 12: *flags |= CAPFAN_FLOW_ICMP_ERROR; return type;
        default: return type;
        }
    }
    switch (type) {
    case 129: return 128;  /* echo */
    case 131: return 130;  /* MLD report -> query */
    case 134: return 133;  /* router advertisement -> solicitation */
    case 136: return 135;  /* neighbor advertisement -> solicitation */
    case 140: return 139;  /* node information */
    case 1: case 2: case 3: case 4: *flags |= CAPFAN_FLOW_ICMP_ERROR; return type;
    default: return type;
    }
}

/* A word read from memory as a big-endian number, so words compare like memcmp of bytes. */
static inline uint64_t be64(uint64_t w) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(w);
#else
    return w;
#endif
}

/* The 16-byte key address (IPv4 mapped to ::ffff:a.b.c.d) as the two words memory holds. */
static inline void addr_words(const uint8_t *src, int v6, uint64_t *w0, uint64_t *w1) {
    if (v6) {
        memcpy(w0, src, 8);
        memcpy(w1, src + 8, 8);
        return;
    }
    uint32_t a;
    memcpy(&a, src, 4);
    *w0 = 0;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    *w1 = 0xffff0000ull | (uint64_t)a << 32;  /* bytes 8..15: 00 00 ff ff a b c d */
#else
    *w1 = 0x0000ffff00000000ull | a;
#endif
}

/* Enter linger after FIN both ways or a RST (or end now without a linger). */
static void flow_finish(capfan_flowmeter *fm, uint32_t i, uint64_t ts) {
    flow *f = &fm->flows[i];
    if (!fm->cfg.end_linger_ns) {
        flow_end(fm, i, CAPFAN_END_EOF);
        return;
    }
    q_leave(fm, i);
    f->state = ST_LINGER;
    f->linger_until = ts + fm->cfg.end_linger_ns;
    list_push(fm->flows, &fm->linger, i, 1);
    f->qlist = Q_LINGER;
}

/* A packet's flow key and what goes with it, computed ahead of the table lookup so that a
 * chunk of packets can prefetch their buckets and entries. */
typedef struct pkey {
    fkey k;
    uint32_t hash, bucket;
    uint16_t pflags, icmp_first;
    uint8_t side, tcp_known, tcp_flags, _pad;
} pkey;

/* Key of one parsed IP packet (info->bad == 0, CAPFAN_F_L3 set); fragments are looked up (and
 * first fragments remembered) here, in packet order. */
static void make_key(capfan_flowmeter *fm, capfan_pkt_info *in, uint64_t ts, pkey *pk) {
    uint16_t pflags = (uint16_t)(in->pflags & PKT_FLAGS);
    int v6 = in->ip_version == 6, orphan = 0;
    if (!v6) { /* the parser fills 4 bytes; fragment keys compare 16 */
        memset(in->src + 4, 0, 12);
        memset(in->dst + 4, 0, 12);
    }
    int tcp_known = in->proto == 6 && (in->flags & CAPFAN_F_L4);
    if (in->flags & CAPFAN_F_FRAGMENT) {
        fm->st.fragments++;
        pflags |= CAPFAN_FLOW_FRAGMENTS;
        if (in->frag_off == 0) {
            frag_remember(fm, in, ts);
        } else {
            uint32_t g = frag_find(fm, in, frag_bucket(fm, in));
            if (g != NIL && fm->frags[g].ts + fm->cfg.fragment_timeout_ns > ts) {
                in->sport = fm->frags[g].sport;
                in->dport = fm->frags[g].dport;
            } else {
                fm->st.fragment_orphans++;
                pflags |= CAPFAN_FLOW_FRAG_ORPHAN;
                orphan = 1;
                in->sport = in->dport = 0;
            }
            in->tcp_flags = 0;
            tcp_known = 0;
        }
    }
    fkey *k = &pk->k;
    k->w[4] = k->w[5] = 0;
    uint16_t sp = in->sport, dp = in->dport;
    pk->icmp_first = 0;
    if ((in->proto == 1 || in->proto == 58) && !orphan) {
        pk->icmp_first = in->sport;
        uint8_t t = icmp_fold((uint8_t)(in->proto == 58), (uint8_t)(in->sport >> 8), &pflags);
        k->f.icmp = (uint16_t)(t << 8 | (in->sport & 0xFF));
        sp = dp = 0;
    }
    /* addresses as words, not bytes: byte stores re-read as 16-byte loads stall on store
     * forwarding, twice per packet */
    uint64_t s0, s1, d0, d1;
    addr_words(in->src, v6, &s0, &s1);
    addr_words(in->dst, v6, &d0, &d1);
    int c = s0 != d0 ? (be64(s0) > be64(d0) ? 1 : -1) : s1 != d1 ? (be64(s1) > be64(d1) ? 1 : -1) : 0;
    int side = c > 0 || (c == 0 && sp > dp);
    if (!side) {
        k->w[0] = s0; k->w[1] = s1; k->w[2] = d0; k->w[3] = d1; k->f.pa = sp; k->f.pb = dp;
    } else {
        k->w[0] = d0; k->w[1] = d1; k->w[2] = s0; k->w[3] = s1; k->f.pa = dp; k->f.pb = sp;
    }
    k->f.vlan = in->vlan;
    k->f.inner_vlan = in->inner_vlan;
    k->f.version = in->ip_version;
    k->f.proto = in->proto;
    pk->hash = capfan_sym_hash(in->src, in->dst, v6, in->proto, sp, dp);
    pk->bucket = bucket_of(fm, pk->hash, k);
    pk->pflags = pflags;
    pk->side = (uint8_t)side;
    pk->tcp_known = (uint8_t)tcp_known;
    pk->tcp_flags = in->tcp_flags;
}

/* Meter one keyed packet into its flow. */
static void meter(capfan_flowmeter *fm, const capfan_pkt_info *in, const pkey *pk, uint64_t ts,
                  uint32_t wirelen, uint16_t port) {
    if (ts > fm->st.now_ns) {
        fm->st.now_ns = ts;
        expire(fm);
    }
    flow *fl = fm->flows;
    uint32_t b = pk->bucket;
    int side = pk->side;
    uint32_t i = fm->buckets[b];
    while (i != NIL && !key_eq(&fl[i].k, &pk->k)) i = fl[i].hnext;
    int syn_only = pk->tcp_known && (pk->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
    if (i != NIL) {
        if (fm->cfg.idle_timeout_ns && fl[i].last_ns + fm->cfg.idle_timeout_ns <= ts) {
            /* idle already (the idle list is checked lazily): this packet starts a new flow */
            flow_end(fm, i, fl[i].state == ST_LINGER ? CAPFAN_END_EOF : CAPFAN_END_IDLE);
            i = NIL;
        } else if (fl[i].state == ST_LINGER && syn_only) {
            flow_end(fm, i, CAPFAN_END_EOF); /* a new connection reuses the ports */
            i = NIL;
        }
    }
    if (i == NIL) {
        i = flow_alloc(fm);
        flow *f = &fl[i];
        memset(f, 0, sizeof *f);
        f->k = pk->k;
        f->hash = pk->hash;
        f->init = (uint8_t)side;
        f->port = port;
        f->first_icmp = pk->icmp_first;
        f->state = ST_EMPTY;
        f->last_ns = f->queued_ns = ts;
        f->hnext = fm->buckets[b];
        fm->buckets[b] = i;
        list_push(fl, &fm->idle, i, 0);
        fm->st.flows_created++;
        if (++fm->st.flows_active > fm->st.flows_active_max) fm->st.flows_active_max = fm->st.flows_active;
    }
    flow *f = &fl[i];
    if (f->state == ST_EMPTY) { /* first packet of a record */
        f->state = ST_OPEN;
        f->first_ns = ts;
        list_push(fl, &fm->active, i, 1);
        f->qlist = Q_ACTIVE;
    }

    /* counters */
    uint16_t pflags = pk->pflags;
    uint32_t l3 = in->l3_off;
    uint32_t avail = wirelen > l3 ? wirelen - l3 : 0;
    uint32_t iplen = in->ip_len;
    if (!iplen) { /* 0: jumbogram / GSO frame: the header does not say, the wire does */
        iplen = avail;
        pflags |= CAPFAN_FLOW_LEN_FROM_FRAME;
    }
    if (iplen > avail) pflags |= CAPFAN_FLOW_MALFORMED; /* header claims more than the wire had */
    if (!f->pk[side] || ts < f->start[side]) f->start[side] = ts;
    if (ts > f->end[side]) f->end[side] = ts;
    if (ts > f->last_ns) f->last_ns = ts;
    f->pk[side]++;
    f->oct[side] += iplen;
    f->l2[side] += wirelen;
    f->tflags[side] |= pk->tcp_flags;
    f->flags |= pflags;

    /* TCP: who initiated, when it ended */
    if (pk->tcp_known && f->state == ST_OPEN) {
        if (syn_only && !(f->flags & CAPFAN_FLOW_SYN_INITIATOR)) {
            f->init = (uint8_t)side;
            f->flags |= CAPFAN_FLOW_SYN_INITIATOR;
        }
        if (pk->tcp_flags & TCP_FIN) f->fin |= (uint8_t)(1u << side);
        if ((pk->tcp_flags & TCP_RST) || f->fin == 3) flow_finish(fm, i, ts);
    }
}

/* Meter a chunk of parsed frames in three passes so the table's cache misses overlap:
 * classify and key (prefetch the bucket), prefetch the bucket's first entry, meter. */
static int64_t meter_chunk(capfan_flowmeter *fm, capfan_pkt_info *in, const uint64_t *ts,
                           const uint32_t *wl, const uint16_t *port, uint32_t m) {
    pkey pk[CHUNK];
    uint8_t ip[CHUNK];
    int64_t metered = 0;
    fm->st.packets += m;
    for (uint32_t j = 0; j < m; j++) {
        ip[j] = 0;
        if (in[j].bad) {
            fm->st.bad[in[j].bad]++;
        } else if (!(in[j].flags & CAPFAN_F_L3)) {
            fm->st.non_ip++;
        } else {
            ip[j] = 1;
            make_key(fm, &in[j], ts[j], &pk[j]);
            __builtin_prefetch(&fm->buckets[pk[j].bucket]);
        }
    }
    for (uint32_t j = 0; j < m; j++) {
        if (!ip[j]) continue;
        uint32_t h = fm->buckets[pk[j].bucket];
        if (h != NIL) { /* key line and counter lines */
            const char *e = (const char *)&fm->flows[h];
            __builtin_prefetch(e, 1);
            __builtin_prefetch(e + 64, 1);
            __builtin_prefetch(e + 128, 1);
        }
    }
    for (uint32_t j = 0; j < m; j++) {
        if (!ip[j]) continue;
        meter(fm, &in[j], &pk[j], ts[j], wl[j], port[j]);
        metered++;
    }
    fm->st.ip_packets += (uint64_t)metered;
    return metered;
}

/* Bring a frame's headers (up to ~80 bytes, any alignment: two lines) towards the cache a few
 * packets before the parser needs them: the first touch of every frame is a cache miss
 * (frames stream from a large buffer), and the parser would otherwise wait on each in turn.
 * A prefetch never faults, so a stale (torn) ring offset is harmless here. */
static inline void prefetch_hdr(const uint8_t *p) {
    __builtin_prefetch(p);
    __builtin_prefetch(p + 64);
}

static void note_arrival(capfan_flowmeter *fm) {
    fm->wall_at_pkt = wall_now();
    fm->now_at_pkt = fm->st.now_ns;
}

/* ---- API ---- */

capfan_flowmeter *capfan_flowmeter_new(const capfan_flowmeter_config *cfg) {
    capfan_flowmeter_config c = *cfg;
    if (!c.max_flows) c.max_flows = 1048576;
    if (!c.max_fragments) c.max_fragments = 65536;
    if (!c.fragment_timeout_ns) c.fragment_timeout_ns = 30000000000ull;
    if (c.max_flows > MAX_TABLE) {
        capfan_set_error(CAPFAN_EINVAL, "max_flows %u is above the limit %u", c.max_flows, MAX_TABLE);
        return NULL;
    }
    if (c.max_fragments > MAX_TABLE) {
        capfan_set_error(CAPFAN_EINVAL, "max_fragments %u is above the limit %u", c.max_fragments, MAX_TABLE);
        return NULL;
    }
    if (c.decap & ~(uint32_t)(CAPFAN_DECAP_MPLS | CAPFAN_DECAP_GRE | CAPFAN_DECAP_VXLAN)) {
        capfan_set_error(CAPFAN_EINVAL, "unknown decap bits 0x%x", c.decap);
        return NULL;
    }
    capfan_flowmeter *fm = calloc(1, sizeof *fm);
    if (!fm) goto oom;
    fm->cfg = c;
    fm->nflows = c.max_flows;
    fm->nfrags = c.max_fragments;
    uint32_t nb = pow2_at_least((uint64_t)c.max_flows * 2);
    uint32_t nfb = pow2_at_least((uint64_t)c.max_fragments * 2);
    fm->bucket_mask = nb - 1;
    fm->fbucket_mask = nfb - 1;
    /* calloc: pages are touched only as flows are used */
    fm->flows = table_alloc((size_t)c.max_flows * sizeof(flow));
    fm->buckets = table_alloc((size_t)nb * sizeof(uint32_t));
    fm->frags = table_alloc((size_t)c.max_fragments * sizeof(frag));
    fm->fbuckets = table_alloc((size_t)nfb * sizeof(uint32_t));
    fm->out = malloc(OUT_INITIAL * sizeof(capfan_flow_record));
    if (!fm->flows || !fm->buckets || !fm->frags || !fm->fbuckets || !fm->out) {
        capfan_flowmeter_free(fm);
        goto oom;
    }
    fm->out_cap = OUT_INITIAL;
    memset(fm->buckets, 0xFF, (size_t)nb * sizeof(uint32_t));
    memset(fm->fbuckets, 0xFF, (size_t)nfb * sizeof(uint32_t));
    fm->free_head = fm->frag_free = NIL;
    fm->idle.head = fm->idle.tail = fm->active.head = fm->active.tail = NIL;
    fm->linger.head = fm->linger.tail = fm->fq.head = fm->fq.tail = NIL;
    return fm;
oom:
    capfan_set_error(CAPFAN_ESYS, "flow meter: cannot allocate the tables for %u flows and %u fragments "
                     "(lower max_flows / max_fragments)", c.max_flows, c.max_fragments);
    return NULL;
}

void capfan_flowmeter_free(capfan_flowmeter *fm) {
    if (!fm) return;
    table_free(fm->flows, (size_t)fm->nflows * sizeof(flow));
    table_free(fm->buckets, ((size_t)fm->bucket_mask + 1) * sizeof(uint32_t));
    table_free(fm->frags, (size_t)fm->nfrags * sizeof(frag));
    table_free(fm->fbuckets, ((size_t)fm->fbucket_mask + 1) * sizeof(uint32_t));
    free(fm->out);
    free(fm);
}

int64_t capfan_flowmeter_packets(capfan_flowmeter *fm, const uint8_t *buf, const uint64_t *offs,
                                 const uint32_t *caplens, const uint32_t *wirelens,
                                 const uint64_t *ts_ns, uint32_t n, uint32_t linktype, uint16_t port) {
    uint32_t opts = fm->cfg.decap | CAPFAN_PARSE_GSO;
    uint64_t wall = ts_ns ? 0 : wall_now();
    int64_t metered = 0;
    capfan_pkt_info in[CHUNK];
    uint64_t ts[CHUNK];
    uint32_t wl[CHUNK];
    uint16_t ports[CHUNK];
    for (uint32_t j = 0; j < CHUNK; j++) ports[j] = port;
    for (uint32_t x = 0; x < n && x < PF_DIST; x++) prefetch_hdr(buf + offs[x]);
    for (uint32_t base = 0; base < n; base += CHUNK) {
        uint32_t m = n - base < CHUNK ? n - base : CHUNK;
        for (uint32_t j = 0; j < m; j++) {
            uint32_t x = base + j;
            if (x + PF_DIST < n) prefetch_hdr(buf + offs[x + PF_DIST]);
            capfan_parse_ex(buf + offs[x], caplens[x], linktype, opts, &in[j]);
            ts[j] = ts_ns ? ts_ns[x] : wall;
            wl[j] = wirelens ? wirelens[x] : caplens[x];
        }
        metered += meter_chunk(fm, in, ts, wl, ports, m);
    }
    if (n) note_arrival(fm);
    return metered;
}

int64_t capfan_flowmeter_batch(capfan_flowmeter *fm, capfan_consumer *c, const capfan_batch *b) {
    uint32_t opts = fm->cfg.decap | CAPFAN_PARSE_GSO;
    capfan_ring *ring = capfan_consumer_ring(c);
    /* not capfan_ring_stats_get: it also probes the producer process in /proc */
    uint64_t arena_bytes = capfan_ring_arena_bytes(ring);
    uint32_t n = b->nsel, cur_port = UINT32_MAX, lt = 0;
    const capfan_desc *desc = b->desc;
    const uint32_t *sel = b->sel;
    const uint8_t *arena = b->arena;
    int64_t metered = 0;
    capfan_pkt_info in[CHUNK];
    uint64_t ts[CHUNK];
    uint32_t wl[CHUNK], idx[CHUNK];
    uint16_t ports[CHUNK];
    for (uint32_t y = 0; y < n && y < PF_DIST; y++) prefetch_hdr(arena + desc[sel ? sel[y] : y].off);
    for (uint32_t base = 0; base < n; base += CHUNK) {
        uint32_t m = n - base < CHUNK ? n - base : CHUNK;
        /* parse a chunk, then ask whether the producer overwrote any of it meanwhile
         * (lossy consumers; a reliable one is never torn) */
        for (uint32_t j = 0; j < m; j++) {
            uint32_t y = base + j + PF_DIST;
            if (y < n) prefetch_hdr(arena + desc[sel ? sel[y] : y].off);
            uint32_t x = sel ? sel[base + j] : base + j;
            const capfan_desc *d = &desc[x];
            idx[j] = x;
            ts[j] = d->ts_ns;
            ports[j] = d->port;
            uint64_t end = (uint64_t)d->off + d->caplen + ((d->flags & CAPFAN_F_WIRELEN_SAT) ? 4 : 0);
            if (end > arena_bytes) { /* only a torn descriptor can say this */
                memset(&in[j], 0, sizeof in[j]);
                in[j].bad = CAPFAN_BAD_TORN;
                wl[j] = 0;
                continue;
            }
            if (d->port != cur_port) {
                cur_port = d->port;
                lt = capfan_ring_port_linktype(ring, cur_port);
            }
            wl[j] = capfan_desc_wirelen(d, arena);
            capfan_parse_ex(arena + d->off, d->caplen, lt, opts, &in[j]);
        }
        uint32_t torn = capfan_consumer_torn(c, b);
        for (uint32_t j = 0; j < m && idx[j] < torn; j++) in[j].bad = CAPFAN_BAD_TORN;
        metered += meter_chunk(fm, in, ts, wl, ports, m);
    }
    if (n) note_arrival(fm);
    return metered;
}

void capfan_flowmeter_tick(capfan_flowmeter *fm, uint64_t wall_ns) {
    /* the clock runs on with wall time only once packets gave it a start: a replay of an old
     * capture must not be expired by today's date */
    if (fm->wall_at_pkt && wall_ns > fm->wall_at_pkt) {
        uint64_t t = fm->now_at_pkt + (wall_ns - fm->wall_at_pkt);
        if (t > fm->st.now_ns) fm->st.now_ns = t;
    }
    expire(fm);
}

void capfan_flowmeter_flush(capfan_flowmeter *fm) {
    while (fm->idle.head != NIL) {
        uint32_t i = fm->idle.head;
        flow_end(fm, i, fm->flows[i].state == ST_LINGER ? CAPFAN_END_EOF : CAPFAN_END_FORCED);
    }
}

uint32_t capfan_flowmeter_drain(capfan_flowmeter *fm, capfan_flow_record *out, uint32_t max) {
    uint32_t k = fm->out_len - fm->out_head;
    if (k > max) k = max;
    memcpy(out, fm->out + fm->out_head, (size_t)k * sizeof *out);
    fm->out_head += k;
    if (fm->out_head == fm->out_len) fm->out_head = fm->out_len = 0;
    return k;
}

void capfan_flowmeter_get_stats(capfan_flowmeter *fm, capfan_flowmeter_stats *out) {
    fm->st.records_pending = fm->out_len - fm->out_head;
    *out = fm->st;
}

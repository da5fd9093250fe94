/* capfan shared-memory fan-out ring: one producer, many consumers, zero copies per consumer.
 *
 * Layout of a ring file (in /dev/shm or a hugetlbfs mount):
 *   control page | consumer table (max_consumers x 128 B) | descriptor ring (ndesc x 32 B) | arena
 * Each packet is written once into the arena; every consumer reads the same bytes in place.
 * This is the only header a C consumer needs.
 */
#ifndef CAPFAN_RING_H
#define CAPFAN_RING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CAPFAN_RING_MAGIC 0x474e495246504143ULL /* "CAPFRING" little-endian */
#define CAPFAN_RING_VERSION 1u
#define CAPFAN_NAME_MAX 32            /* consumer / group names incl. NUL */
#define CAPFAN_MIN_CONSUMERS 256u
#define CAPFAN_MAX_CONSUMERS 4096u
#define CAPFAN_EVENTS 64u             /* event log entries kept in the control page */
#define CAPFAN_ARENA_ALIGN 64u        /* packets start on a cache line */
#define CAPFAN_MAX_CAPLEN 65535u
#define CAPFAN_PORTS 256u          /* ports with their own link type (pcapng interfaces, queues) */

/* One packet descriptor, 32 bytes, two per cache line. `seq` is written last (release). */
typedef struct capfan_desc {
    uint64_t seq;     /* sequence number of this packet (0, 1, 2, ... per ring) */
    uint64_t ts_ns;   /* capture timestamp, ns since the epoch */
    uint32_t off;     /* byte offset of the packet in the arena */
    uint16_t caplen;  /* bytes stored */
    uint16_t wirelen; /* bytes on the wire; 65535 + CAPFAN_F_WIRELEN_SAT: see capfan_desc_wirelen */
    uint32_t hash;    /* symmetric flow hash: both directions of a flow get the same value */
    uint16_t port;    /* capture port / queue / pcapng interface the packet came from */
    uint16_t flags;   /* CAPFAN_F_* */
} capfan_desc;

enum capfan_desc_flags {
    CAPFAN_F_HWTS = 1u << 0,        /* ts_ns is a hardware timestamp */
    CAPFAN_F_HWTS_SYNC = 1u << 1,   /* hardware clock was in sync */
    CAPFAN_F_TRUNCATED = 1u << 2,   /* caplen < wirelen */
    CAPFAN_F_BAD_FCS = 1u << 3,
    CAPFAN_F_L3 = 1u << 4,          /* an IPv4/IPv6 header was parsed for the hash */
    CAPFAN_F_L4 = 1u << 5,          /* ports were parsed for the hash */
    CAPFAN_F_IPV6 = 1u << 6,
    CAPFAN_F_FRAGMENT = 1u << 7,    /* IP fragment: hash uses addresses only */
    CAPFAN_F_MALFORMED = 1u << 8,   /* headers inconsistent; hash covers what could be parsed */
    CAPFAN_F_WIRELEN_SAT = 1u << 9, /* real wire length exceeded 65535 */
};

enum capfan_policy { CAPFAN_LOSSY = 0, CAPFAN_RELIABLE = 1 };
enum capfan_full_policy { CAPFAN_FULL_BLOCK = 0, CAPFAN_FULL_DROP = 1 };
enum capfan_slot_state { CAPFAN_SLOT_FREE = 0, CAPFAN_SLOT_ACTIVE = 1, CAPFAN_SLOT_DEAD = 2, CAPFAN_SLOT_DETACHED = 3 };
enum capfan_start { CAPFAN_START_HEAD = 0, CAPFAN_START_OLDEST = 1 };
enum capfan_event_kind {
    CAPFAN_EV_ATTACH = 1, CAPFAN_EV_RESUME = 2, CAPFAN_EV_DETACH = 3, CAPFAN_EV_DEAD = 4,
    CAPFAN_EV_DEMOTED = 5, CAPFAN_EV_PRODUCER_START = 6, CAPFAN_EV_PRODUCER_RESTART = 7,
    CAPFAN_EV_LAPPED = 8,
};

/* Error codes returned (negated) by the API; capfan_last_error() has the message. */
enum capfan_err {
    CAPFAN_EOK = 0, CAPFAN_ESYS = 1, CAPFAN_EEXIST = 2, CAPFAN_ENOENT = 3, CAPFAN_EFORMAT = 4,
    CAPFAN_EBUSY = 5, CAPFAN_EFULL = 6, CAPFAN_EINVAL = 7, CAPFAN_ETIMEOUT = 8, CAPFAN_ENOSLOT = 9,
    CAPFAN_EEOF = 10,     /* a replay reached its end */
    CAPFAN_ENOTSUP = 11,  /* backend not compiled in / not supported by the driver */
    CAPFAN_ECORRUPT = 12, /* corrupt input file; the message names the byte offset */
    CAPFAN_EPERM = 13,    /* missing privilege (CAP_NET_RAW, CAP_BPF...) */
};

/* Ring geometry chosen at creation. */
typedef struct capfan_geometry {
    uint32_t ndesc;          /* descriptors, power of two */
    uint64_t arena_bytes;    /* packet arena size (<= 4 GiB) */
    uint32_t max_consumers;  /* consumer table slots, >= 256 */
    uint32_t linktype;       /* pcap LINKTYPE_* of the packets */
    uint32_t snaplen;        /* longest caplen stored; 0 = min(65535, arena/4) */
    uint32_t full_policy;    /* capfan_full_policy */
} capfan_geometry;

/* Event log entry (demotions, deaths, restarts...). */
typedef struct capfan_event {
    uint64_t ts_ns;
    uint32_t kind;
    uint32_t slot;
    uint64_t arg;
    char name[8];            /* first bytes of the consumer name, for display */
} capfan_event;

/* Consumer table slot: 256 bytes. Line 0 is written by the consumer's hot path (cursor),
 * line 1 holds its counters, lines 2-3 identity and producer-written fields, so no two
 * consumers ever share a cache line. */
typedef struct capfan_slot {
    /* line 0: hot */
    _Alignas(64) volatile uint64_t cursor; /* next seq to read; everything below is released */
    volatile uint32_t sleeping;    /* consumer is (about to be) asleep on the wake futex */
    volatile uint32_t state;       /* capfan_slot_state */
    volatile uint32_t policy;      /* capfan_policy (the producer may demote) */
    volatile uint32_t pid;
    uint64_t pid_start;            /* process start time (clock ticks) to tell a reused pid */
    uint64_t stall_budget_ns;      /* reliable: longest stretch it may hold the producer */
    uint64_t attach_seq;           /* cursor at first attach: the accounting baseline */
    uint32_t spin_us;              /* busy-poll this long before sleeping */
    uint16_t group_size;           /* 0 = not in a group */
    uint16_t group_member;
    uint8_t _pad0[8];
    /* line 1: counters, consumer-written */
    volatile uint64_t delivered;
    volatile uint64_t dropped;     /* lapped + torn */
    volatile uint64_t filtered;    /* other group members' packets */
    volatile uint64_t torn;        /* part of dropped: overwritten while being read */
    volatile uint64_t resumes;
    uint8_t _pad1[24];
    /* lines 2-3: identity and producer-written fields */
    char name[CAPFAN_NAME_MAX];
    char group[CAPFAN_NAME_MAX];
    volatile uint64_t holding_since_ns; /* producer: when this consumer started blocking it */
    volatile uint64_t demotions;        /* producer: reliable -> lossy demotions */
    uint8_t _pad2[48];
} capfan_slot;

/* A batch of descriptors handed to a consumer, contiguous in the descriptor ring. */
typedef struct capfan_batch {
    uint64_t first_seq;          /* seq of desc[0] */
    uint32_t count;              /* descriptors covered (all of them count as read on release) */
    uint32_t nsel;               /* descriptors selected for this consumer (group members) */
    const capfan_desc *desc;     /* points into the shared descriptor ring: no copy */
    const uint32_t *sel;         /* indices into desc of the selected ones, NULL = all selected */
    const uint8_t *arena;        /* base of the packet arena */
} capfan_batch;

/* Consumer options at attach. */
typedef struct capfan_consumer_opts {
    const char *name;            /* unique per ring; re-attaching with a known name resumes */
    uint32_t policy;             /* capfan_policy */
    uint64_t stall_budget_us;    /* reliable only; 0 = default (1 s) */
    uint32_t spin_us;            /* 0 = block on the futex at once */
    const char *group;           /* NULL/"" = sees every packet */
    uint16_t group_member;
    uint16_t group_size;
    uint32_t start;              /* capfan_start, for a new consumer */
} capfan_consumer_opts;

/* Consumer / producer statistics copied out of the shared page. */
typedef struct capfan_slot_stats {
    uint32_t index, state, policy, pid, sleeping, spin_us;
    uint16_t group_size, group_member, alive, _pad;
    uint64_t cursor, attach_seq, delivered, dropped, filtered, torn, stall_budget_ns, holding_since_ns;
    uint64_t demotions, resumes;
    char name[CAPFAN_NAME_MAX];
    char group[CAPFAN_NAME_MAX];
} capfan_slot_stats;

typedef struct capfan_ring_stats {
    uint64_t head, tail, generation, dropped_full, bytes, blocked_ns, producer_pid, heartbeat_ns;
    uint64_t arena_used, demotions, created_ns;
    uint32_t ndesc, max_consumers, linktype, snaplen, full_policy, producer_alive, nconsumers, hugepages;
    uint64_t arena_bytes, file_bytes;
} capfan_ring_stats;

/* Wire length of a packet, also when it exceeds 65535 (then stored after the packet bytes). */
static inline uint32_t capfan_desc_wirelen(const capfan_desc *d, const uint8_t *arena) {
    if (!(d->flags & CAPFAN_F_WIRELEN_SAT)) return d->wirelen;
    const uint8_t *t = arena + d->off + d->caplen;
    return (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
}

typedef struct capfan_ring capfan_ring;         /* a mapping of a ring file */
typedef struct capfan_producer capfan_producer;
typedef struct capfan_consumer capfan_consumer;

/* Message of the last error on this thread. */
const char *capfan_last_error(void);
/* capfan_err code of the last error on this thread. */
int capfan_last_error_code(void);

/* Create a ring file at `path` (fails if it exists); mode e.g. 0600; gid < 0 keeps the group. */
int capfan_ring_create(const char *path, const capfan_geometry *g, uint32_t mode, int gid);
/* Map an existing ring read-only for inspection. */
capfan_ring *capfan_ring_open(const char *path);
void capfan_ring_close(capfan_ring *r);
int capfan_ring_stats_get(capfan_ring *r, capfan_ring_stats *out);
/* Copy slot i's state out; returns 0 if the slot has ever been used, -CAPFAN_ENOENT if free. */
int capfan_ring_slot_get(capfan_ring *r, uint32_t i, capfan_slot_stats *out);
/* Events logged so far (ever); the last CAPFAN_EVENTS of them are kept. */
uint64_t capfan_ring_event_count(capfan_ring *r);
/* Copy up to n events, oldest first; returns how many. */
int capfan_ring_events(capfan_ring *r, capfan_event *out, uint32_t n);
/* Read-only view of the descriptor ring and arena (for dump tools). */
/* Link type of packets from `port` (the ring's link type unless the producer set another). */
uint32_t capfan_ring_port_linktype(capfan_ring *r, uint32_t port);
const capfan_desc *capfan_ring_desc(capfan_ring *r);
const uint8_t *capfan_ring_arena(capfan_ring *r);
/* Arena size in bytes (fixed for the ring's life); cheap, unlike capfan_ring_stats_get. */
uint64_t capfan_ring_arena_bytes(capfan_ring *r);

/* ---- producer ---- */
/* Become the ring's producer. A previous producer must be dead; its consumers carry on
 * (generation is bumped, sequence numbers continue). */
capfan_producer *capfan_producer_open(const char *path);
/* Flush and give up the producer role (the mapping stays valid until capfan_producer_free). */
void capfan_producer_close(capfan_producer *p);
/* Close if needed, unmap and free. */
void capfan_producer_free(capfan_producer *p);
capfan_ring *capfan_producer_ring(capfan_producer *p);
/* Reserve arena space for a packet of caplen bytes (wirelen: its length on the wire); NULL when
 * the ring is full and the policy says drop (counted) or, with block, after timeout_ns of
 * waiting (-1 = wait for ever). */
uint8_t *capfan_producer_reserve(capfan_producer *p, uint32_t caplen, uint32_t wirelen, int64_t timeout_ns);
/* Declare the link type of packets published with `port` (< CAPFAN_PORTS). */
int capfan_producer_set_linktype(capfan_producer *p, uint32_t port, uint32_t linktype);
/* Describe the reserved packet (computes the flow hash); visible to consumers after flush. */
void capfan_producer_commit(capfan_producer *p, uint64_t ts_ns, uint32_t caplen, uint32_t wirelen,
                            uint16_t port, uint16_t flags);
/* Publish committed packets and wake sleeping consumers. */
void capfan_producer_flush(capfan_producer *p);
/* Copy n packets (concatenated in buf at offs[i], lens[i]) into the ring; returns how many were
 * published (fewer only when the drop policy dropped some; drops are counted in the ring). */
int64_t capfan_producer_publish(capfan_producer *p, const uint8_t *buf, const uint64_t *offs,
                                const uint32_t *caplens, const uint32_t *wirelens,
                                const uint64_t *ts_ns, uint32_t n, uint16_t port);
/* The arena, writable, for backends that receive straight into it (AF_XDP UMEM). */
uint8_t *capfan_producer_arena(capfan_producer *p, uint64_t *len);
/* Record an error message (for backends built on the ring); returns -code. */
int capfan_set_error(int code, const char *fmt, ...);
/* Number of packets dropped because the ring was full. */
uint64_t capfan_producer_dropped(capfan_producer *p);

/* Backends that place packets in the arena themselves (AF_XDP UMEM frames, ef_vi buffers):
 * switch the producer to external placement, then per packet reserve a descriptor and commit
 * the packet's arena offset. A backend reuses a buffer only once its packet's seq is below
 * the tail (capfan_producer_reclaim advances it as far as reliable consumers allow).
 * on: 0 = copy placement; > 0 = external, `on` being the arena bytes one packet occupies (the
 * backend's buffer size, used for the arena_used statistic). */
void capfan_producer_set_external(capfan_producer *p, int on);
/* Room for one descriptor (0), or -1 when full and the policy dropped / timed out (counted). */
int capfan_producer_reserve_desc(capfan_producer *p, int64_t timeout_ns);
void capfan_producer_commit_at(capfan_producer *p, uint32_t off, uint64_t ts_ns, uint32_t caplen,
                               uint32_t wirelen, uint16_t port, uint16_t flags);
/* Let the oldest packets go, up to seq `want` as far as reliable consumers allow; returns the
 * new tail (every seq below it may be overwritten). While reliable consumers hold it back,
 * dead ones are dropped and ones over their stall budget demoted (checked at most every 1 ms). */
uint64_t capfan_producer_reclaim(capfan_producer *p, uint64_t want);
/* Next seq to commit, and oldest intact seq. */
uint64_t capfan_producer_head(capfan_producer *p);
uint64_t capfan_producer_tail(capfan_producer *p);


/* ---- consumer ---- */
capfan_consumer *capfan_consumer_attach(const char *path, const capfan_consumer_opts *o);
/* Leave: the slot is freed (name forgotten) unless keep != 0 (then a re-attach resumes).
 * The mapping stays valid (batches can still be read) until capfan_consumer_free. */
void capfan_consumer_detach(capfan_consumer *c, int keep);
/* Detach if needed (keep = 0), unmap and free. */
void capfan_consumer_free(capfan_consumer *c);
/* Next batch of at most max descriptors. Waits up to timeout_ns (0 = poll, -1 = for ever).
 * Returns the number of descriptors covered (0 on timeout) or -error. The previous batch must
 * have been released. */
int capfan_consumer_next(capfan_consumer *c, uint32_t max, int64_t timeout_ns, capfan_batch *b);
/* Seqlock check: how many of the batch's leading descriptors may have been overwritten since
 * they were handed out (0 = everything read so far is intact). Call after reading. */
uint32_t capfan_consumer_torn(capfan_consumer *c, const capfan_batch *b);
/* Release the batch: counts delivered/filtered, counts torn packets as dropped, and lets a
 * reliable consumer's space be reused. Returns the number of torn packets. */
uint32_t capfan_consumer_release(capfan_consumer *c, capfan_batch *b);
/* Generation of the producer last seen; changes when the producer restarted. */
uint64_t capfan_consumer_generation(capfan_consumer *c);
/* Producer generation in the ring now, and whether that producer process is alive. */
uint64_t capfan_consumer_producer_generation(capfan_consumer *c, int *alive);
int capfan_consumer_slot(capfan_consumer *c);
capfan_ring *capfan_consumer_ring(capfan_consumer *c);
/* This consumer's counters (delivered, dropped, filtered, ...). */
int capfan_consumer_stats(capfan_consumer *c, capfan_slot_stats *out);

#ifdef __cplusplus
}
#endif
#endif

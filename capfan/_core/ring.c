/* capfan shared-memory fan-out ring. See ring.h and DESIGN.md for the semantics.
 *
 * Memory ordering, in short:
 *  - producer writes descriptor + packet bytes, then store-release ctl->head (publish);
 *  - before reusing descriptor/arena space the producer stores ctl->tail (oldest intact seq)
 *    then a release fence, then overwrites (seqlock writer); a consumer reads, then an acquire
 *    fence, then loads tail: anything below tail may be torn and is discarded (seqlock reader);
 *  - reliable consumers bound how far tail may advance (their cursor), unless demoted.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ring.h"
#include "parse.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HUGETLBFS_MAGIC_ 0x958458f6
#define CTL_BYTES 8192u
#define DEFAULT_STALL_NS 1000000000ull
#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield")
#else
#define cpu_relax() ((void)0)
#endif
#define ADAPT_SLEEP_NS 50000ull /* spin_us 0: spin when the last sleep was shorter than this */
#define ADAPT_SPIN_NS 20000ull  /* ... for at most this long */
#define LIVENESS_EVERY_NS 1000000ull /* check holders' pids at most every 1 ms while blocked */

/* ---------------------------------------------------------------- control page */
typedef struct ctl {
    uint64_t magic;
    uint32_t version, ctl_bytes;
    uint32_t ndesc, max_consumers, linktype, snaplen, full_policy, hugepages;
    uint64_t arena_bytes, file_bytes, slots_off, desc_off, arena_off, created_ns, region_align;

    _Alignas(64) volatile uint32_t producer_pid;
    uint32_t _p0;
    volatile uint64_t producer_start;
    volatile uint64_t generation;
    volatile uint64_t heartbeat_ns;
    volatile uint64_t dropped_full;
    volatile uint64_t bytes;
    volatile uint64_t blocked_ns;
    volatile uint64_t demotions;

    _Alignas(64) volatile uint64_t arena_used;
    volatile uint64_t epoch; /* bumped by attach/resume so the producer rescans cursors */

    _Alignas(64) _Atomic uint64_t head; /* next seq to publish = packets published */
    _Alignas(64) _Atomic uint64_t tail; /* oldest seq whose descriptor and bytes are intact */
    _Alignas(64) _Atomic uint32_t wake; /* futex word consumers sleep on */
    _Atomic uint32_t sleepers;
    _Alignas(64) _Atomic uint32_t prod_wake; /* futex word the blocked producer sleeps on */
    _Atomic uint32_t prod_waiting;

    _Alignas(64) pthread_mutex_t lock; /* robust, process-shared: attach/detach/producer open */
    uint32_t slots_hiwater;
    _Atomic uint64_t ev_next;
    capfan_event ev[CAPFAN_EVENTS];
    uint32_t port_linktype[CAPFAN_PORTS];
} ctl_t;

_Static_assert(sizeof(capfan_desc) == 32, "descriptor must be 32 bytes");
_Static_assert(sizeof(capfan_slot) == 256, "slot must be 256 bytes");
_Static_assert(sizeof(ctl_t) <= CTL_BYTES, "control page too large");

struct capfan_ring {
    int fd;
    uint8_t *base;       /* whole file mapping */
    size_t len;
    ctl_t *ctl;
    capfan_slot *slots;
    capfan_desc *desc;
    uint8_t *arena;
    uint64_t mask;
};

struct capfan_producer {
    capfan_ring r;
    uint64_t head;        /* next seq to commit (published up to ctl->head) */
    uint64_t tail;        /* local copy of ctl->tail */
    uint64_t limit;       /* tail may advance up to here without rescanning consumers */
    uint64_t epoch;
    uint64_t wpos;        /* monotonic arena write position */
    uint64_t *pos;        /* monotonic arena position of each descriptor slot */
    uint64_t rsv_pos;     /* reserved packet */
    uint64_t rsv_alloc;   /* arena bytes reserved for it */
    uint32_t rsv_len;
    uint64_t last_liveness;
    pid_t pid;
    int closed;
    uint32_t external;    /* backend places packets itself (AF_XDP UMEM): arena bytes per packet */
};

struct capfan_consumer {
    capfan_ring r;
    capfan_slot *s;
    uint32_t idx;
    uint64_t generation;
    uint32_t *sel;
    uint32_t sel_cap;
    int outstanding;
    int detached;
    uint64_t last_sleep_ns; /* how long the last futex sleep lasted (adaptive spinning) */
};

/* ---------------------------------------------------------------- errors, time, processes */
static _Thread_local char g_err[512];
static _Thread_local int g_errcode;

const char *capfan_last_error(void) { return g_err; }
int capfan_last_error_code(void) { return g_errcode; }

static void vfail(int code, const char *fmt, va_list ap) {
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    g_errcode = code;
}

static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(code, fmt, ap);
    va_end(ap);
    return -code;
}

static uint64_t now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), 0 if gone. */
static uint64_t proc_start(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces and parentheses */
    if (!p) return 0;
    int field = 2;
    for (; *p && field < 22; p++)
        if (*p == ' ') field++;
    return strtoull(p, NULL, 10);
}

static int proc_alive(uint32_t pid, uint64_t start) {
    if (pid == 0) return 0;
    if (kill((pid_t)pid, 0) != 0 && errno != EPERM) return 0;
    uint64_t s = proc_start((pid_t)pid);
    return s != 0 && (start == 0 || s == start);
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, uint64_t timeout_ns) {
    struct timespec ts, *tp = NULL;
    if (op == FUTEX_WAIT && timeout_ns != UINT64_MAX) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
        ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
        tp = &ts;
    }
    /* not FUTEX_PRIVATE: the word lives in a mapping shared between processes */
    return syscall(SYS_futex, (uint32_t *)addr, op, val, tp, NULL, 0);
}

static void log_event(ctl_t *c, uint32_t kind, uint32_t slot, uint64_t arg, const char *name) {
    uint64_t i = atomic_fetch_add(&c->ev_next, 1);
    capfan_event *e = &c->ev[i % CAPFAN_EVENTS];
    e->ts_ns = now_real();
    e->kind = kind;
    e->slot = slot;
    e->arg = arg;
    memset(e->name, 0, sizeof e->name);
    if (name) memcpy(e->name, name, strnlen(name, sizeof e->name));
}

static void lock_ctl(ctl_t *c) {
    int rc = pthread_mutex_lock(&c->lock);
    if (rc == EOWNERDEAD) pthread_mutex_consistent(&c->lock); /* holder died: state is slot-local */
}

static void unlock_ctl(ctl_t *c) { pthread_mutex_unlock(&c->lock); }

/* ---------------------------------------------------------------- create / map */
static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

int capfan_ring_create(const char *path, const capfan_geometry *g, uint32_t mode, int gid) {
    if (!is_pow2(g->ndesc) || g->ndesc < 64 || g->ndesc > (1u << 28))
        return fail(CAPFAN_EINVAL, "ndesc must be a power of two between 64 and 2^28 (got %u)", g->ndesc);
    if (g->arena_bytes < 65536 || g->arena_bytes > (1ull << 32))
        return fail(CAPFAN_EINVAL, "arena size must be between 64 KiB and 4 GiB (got %llu bytes)",
                    (unsigned long long)g->arena_bytes);
    uint32_t maxc = g->max_consumers ? g->max_consumers : CAPFAN_MIN_CONSUMERS;
    if (maxc < CAPFAN_MIN_CONSUMERS || maxc > CAPFAN_MAX_CONSUMERS)
        return fail(CAPFAN_EINVAL, "max_consumers must be between %u and %u (got %u)",
                    CAPFAN_MIN_CONSUMERS, CAPFAN_MAX_CONSUMERS, maxc);
    uint64_t auto_snap = g->arena_bytes / 4 < CAPFAN_MAX_CAPLEN ? g->arena_bytes / 4 : CAPFAN_MAX_CAPLEN;
    uint32_t snaplen = g->snaplen ? g->snaplen : (uint32_t)auto_snap;
    if (snaplen > CAPFAN_MAX_CAPLEN || align_up(snaplen, CAPFAN_ARENA_ALIGN) > g->arena_bytes / 4)
        return fail(CAPFAN_EINVAL, "snaplen %u too large for the arena (max %u and a quarter of the arena)",
                    snaplen, CAPFAN_MAX_CAPLEN);
    if (g->full_policy > CAPFAN_FULL_DROP) return fail(CAPFAN_EINVAL, "unknown full policy %u", g->full_policy);

    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777);
    if (fd < 0) {
        if (errno == EEXIST) return fail(CAPFAN_EEXIST, "ring %s already exists", path);
        return fail(CAPFAN_ESYS, "cannot create ring %s: %s", path, strerror(errno));
    }
    /* O_CREAT applies the umask; set the exact mode asked for (e.g. 0640 for a capture group). */
    if (fchmod(fd, mode & 0777) != 0 || (gid >= 0 && fchown(fd, (uid_t)-1, (gid_t)gid) != 0)) {
        int e = errno;
        unlink(path);
        close(fd);
        return fail(CAPFAN_ESYS, "cannot set mode/group of ring %s: %s", path, strerror(e));
    }
    struct statfs sfs;
    uint64_t ralign = 4096;
    int huge = 0;
    if (fstatfs(fd, &sfs) == 0 && (uint32_t)sfs.f_type == HUGETLBFS_MAGIC_) {
        huge = 1;
        ralign = (uint64_t)sfs.f_bsize;
    }
    uint64_t slots_off = CTL_BYTES;
    uint64_t desc_off = align_up(slots_off + (uint64_t)maxc * sizeof(capfan_slot), ralign);
    uint64_t arena_off = align_up(desc_off + (uint64_t)g->ndesc * sizeof(capfan_desc), ralign);
    uint64_t total = align_up(arena_off + g->arena_bytes, ralign);
    if (ftruncate(fd, (off_t)total) != 0) {
        int e = errno;
        unlink(path);
        close(fd);
        return fail(CAPFAN_ESYS, "cannot size ring %s to %llu bytes: %s (is the shm/hugepage pool large enough?)",
                    path, (unsigned long long)total, strerror(e));
    }
    uint8_t *base = mmap(NULL, CTL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        unlink(path);
        close(fd);
        return fail(CAPFAN_ESYS, "cannot map ring %s: %s", path, strerror(e));
    }
    ctl_t *c = (ctl_t *)base;
    memset(c, 0, sizeof *c);
    c->version = CAPFAN_RING_VERSION;
    c->ctl_bytes = CTL_BYTES;
    c->ndesc = g->ndesc;
    c->max_consumers = maxc;
    c->linktype = g->linktype;
    for (uint32_t i = 0; i < CAPFAN_PORTS; i++) c->port_linktype[i] = g->linktype;
    c->snaplen = snaplen;
    c->full_policy = g->full_policy;
    c->hugepages = (uint32_t)huge;
    c->arena_bytes = g->arena_bytes;
    c->file_bytes = total;
    c->slots_off = slots_off;
    c->desc_off = desc_off;
    c->arena_off = arena_off;
    c->region_align = ralign;
    c->created_ns = now_real();
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&c->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    atomic_thread_fence(memory_order_release);
    c->magic = CAPFAN_RING_MAGIC; /* last: a reader never sees a half-initialised ring */
    msync(base, CTL_BYTES, MS_SYNC);
    munmap(base, CTL_BYTES);
    close(fd);
    return 0;
}

/* Map a ring: control+slots read-write (cursors, futexes), descriptors+arena writable only
 * for the producer, so a buggy consumer cannot corrupt the traffic others read. */
static int ring_map(capfan_ring *r, const char *path, int writer) {
    memset(r, 0, sizeof *r);
    r->fd = open(path, O_RDWR | O_CLOEXEC);
    if (r->fd < 0) {
        if (errno == ENOENT) return fail(CAPFAN_ENOENT, "no ring at %s (create it first: capfan ring create)", path);
        return fail(CAPFAN_ESYS, "cannot open ring %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0 || (uint64_t)st.st_size < CTL_BYTES) {
        close(r->fd);
        return fail(CAPFAN_EFORMAT, "%s is not a capfan ring (too small)", path);
    }
    ctl_t *c = mmap(NULL, CTL_BYTES, PROT_READ, MAP_SHARED, r->fd, 0);
    if (c == MAP_FAILED) {
        int e = errno;
        close(r->fd);
        return fail(CAPFAN_ESYS, "cannot map ring %s: %s", path, strerror(e));
    }
    uint64_t magic = c->magic;
    atomic_thread_fence(memory_order_acquire);
    uint32_t version = c->version;
    uint64_t total = c->file_bytes, desc_off = c->desc_off, arena_off = c->arena_off;
    uint32_t ndesc = c->ndesc;
    munmap(c, CTL_BYTES);
    if (magic != CAPFAN_RING_MAGIC) {
        close(r->fd);
        return fail(CAPFAN_EFORMAT, "%s is not a capfan ring (bad magic)", path);
    }
    if (version != CAPFAN_RING_VERSION) {
        close(r->fd);
        return fail(CAPFAN_EFORMAT, "ring %s has layout version %u, this capfan speaks %u: recreate the ring",
                    path, version, CAPFAN_RING_VERSION);
    }
    if ((uint64_t)st.st_size < total) {
        close(r->fd);
        return fail(CAPFAN_EFORMAT, "ring %s is truncated (%llu of %llu bytes)", path,
                    (unsigned long long)st.st_size, (unsigned long long)total);
    }
    uint8_t *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(r->fd);
        return fail(CAPFAN_ESYS, "cannot map ring %s (%llu bytes): %s", path, (unsigned long long)total, strerror(e));
    }
    if (!writer) mprotect(base + desc_off, total - desc_off, PROT_READ);
    r->base = base;
    r->len = total;
    r->ctl = (ctl_t *)base;
    r->slots = (capfan_slot *)(base + r->ctl->slots_off);
    r->desc = (capfan_desc *)(base + desc_off);
    r->arena = base + arena_off;
    r->mask = ndesc - 1;
    return 0;
}

static void ring_unmap(capfan_ring *r) {
    if (r->base) munmap(r->base, r->len);
    if (r->fd >= 0) close(r->fd);
    r->base = NULL;
    r->fd = -1;
}

capfan_ring *capfan_ring_open(const char *path) {
    capfan_ring *r = calloc(1, sizeof *r);
    if (!r) { fail(CAPFAN_ESYS, "out of memory"); return NULL; }
    if (ring_map(r, path, 0) != 0) { free(r); return NULL; }
    return r;
}

void capfan_ring_close(capfan_ring *r) {
    if (!r) return;
    ring_unmap(r);
    free(r);
}

const capfan_desc *capfan_ring_desc(capfan_ring *r) { return r->desc; }

uint32_t capfan_ring_port_linktype(capfan_ring *r, uint32_t port) {
    return port < CAPFAN_PORTS ? r->ctl->port_linktype[port] : r->ctl->linktype;
}
const uint8_t *capfan_ring_arena(capfan_ring *r) { return r->arena; }
uint64_t capfan_ring_arena_bytes(capfan_ring *r) { return r->ctl->arena_bytes; }

int capfan_ring_stats_get(capfan_ring *r, capfan_ring_stats *o) {
    ctl_t *c = r->ctl;
    memset(o, 0, sizeof *o);
    o->head = atomic_load_explicit(&c->head, memory_order_acquire);
    o->tail = atomic_load_explicit(&c->tail, memory_order_acquire);
    o->generation = c->generation;
    o->dropped_full = c->dropped_full;
    o->bytes = c->bytes;
    o->blocked_ns = c->blocked_ns;
    o->producer_pid = c->producer_pid;
    o->heartbeat_ns = c->heartbeat_ns;
    o->arena_used = c->arena_used;
    o->demotions = c->demotions;
    o->created_ns = c->created_ns;
    o->ndesc = c->ndesc;
    o->max_consumers = c->max_consumers;
    o->linktype = c->linktype;
    o->snaplen = c->snaplen;
    o->full_policy = c->full_policy;
    o->hugepages = c->hugepages;
    o->arena_bytes = c->arena_bytes;
    o->file_bytes = c->file_bytes;
    o->producer_alive = (uint32_t)proc_alive(c->producer_pid, c->producer_start);
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->slots_hiwater && i < c->max_consumers; i++)
        if (r->slots[i].state == CAPFAN_SLOT_ACTIVE) n++;
    o->nconsumers = n;
    return 0;
}

int capfan_ring_slot_get(capfan_ring *r, uint32_t i, capfan_slot_stats *o) {
    if (i >= r->ctl->max_consumers) return fail(CAPFAN_EINVAL, "slot %u out of range", i);
    capfan_slot *s = &r->slots[i];
    memset(o, 0, sizeof *o);
    if (s->state == CAPFAN_SLOT_FREE) return -CAPFAN_ENOENT;
    o->index = i;
    o->state = s->state;
    o->policy = s->policy;
    o->pid = s->pid;
    o->sleeping = s->sleeping;
    o->spin_us = s->spin_us;
    o->demotions = s->demotions;
    o->resumes = s->resumes;
    o->group_size = s->group_size;
    o->group_member = s->group_member;
    o->cursor = s->cursor;
    o->attach_seq = s->attach_seq;
    o->delivered = s->delivered;
    o->dropped = s->dropped;
    o->filtered = s->filtered;
    o->torn = s->torn;
    o->stall_budget_ns = s->stall_budget_ns;
    o->holding_since_ns = s->holding_since_ns;
    o->alive = (uint16_t)(s->state == CAPFAN_SLOT_ACTIVE && proc_alive(s->pid, s->pid_start));
    memcpy(o->name, s->name, CAPFAN_NAME_MAX);
    o->name[CAPFAN_NAME_MAX - 1] = 0;
    memcpy(o->group, s->group, CAPFAN_NAME_MAX);
    o->group[CAPFAN_NAME_MAX - 1] = 0;
    return 0;
}

uint64_t capfan_ring_event_count(capfan_ring *r) { return atomic_load(&r->ctl->ev_next); }

int capfan_ring_events(capfan_ring *r, capfan_event *out, uint32_t n) {
    ctl_t *c = r->ctl;
    uint64_t end = atomic_load(&c->ev_next);
    uint64_t start = end > CAPFAN_EVENTS ? end - CAPFAN_EVENTS : 0;
    if (end - start > n) start = end - n;
    uint32_t k = 0;
    for (uint64_t i = start; i < end; i++) out[k++] = c->ev[i % CAPFAN_EVENTS];
    return (int)k;
}

/* ---------------------------------------------------------------- producer */
capfan_producer *capfan_producer_open(const char *path) {
    capfan_producer *p = calloc(1, sizeof *p);
    if (!p) { fail(CAPFAN_ESYS, "out of memory"); return NULL; }
    if (ring_map(&p->r, path, 1) != 0) { free(p); return NULL; }
    ctl_t *c = p->r.ctl;
    p->pos = calloc(c->ndesc, sizeof(uint64_t));
    if (!p->pos) {
        ring_unmap(&p->r);
        free(p);
        fail(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    p->pid = getpid();
    lock_ctl(c);
    if (c->producer_pid && (pid_t)c->producer_pid != p->pid && proc_alive(c->producer_pid, c->producer_start)) {
        uint32_t other = c->producer_pid;
        unlock_ctl(c);
        free(p->pos);
        ring_unmap(&p->r);
        free(p);
        fail(CAPFAN_EBUSY, "ring %s already has a live producer (pid %u)", path, other);
        return NULL;
    }
    /* Take over: sequence numbers continue, so consumers carry on across a producer restart.
     * Rebuild arena positions of the descriptors still intact. */
    uint64_t head = atomic_load(&c->head), tail = atomic_load(&c->tail);
    uint64_t mask = p->r.mask, pos = 0, prev_off = 0;
    for (uint64_t s = tail; s < head; s++) {
        const capfan_desc *d = &p->r.desc[s & mask];
        if (s == tail) pos = d->off;
        else pos += d->off >= prev_off ? d->off - prev_off : c->arena_bytes - prev_off + d->off;
        prev_off = d->off;
        p->pos[s & mask] = pos;
    }
    if (head > tail) {
        const capfan_desc *last = &p->r.desc[(head - 1) & mask];
        uint64_t extra = (last->flags & CAPFAN_F_WIRELEN_SAT) ? 4 : 0;
        p->wpos = p->pos[(head - 1) & mask] + align_up((uint64_t)(last->caplen ? last->caplen : 1) + extra, CAPFAN_ARENA_ALIGN);
    }
    p->head = head;
    p->tail = tail;
    p->limit = tail;
    p->epoch = UINT64_MAX;
    uint64_t gen = c->generation + 1;
    c->generation = gen;
    c->producer_start = proc_start(p->pid);
    c->producer_pid = (uint32_t)p->pid;
    c->heartbeat_ns = now_mono();
    log_event(c, gen == 1 ? CAPFAN_EV_PRODUCER_START : CAPFAN_EV_PRODUCER_RESTART, UINT32_MAX, gen, NULL);
    unlock_ctl(c);
    /* wake consumers so they notice the new generation */
    atomic_fetch_add(&c->wake, 1);
    futex(&c->wake, FUTEX_WAKE, INT_MAX, 0);
    return p;
}

void capfan_producer_close(capfan_producer *p) {
    if (!p || p->closed) return;
    p->closed = 1;
    if (getpid() != p->pid) return; /* a forked child's copy: the producer is the parent */
    capfan_producer_flush(p);
    ctl_t *c = p->r.ctl;
    lock_ctl(c);
    if ((pid_t)c->producer_pid == p->pid) c->producer_pid = 0;
    unlock_ctl(c);
    atomic_fetch_add(&c->wake, 1);
    futex(&c->wake, FUTEX_WAKE, INT_MAX, 0);
}

void capfan_producer_free(capfan_producer *p) {
    if (!p) return;
    capfan_producer_close(p);
    free(p->pos);
    ring_unmap(&p->r);
    free(p);
}

capfan_ring *capfan_producer_ring(capfan_producer *p) { return &p->r; }

uint8_t *capfan_producer_arena(capfan_producer *p, uint64_t *len) {
    if (len) *len = p->r.ctl->arena_bytes;
    return p->r.arena;
}

int capfan_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(code, fmt, ap);
    va_end(ap);
    return -code;
}
uint64_t capfan_producer_dropped(capfan_producer *p) { return p->r.ctl->dropped_full; }

/* Lowest cursor of the reliable consumers (head if none). With check != 0, also enforce
 * liveness and stall budgets of the consumers holding tail: dead ones stop holding at once,
 * ones over budget are demoted to lossy. */
static uint64_t reliable_limit(capfan_producer *p, int check, uint64_t now) {
    ctl_t *c = p->r.ctl;
    uint64_t lim = p->head;
    uint32_t hi = c->slots_hiwater;
    p->epoch = c->epoch;
    for (uint32_t i = 0; i < hi; i++) {
        capfan_slot *s = &p->r.slots[i];
        if (s->state != CAPFAN_SLOT_ACTIVE || s->policy != CAPFAN_RELIABLE) continue;
        uint64_t cur = s->cursor;
        if (cur > p->tail) {
            if (s->holding_since_ns) s->holding_since_ns = 0;
        } else if (check) {
            if (!s->holding_since_ns) s->holding_since_ns = now;
            if (!proc_alive(s->pid, s->pid_start)) {
                s->state = CAPFAN_SLOT_DEAD;
                s->holding_since_ns = 0;
                log_event(c, CAPFAN_EV_DEAD, i, s->pid, s->name);
                continue;
            }
            if (now - s->holding_since_ns > s->stall_budget_ns) {
                uint64_t held = now - s->holding_since_ns;
                s->policy = CAPFAN_LOSSY;
                s->demotions++;
                s->holding_since_ns = 0;
                c->demotions++;
                log_event(c, CAPFAN_EV_DEMOTED, i, held, s->name);
                continue;
            }
        }
        if (cur < lim) lim = cur;
    }
    return lim;
}

/* Make room for one descriptor and `len` arena bytes; on success *at is the arena position.
 * Returns -1 if reliable consumers hold the space (what could be reclaimed still is). */
static int make_room(capfan_producer *p, uint64_t len, uint64_t *at) {
    ctl_t *c = p->r.ctl;
    uint64_t ab = c->arena_bytes, mask = p->r.mask, ndesc = c->ndesc;
    uint64_t a = p->wpos, o = a % ab;
    if (o + len > ab) a += ab - o; /* a packet never wraps: skip the arena's end */
    uint64_t end = a + len, t = p->tail;
    int rescanned = 0;
#define ROOM(t) (p->head - (t) < ndesc && (p->external || (t) == p->head || end - p->pos[(t) & mask] <= ab))
    while (!ROOM(t)) {
        if (t >= p->limit || p->epoch != c->epoch) {
            if (rescanned) break;
            p->limit = reliable_limit(p, 0, 0);
            rescanned = 1;
            if (t >= p->limit) break;
        }
        t++;
    }
    if (t != p->tail) {
        /* seqlock writer: announce the overwrite before doing it */
        atomic_store_explicit(&c->tail, t, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        p->tail = t;
    }
    if (!ROOM(t)) return -1;
#undef ROOM
    *at = a;
    return 0;
}

static void wait_for_consumers(capfan_producer *p, uint64_t budget_ns) {
    ctl_t *c = p->r.ctl;
    uint32_t w = atomic_load(&c->prod_wake);
    atomic_store(&c->prod_waiting, 1);
    atomic_thread_fence(memory_order_seq_cst);
    /* a release may have happened between the failed attempt and here: re-check cheaply */
    if (reliable_limit(p, 0, 0) > p->tail) { atomic_store(&c->prod_waiting, 0); return; }
    futex(&c->prod_wake, FUTEX_WAIT, w, budget_ns);
    atomic_store(&c->prod_waiting, 0);
}

int capfan_producer_set_linktype(capfan_producer *p, uint32_t port, uint32_t linktype) {
    if (port >= CAPFAN_PORTS) return fail(CAPFAN_EINVAL, "port %u has no link type slot (max %u)", port, CAPFAN_PORTS - 1);
    p->r.ctl->port_linktype[port] = linktype;
    return 0;
}

/* Arena bytes a packet takes: its bytes, plus the full wire length when that exceeds 16 bits. */
static inline uint64_t arena_len(uint32_t caplen, uint32_t wirelen) {
    return align_up((uint64_t)(caplen ? caplen : 1) + (wirelen > 0xFFFF ? 4 : 0), CAPFAN_ARENA_ALIGN);
}

/* Room for one descriptor and len arena bytes, waiting/dropping per the full policy. */
static int reserve_room(capfan_producer *p, uint64_t len, int64_t timeout_ns, uint64_t *out) {
    ctl_t *c = p->r.ctl;
    uint64_t at = 0;
    if (make_room(p, len, &at) != 0) {
        /* Full: reliable consumers hold the space. Enforce liveness and stall budgets (at most
         * every LIVENESS_EVERY_NS: it costs syscalls), then drop or wait. */
        uint64_t t0 = now_mono(), now = t0;
        for (;;) {
            capfan_producer_flush(p); /* let the holders see everything we have */
            if (now - p->last_liveness >= LIVENESS_EVERY_NS) {
                p->last_liveness = now;
                p->limit = reliable_limit(p, 1, now);
                if (make_room(p, len, &at) == 0) break;
            }
            if (c->full_policy == CAPFAN_FULL_DROP || (timeout_ns >= 0 && now - t0 >= (uint64_t)timeout_ns)) {
                c->dropped_full++;
                c->blocked_ns += now - t0;
                return -1;
            }
            wait_for_consumers(p, LIVENESS_EVERY_NS);
            now = now_mono();
            if (make_room(p, len, &at) == 0) break;
        }
        c->blocked_ns += now - t0;
    }
    *out = at;
    return 0;
}

uint8_t *capfan_producer_reserve(capfan_producer *p, uint32_t caplen, uint32_t wirelen, int64_t timeout_ns) {
    ctl_t *c = p->r.ctl;
    if (caplen > c->snaplen) caplen = c->snaplen;
    uint64_t len = arena_len(caplen, wirelen), at;
    if (reserve_room(p, len, timeout_ns, &at) != 0) return NULL;
    p->rsv_pos = at;
    p->rsv_len = caplen;
    p->rsv_alloc = len;
    return p->r.arena + at % c->arena_bytes;
}

void capfan_producer_commit(capfan_producer *p, uint64_t ts_ns, uint32_t caplen, uint32_t wirelen,
                            uint16_t port, uint16_t flags) {
    ctl_t *c = p->r.ctl;
    if (caplen > p->rsv_len) caplen = p->rsv_len;
    uint64_t seq = p->head;
    capfan_desc *d = &p->r.desc[seq & p->r.mask];
    const uint8_t *pkt = p->r.arena + p->rsv_pos % c->arena_bytes;
    if (caplen < wirelen) flags |= CAPFAN_F_TRUNCATED;
    if (wirelen > 0xFFFF && p->rsv_alloc >= (uint64_t)caplen + 4) {
        uint8_t *t = (uint8_t *)pkt + caplen; /* full length after the bytes: capfan_desc_wirelen */
        t[0] = (uint8_t)wirelen; t[1] = (uint8_t)(wirelen >> 8); t[2] = (uint8_t)(wirelen >> 16); t[3] = (uint8_t)(wirelen >> 24);
        flags |= CAPFAN_F_WIRELEN_SAT;
    }
    if (wirelen > 0xFFFF) wirelen = 0xFFFF;
    d->ts_ns = ts_ns;
    d->off = (uint32_t)(p->rsv_pos % c->arena_bytes);
    d->caplen = (uint16_t)caplen;
    d->wirelen = (uint16_t)wirelen;
    d->port = port;
    d->hash = capfan_flow_hash(pkt, caplen, port < CAPFAN_PORTS ? c->port_linktype[port] : c->linktype, &flags);
    d->flags = flags;
    atomic_store_explicit((_Atomic uint64_t *)&d->seq, seq, memory_order_release);
    p->pos[seq & p->r.mask] = p->rsv_pos;
    p->wpos = p->rsv_pos + p->rsv_alloc;
    p->head = seq + 1;
    c->bytes += caplen;
}

void capfan_producer_set_external(capfan_producer *p, int on) { p->external = on > 0 ? (uint32_t)on : 0; }

int capfan_producer_reserve_desc(capfan_producer *p, int64_t timeout_ns) {
    uint64_t at;
    return reserve_room(p, 0, timeout_ns, &at);
}

void capfan_producer_commit_at(capfan_producer *p, uint32_t off, uint64_t ts_ns, uint32_t caplen,
                               uint32_t wirelen, uint16_t port, uint16_t flags) {
    p->rsv_pos = off;
    p->rsv_len = caplen;
    p->rsv_alloc = 0; /* no room for a >64 KiB wire length trailer: it saturates */
    capfan_producer_commit(p, ts_ns, caplen, wirelen, port, flags);
}

uint64_t capfan_producer_reclaim(capfan_producer *p, uint64_t want) {
    ctl_t *c = p->r.ctl;
    if (want > p->head) want = p->head;
    if (want <= p->tail) return p->tail;
    if (want > p->limit || p->epoch != c->epoch) p->limit = reliable_limit(p, 0, 0);
    if (want > p->limit) {
        /* Reliable consumers hold buffers the backend needs (AF_XDP frames run out before
         * descriptors do): enforce liveness and stall budgets here too, as reserve_room does. */
        uint64_t now = now_mono();
        if (now - p->last_liveness >= LIVENESS_EVERY_NS) {
            p->last_liveness = now;
            p->limit = reliable_limit(p, 1, now);
        }
    }
    uint64_t t = want < p->limit ? want : p->limit;
    if (t > p->tail) {
        atomic_store_explicit(&c->tail, t, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        p->tail = t;
    }
    return p->tail;
}

uint64_t capfan_producer_head(capfan_producer *p) { return p->head; }
uint64_t capfan_producer_tail(capfan_producer *p) { return p->tail; }

void capfan_producer_flush(capfan_producer *p) {
    ctl_t *c = p->r.ctl;
    if (atomic_load_explicit(&c->head, memory_order_relaxed) == p->head) return;
    if (p->external) /* external offsets are not monotonic: count buffers, not positions */
        c->arena_used = (p->head - p->tail) * p->external;
    else
        c->arena_used = p->head > p->tail ? p->wpos - p->pos[p->tail & p->r.mask] : 0;
    atomic_store_explicit(&c->head, p->head, memory_order_release);
    /* Dekker with the sleeping consumer: head store before the sleepers load */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->sleepers, memory_order_relaxed)) {
        atomic_fetch_add(&c->wake, 1);
        futex(&c->wake, FUTEX_WAKE, INT_MAX, 0);
    }
}

int64_t capfan_producer_publish(capfan_producer *p, const uint8_t *buf, const uint64_t *offs,
                                const uint32_t *caplens, const uint32_t *wirelens,
                                const uint64_t *ts_ns, uint32_t n, uint16_t port) {
    int64_t done = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t wl = wirelens ? wirelens[i] : caplens[i];
        uint8_t *dst = capfan_producer_reserve(p, caplens[i], wl, -1);
        if (!dst) continue;
        uint32_t cl = caplens[i] < p->rsv_len ? caplens[i] : p->rsv_len;
        memcpy(dst, buf + offs[i], cl);
        capfan_producer_commit(p, ts_ns ? ts_ns[i] : now_real(), cl, wl, port, 0);
        done++;
    }
    p->r.ctl->heartbeat_ns = now_mono();
    capfan_producer_flush(p);
    return done;
}

/* ---------------------------------------------------------------- consumer */
static void copy_name(char *dst, const char *src) {
    memset(dst, 0, CAPFAN_NAME_MAX);
    if (src) strncpy(dst, src, CAPFAN_NAME_MAX - 1);
}

capfan_consumer *capfan_consumer_attach(const char *path, const capfan_consumer_opts *o) {
    if (!o->name || !o->name[0] || strlen(o->name) >= CAPFAN_NAME_MAX) {
        fail(CAPFAN_EINVAL, "consumer name must be 1 to %d characters", CAPFAN_NAME_MAX - 1);
        return NULL;
    }
    if (o->group && strlen(o->group) >= CAPFAN_NAME_MAX) {
        fail(CAPFAN_EINVAL, "group name must be at most %d characters", CAPFAN_NAME_MAX - 1);
        return NULL;
    }
    int grouped = o->group && o->group[0];
    if (grouped && (o->group_size == 0 || o->group_member >= o->group_size)) {
        fail(CAPFAN_EINVAL, "group member %u must be below group size %u", o->group_member, o->group_size);
        return NULL;
    }
    if (o->policy > CAPFAN_RELIABLE) { fail(CAPFAN_EINVAL, "unknown policy %u", o->policy); return NULL; }
    capfan_consumer *k = calloc(1, sizeof *k);
    if (!k) { fail(CAPFAN_ESYS, "out of memory"); return NULL; }
    if (ring_map(&k->r, path, 0) != 0) { free(k); return NULL; }
    ctl_t *c = k->r.ctl;
    pid_t me = getpid();
    lock_ctl(c);
    int found = -1, free_i = -1, dead_i = -1;
    for (uint32_t i = 0; i < c->max_consumers; i++) {
        capfan_slot *s = &k->r.slots[i];
        if (s->state == CAPFAN_SLOT_FREE) { if (free_i < 0) free_i = (int)i; continue; }
        if (strncmp(s->name, o->name, CAPFAN_NAME_MAX) == 0) { found = (int)i; break; }
        if (dead_i < 0 && (s->state == CAPFAN_SLOT_DEAD ||
                           (s->state == CAPFAN_SLOT_ACTIVE && !proc_alive(s->pid, s->pid_start))))
            dead_i = (int)i;
    }
    capfan_slot *s;
    uint64_t head = atomic_load(&c->head), tail = atomic_load(&c->tail);
    if (found >= 0) {
        s = &k->r.slots[found];
        if (s->state == CAPFAN_SLOT_ACTIVE && proc_alive(s->pid, s->pid_start)) {
            unlock_ctl(c);
            fail(CAPFAN_EBUSY, "consumer '%s' is already attached by pid %u", o->name, s->pid);
            ring_unmap(&k->r);
            free(k);
            return NULL;
        }
        k->idx = (uint32_t)found;
        s->resumes++;
        log_event(c, CAPFAN_EV_RESUME, k->idx, s->cursor, s->name);
    } else {
        int i = free_i >= 0 ? free_i : dead_i;
        if (i < 0) {
            unlock_ctl(c);
            fail(CAPFAN_ENOSLOT, "all %u consumer slots of the ring are in use", c->max_consumers);
            ring_unmap(&k->r);
            free(k);
            return NULL;
        }
        k->idx = (uint32_t)i;
        s = &k->r.slots[i];
        memset((void *)s, 0, sizeof *s);
        copy_name(s->name, o->name);
        s->cursor = o->start == CAPFAN_START_OLDEST ? tail : head;
        s->attach_seq = s->cursor;
        log_event(c, CAPFAN_EV_ATTACH, k->idx, s->cursor, s->name);
    }
    copy_name(s->group, grouped ? o->group : NULL);
    s->group_size = grouped ? o->group_size : 0;
    s->group_member = grouped ? o->group_member : 0;
    s->policy = o->policy;
    s->stall_budget_ns = o->stall_budget_us ? o->stall_budget_us * 1000ull : DEFAULT_STALL_NS;
    s->spin_us = o->spin_us;
    s->sleeping = 0;
    s->holding_since_ns = 0;
    s->pid_start = proc_start(me);
    s->pid = (uint32_t)me;
    atomic_thread_fence(memory_order_release);
    s->state = CAPFAN_SLOT_ACTIVE;
    if (k->idx >= c->slots_hiwater) c->slots_hiwater = k->idx + 1;
    c->epoch++;
    unlock_ctl(c);
    k->s = s;
    k->generation = c->generation;
    return k;
}

void capfan_consumer_detach(capfan_consumer *k, int keep) {
    if (!k || k->detached) return;
    ctl_t *c = k->r.ctl;
    lock_ctl(c);
    if (k->s->pid == (uint32_t)getpid() && k->s->state == CAPFAN_SLOT_ACTIVE) {
        log_event(c, CAPFAN_EV_DETACH, k->idx, k->s->cursor, k->s->name);
        if (keep) {
            k->s->state = CAPFAN_SLOT_DETACHED;
        } else {
            k->s->state = CAPFAN_SLOT_FREE;
            memset(k->s->name, 0, CAPFAN_NAME_MAX);
        }
    }
    unlock_ctl(c);
    k->detached = 1;
    /* a reliable consumer leaving may unblock the producer */
    atomic_fetch_add(&c->prod_wake, 1);
    futex(&c->prod_wake, FUTEX_WAKE, 1, 0);
}

void capfan_consumer_free(capfan_consumer *k) {
    if (!k) return;
    capfan_consumer_detach(k, 0);
    free(k->sel);
    ring_unmap(&k->r);
    free(k);
}

/* Wait until head passes cur: spin spin_us, then sleep on the futex. 1 = data, 0 = timeout. */
static int wait_data(capfan_consumer *k, uint64_t cur, int64_t timeout_ns) {
    ctl_t *c = k->r.ctl;
    if (atomic_load_explicit(&c->head, memory_order_acquire) > cur) return 1;
    if (timeout_ns == 0) return 0;
    uint64_t t0 = now_mono();
    uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : t0 + (uint64_t)timeout_ns;
    uint64_t spin_ns = (uint64_t)k->s->spin_us * 1000ull;
    /* spin_us 0 is adaptive: while traffic flows so fast that the last sleep was shorter than
     * ADAPT_SLEEP_NS, spin up to ADAPT_SPIN_NS first, because a futex sleep + the producer's
     * wake-up syscall cost more than that; an idle consumer still blocks at once. */
    if (spin_ns == 0 && k->last_sleep_ns && k->last_sleep_ns < ADAPT_SLEEP_NS) spin_ns = ADAPT_SPIN_NS;
    uint64_t spin_end = t0 + spin_ns;
    uint64_t gen = c->generation;
    for (;;) {
        uint64_t now = now_mono();
        if (now < spin_end && now < deadline) {
            for (int i = 0; i < 64; i++) {
                if (atomic_load_explicit(&c->head, memory_order_acquire) > cur) return 1;
                cpu_relax();
            }
            continue;
        }
        if (now >= deadline) return 0;
        k->s->sleeping = 1;
        atomic_fetch_add(&c->sleepers, 1); /* full barrier: Dekker with the producer's flush */
        uint32_t w = atomic_load(&c->wake);
        int ready = atomic_load_explicit(&c->head, memory_order_acquire) > cur || c->generation != gen;
        if (!ready) {
            uint64_t left = deadline - now;
            /* wake at least every 100 ms to notice a dead producer */
            futex(&c->wake, FUTEX_WAIT, w, left < 100000000ull ? left : 100000000ull);
            k->last_sleep_ns = now_mono() - now;
        }
        atomic_fetch_sub(&c->sleepers, 1);
        k->s->sleeping = 0;
        if (atomic_load_explicit(&c->head, memory_order_acquire) > cur) return 1;
        gen = c->generation; /* a new producer took over: keep waiting for its packets */
    }
}

int capfan_consumer_next(capfan_consumer *k, uint32_t max, int64_t timeout_ns, capfan_batch *b) {
    ctl_t *c = k->r.ctl;
    capfan_slot *s = k->s;
    if (k->detached) return fail(CAPFAN_EINVAL, "consumer is detached");
    if (k->outstanding) return fail(CAPFAN_EINVAL, "release the previous batch before taking the next");
    if (s->state != CAPFAN_SLOT_ACTIVE || s->pid != (uint32_t)getpid())
        return fail(CAPFAN_EINVAL, "consumer slot %u was taken over (was this consumer declared dead?)", k->idx);
    if (max == 0) max = 1;
    memset(b, 0, sizeof *b);
    uint64_t cur = s->cursor;
    for (;;) {
        if (!wait_data(k, cur, timeout_ns)) {
            k->generation = c->generation;
            return 0;
        }
        uint64_t tail = atomic_load_explicit(&c->tail, memory_order_acquire);
        if (cur >= tail) break;
        /* Lapped: everything below tail is gone. Resynchronise a little ahead of tail so the
         * producer does not overwrite the very next batch at once; the gap counts as dropped. */
        uint64_t head = atomic_load_explicit(&c->head, memory_order_acquire);
        uint64_t slack = (head - tail) / 8;
        uint64_t to = tail + slack;
        atomic_store_explicit((_Atomic uint64_t *)&s->dropped, s->dropped + (to - cur), memory_order_relaxed);
        cur = to;
        atomic_store_explicit((_Atomic uint64_t *)&s->cursor, cur, memory_order_release);
        if (cur < head) break;
    }
    uint64_t head = atomic_load_explicit(&c->head, memory_order_acquire);
    uint64_t n = head - cur;
    uint64_t room = c->ndesc - (cur & k->r.mask); /* stay contiguous in the descriptor ring */
    if (n > room) n = room;
    if (n > max) n = max;
    b->first_seq = cur;
    b->count = (uint32_t)n;
    b->desc = &k->r.desc[cur & k->r.mask];
    b->arena = k->r.arena;
    b->nsel = (uint32_t)n;
    if (s->group_size) {
        if (k->sel_cap < n) {
            uint32_t cap = (uint32_t)n < 4096 ? 4096 : (uint32_t)n;
            uint32_t *ns = realloc(k->sel, cap * sizeof *ns);
            if (!ns) return fail(CAPFAN_ESYS, "out of memory");
            k->sel = ns;
            k->sel_cap = cap;
        }
        uint32_t m = 0, gs = s->group_size, me = s->group_member;
        for (uint32_t i = 0; i < (uint32_t)n; i++)
            if ((uint32_t)(((uint64_t)b->desc[i].hash * gs) >> 32) == me) k->sel[m++] = i;
        b->sel = k->sel;
        b->nsel = m;
    }
    k->outstanding = 1;
    k->generation = c->generation;
    return (int)n;
}

uint32_t capfan_consumer_torn(capfan_consumer *k, const capfan_batch *b) {
    atomic_thread_fence(memory_order_acquire); /* seqlock reader: data reads before the tail load */
    uint64_t tail = atomic_load_explicit(&k->r.ctl->tail, memory_order_relaxed);
    if (tail <= b->first_seq) return 0;
    uint64_t t = tail - b->first_seq;
    return t > b->count ? b->count : (uint32_t)t;
}

uint32_t capfan_consumer_release(capfan_consumer *k, capfan_batch *b) {
    if (!k->outstanding) return 0;
    capfan_slot *s = k->s;
    uint32_t torn = capfan_consumer_torn(k, b);
    uint32_t sel_torn = 0;
    if (torn) {
        if (b->sel) {
            while (sel_torn < b->nsel && b->sel[sel_torn] < torn) sel_torn++;
        } else {
            sel_torn = torn;
        }
    }
    uint64_t delivered = b->nsel - sel_torn;
    uint64_t filtered = (b->count - torn) - delivered;
    atomic_store_explicit((_Atomic uint64_t *)&s->delivered, s->delivered + delivered, memory_order_relaxed);
    if (filtered) atomic_store_explicit((_Atomic uint64_t *)&s->filtered, s->filtered + filtered, memory_order_relaxed);
    if (torn) {
        atomic_store_explicit((_Atomic uint64_t *)&s->dropped, s->dropped + torn, memory_order_relaxed);
        atomic_store_explicit((_Atomic uint64_t *)&s->torn, s->torn + torn, memory_order_relaxed);
    }
    atomic_store_explicit((_Atomic uint64_t *)&s->cursor, b->first_seq + b->count, memory_order_release);
    k->outstanding = 0;
    if (s->policy == CAPFAN_RELIABLE) {
        ctl_t *c = k->r.ctl;
        atomic_thread_fence(memory_order_seq_cst); /* cursor store before the waiting load */
        if (atomic_load_explicit(&c->prod_waiting, memory_order_relaxed)) {
            atomic_fetch_add(&c->prod_wake, 1);
            futex(&c->prod_wake, FUTEX_WAKE, 1, 0);
        }
    }
    b->count = 0;
    b->nsel = 0;
    return torn;
}

uint64_t capfan_consumer_generation(capfan_consumer *k) { return k->generation; }

uint64_t capfan_consumer_producer_generation(capfan_consumer *k, int *alive) {
    ctl_t *c = k->r.ctl;
    if (alive) *alive = proc_alive(c->producer_pid, c->producer_start);
    return c->generation;
}

int capfan_consumer_slot(capfan_consumer *k) { return (int)k->idx; }
capfan_ring *capfan_consumer_ring(capfan_consumer *k) { return &k->r; }

int capfan_consumer_stats(capfan_consumer *k, capfan_slot_stats *out) {
    return capfan_ring_slot_get(&k->r, k->idx, out);
}

/* Benchmark loops: see ringbench.h. Kept out of the ring itself; only `capfan bench` uses them. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ringbench.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t real_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Ethernet + IPv4 + UDP frame; flow f varies the source port. */
static void make_frame(uint8_t *f, uint32_t size, uint32_t flow, uint64_t n) {
    static const uint8_t hdr[42] = {
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00,             /* ethernet */
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, /* ipv4 */
        0, 0, 0, 53, 0, 0, 0, 0,                                            /* udp */
    };
    memcpy(f, hdr, size < 42 ? size : 42);
    if (size < 42) return;
    uint16_t iplen = (uint16_t)(size - 14), udplen = (uint16_t)(size - 34), sport = (uint16_t)(1024 + flow);
    f[16] = (uint8_t)(iplen >> 8); f[17] = (uint8_t)iplen;
    f[34] = (uint8_t)(sport >> 8); f[35] = (uint8_t)sport;
    f[38] = (uint8_t)(udplen >> 8); f[39] = (uint8_t)udplen;
    if (size >= 50) memcpy(f + 42, &n, 8);
}

int64_t capfan_bench_produce(capfan_producer *p, uint64_t npkts, uint32_t size, uint32_t nflows,
                             uint32_t batch, uint64_t *cpu_ns) {
    uint8_t tmpl[2048];
    if (size > sizeof tmpl) size = sizeof tmpl;
    if (size < 60) size = 60;
    if (!nflows) nflows = 1;
    if (!batch) batch = 64;
    uint64_t t0 = cpu_now(), ts = real_now();
    int64_t done = 0;
    for (uint64_t i = 0; i < npkts; i++) {
        uint8_t *dst = capfan_producer_reserve(p, size, size, -1);
        if (!dst) continue;
        make_frame(tmpl, size, (uint32_t)(i % nflows), i);
        memcpy(dst, tmpl, size);
        capfan_producer_commit(p, ts + i, size, size, 0, 0);
        done++;
        if ((i + 1) % batch == 0) capfan_producer_flush(p);
    }
    capfan_producer_flush(p);
    *cpu_ns = cpu_now() - t0;
    return done;
}

int64_t capfan_bench_consume(capfan_consumer *c, uint64_t npkts, int64_t idle_timeout_ns,
                             uint64_t *cpu_ns, uint64_t *checksum) {
    uint64_t t0 = cpu_now(), sum = 0, seen = 0;
    capfan_slot_stats st;
    capfan_consumer_stats(c, &st);
    uint64_t start = st.cursor; /* lapped descriptors count as seen too */
    capfan_batch b;
    while (seen < npkts) {
        int n = capfan_consumer_next(c, 4096, idle_timeout_ns, &b);
        if (n <= 0) break;
        for (uint32_t k = 0; k < b.nsel; k++) {
            const capfan_desc *d = &b.desc[b.sel ? b.sel[k] : k];
            uint64_t w;
            memcpy(&w, b.arena + d->off + 34, 8); /* touch the packet: ports + length */
            sum += w + d->caplen;
        }
        capfan_consumer_release(c, &b);
        seen = b.first_seq + (uint64_t)n - start;
    }
    capfan_consumer_stats(c, &st);
    *cpu_ns = cpu_now() - t0;
    *checksum = sum;
    return (int64_t)st.delivered;
}

/* ---- per-consumer copy baseline ---- */
typedef struct copyq_hdr {
    uint32_t nqueues, slots, slot_bytes, _pad;
} copyq_hdr;

typedef struct copyq_idx {
    _Alignas(64) _Atomic uint64_t head;
    _Alignas(64) _Atomic uint64_t tail;
} copyq_idx;

static uint8_t *copyq_map(const char *path, size_t *len) {
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return NULL; }
    /* populate now: first-touch page faults must stay out of the measured loops */
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return NULL;
    *len = (size_t)st.st_size;
    return m;
}

#define COPYQ_DATA(m, h, q) ((m) + 4096 + (size_t)(h)->nqueues * sizeof(copyq_idx) + \
                             (size_t)(q) * (h)->slots * (h)->slot_bytes)

int capfan_bench_copyq_create(const char *path, uint32_t nqueues, uint32_t slots, uint32_t slot_bytes) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t len = 4096 + (size_t)nqueues * sizeof(copyq_idx) + (size_t)nqueues * slots * slot_bytes;
    if (ftruncate(fd, (off_t)len) != 0) { close(fd); return -1; }
    close(fd);
    size_t ml;
    uint8_t *m = copyq_map(path, &ml);
    if (!m) return -1;
    copyq_hdr *h = (copyq_hdr *)m;
    h->nqueues = nqueues;
    h->slots = slots;
    h->slot_bytes = slot_bytes;
    munmap(m, ml);
    return 0;
}

int64_t capfan_bench_copyq_produce(const char *path, uint64_t npkts, uint32_t size, uint64_t *cpu_ns) {
    size_t ml;
    uint8_t *m = copyq_map(path, &ml);
    if (!m) return -1;
    copyq_hdr *h = (copyq_hdr *)m;
    copyq_idx *ix = (copyq_idx *)(m + 4096);
    uint8_t tmpl[2048];
    if (size > h->slot_bytes - 4) size = h->slot_bytes - 4;
    uint64_t t0 = cpu_now();
    for (uint64_t i = 0; i < npkts; i++) {
        make_frame(tmpl, size, (uint32_t)(i & 1023), i);
        for (uint32_t q = 0; q < h->nqueues; q++) {
            uint64_t hd = atomic_load_explicit(&ix[q].head, memory_order_relaxed);
            while (hd - atomic_load_explicit(&ix[q].tail, memory_order_acquire) >= h->slots) usleep(20);
            uint8_t *slot = COPYQ_DATA(m, h, q) + (hd % h->slots) * h->slot_bytes;
            memcpy(slot, &size, 4);
            memcpy(slot + 4, tmpl, size); /* the per-consumer copy this baseline stands for */
            atomic_store_explicit(&ix[q].head, hd + 1, memory_order_release);
        }
    }
    *cpu_ns = cpu_now() - t0;
    munmap(m, ml);
    return (int64_t)npkts;
}

int64_t capfan_bench_copyq_consume(const char *path, uint32_t q, uint64_t npkts, uint64_t *cpu_ns,
                                   uint64_t *checksum) {
    size_t ml;
    uint8_t *m = copyq_map(path, &ml);
    if (!m) return -1;
    copyq_hdr *h = (copyq_hdr *)m;
    copyq_idx *ix = (copyq_idx *)(m + 4096);
    uint64_t t0 = cpu_now(), sum = 0, got = 0, idle = 0;
    uint64_t tl = atomic_load_explicit(&ix[q].tail, memory_order_relaxed);
    while (got < npkts) {
        uint64_t hd = atomic_load_explicit(&ix[q].head, memory_order_acquire);
        if (hd == tl) {
            if (++idle > 200000) break; /* producer gone: ~4 s of 20 us naps */
            usleep(20);
            continue;
        }
        idle = 0;
        for (; tl < hd && got < npkts; tl++, got++) {
            const uint8_t *slot = COPYQ_DATA(m, h, q) + (tl % h->slots) * h->slot_bytes;
            uint32_t len;
            uint64_t w;
            memcpy(&len, slot, 4);
            memcpy(&w, slot + 4 + 34, 8);
            sum += w + len;
        }
        atomic_store_explicit(&ix[q].tail, tl, memory_order_release);
    }
    *cpu_ns = cpu_now() - t0;
    *checksum = sum;
    munmap(m, ml);
    return (int64_t)got;
}

/* pcap / pcapng replay backend: reads a capture file through mmap and publishes its packets
 * into a ring, as fast as possible or paced by the recorded timestamps, once or in loops.
 *
 * Every read is bounds-checked against the file size before it happens: a truncated or
 * corrupt file never makes us read outside the mapping. Packets before the first bad record
 * are delivered; then the source reports CAPFAN_ECORRUPT with the byte offset of that record.
 *
 * Formats: classic pcap (µs and ns magics, either byte order; the link type is the low 16
 * bits of the header field, the upper bits carry FCS information) and pcapng (any number of
 * sections in either byte order; IDB with if_tsresol / if_tsoffset; EPB, SPB, OPB packets;
 * every other block type is skipped by its length).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "source_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PCAP_MAX_CAPLEN (256u * 1024u) /* larger records are corrupt (wiretap's limit too) */
#define PCAP_HDR_LEN 24u
#define PCAP_REC_LEN 16u
#define NG_SHB 0x0A0D0D0Au
#define NG_IDB 1u
#define NG_OPB 2u /* obsolete packet block */
#define NG_SPB 3u
#define NG_EPB 6u
#define NG_BOM 0x1A2B3C4Du
#define NG_MIN_SHB 28u
#define NG_MIN_IDB 20u
#define NG_MIN_EPB 32u /* also OPB */
#define NG_MIN_SPB 16u
#define NG_MAX_IFACES 65536u
#define US_PER_NS 1000ull
#define NS_PER_S 1000000000ull
#define SPIN_NS 100000ull /* sleep until this close to a packet's due time, then spin */

typedef struct pcap_iface {
    uint32_t linktype;
    uint32_t snaplen;       /* SPB caplen limit; 0 = none */
    uint64_t units_per_s;   /* if_tsresol */
    int64_t tsoffset_s;     /* if_tsoffset */
} pcap_iface;

/* One packet record as found in the file (data points into the mapping). */
typedef struct pcap_pkt {
    const uint8_t *data;
    uint32_t caplen, wirelen, iface;
    uint64_t ts_ns;
} pcap_pkt;

typedef struct pcap_src {
    struct capfan_source base;      /* first: the generic source */
    char path[260];                 /* for messages: the last 256 bytes of a long path */
    const uint8_t *map;
    uint64_t size;
    int ng;                         /* pcapng (else classic pcap) */
    int swap;                       /* the current header/section is in the other byte order */
    int nsec;                       /* classic pcap with nanosecond timestamps */
    uint64_t start;                 /* offset of the first record of a pass */
    uint64_t off;                   /* next record */
    pcap_iface *ifs;                /* interfaces, numbered across sections like wiretap does */
    uint32_t nif, cap_if;
    uint32_t pass_nif;              /* interfaces seen so far in this pass */
    uint32_t sec_base;              /* global index of the current section's interface 0 */
    uint32_t lt_published;          /* interfaces whose link type the producer knows */
    /* replay */
    double speed;
    uint32_t loops, pass;
    uint16_t port_base;
    int have_ts;                    /* first/min/max_ts are set */
    uint64_t first_ts, min_ts, max_ts, shift, last_ts;
    uint64_t t0_mono;               /* monotonic time the first packet was published */
    int have_pending;
    pcap_pkt pending;               /* read, waiting for its due time */
    capfan_producer *prod;
    uint32_t snaplen;               /* the ring's */
    int err;                        /* sticky error code (corrupt file) */
    char errmsg[512];               /* = the size of the ring's error message buffer */
} pcap_src;

/* ---------------------------------------------------------------- byte access */
static inline uint16_t rd16(const pcap_src *s, uint64_t at) {
    uint16_t v;
    memcpy(&v, s->map + at, 2);
    return s->swap ? __builtin_bswap16(v) : v;
}

static inline uint32_t rd32(const pcap_src *s, uint64_t at) {
    uint32_t v;
    memcpy(&v, s->map + at, 4);
    return s->swap ? __builtin_bswap32(v) : v;
}

static inline uint64_t rd64(const pcap_src *s, uint64_t at) {
    uint64_t v;
    memcpy(&v, s->map + at, 8);
    return s->swap ? __builtin_bswap64(v) : v;
}

static inline uint32_t pad4(uint32_t n) { return (n + 3u) & ~3u; }

/* Record a corrupt-file error at byte offset `at`; sticky: every later recv returns it. */
static int corrupt(pcap_src *s, uint64_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int corrupt(pcap_src *s, uint64_t at, const char *fmt, ...) {
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(s->errmsg, sizeof s->errmsg, "corrupt %s %s at byte offset %llu: %s",
             s->ng ? "pcapng" : "pcap", s->path, (unsigned long long)at, what);
    s->err = CAPFAN_ECORRUPT;
    s->base.st.malformed++;
    s->base.st.file_offset = at;
    return capfan_set_error(CAPFAN_ECORRUPT, "%s", s->errmsg);
}

/* ---------------------------------------------------------------- interfaces */
/* Slot for the next interface of this pass (a later pass re-reads the same IDBs in the same
 * order, so it reuses the slots and the ports stay the same). */
static pcap_iface *next_iface(pcap_src *s, uint64_t at) {
    if (s->pass_nif < s->nif) return &s->ifs[s->pass_nif++];
    if (s->nif >= NG_MAX_IFACES || (uint32_t)s->port_base + s->nif > 0xFFFFu) {
        corrupt(s, at, "more interfaces than ports (port_base %u + %u)", s->port_base, s->nif);
        return NULL;
    }
    if (s->nif == s->cap_if) {
        uint32_t cap = s->cap_if ? s->cap_if * 2 : 4;
        pcap_iface *n = realloc(s->ifs, cap * sizeof *n);
        if (!n) {
            snprintf(s->errmsg, sizeof s->errmsg, "out of memory for the interfaces of %s", s->path);
            s->err = CAPFAN_ESYS;
            capfan_set_error(CAPFAN_ESYS, "%s", s->errmsg);
            return NULL;
        }
        s->ifs = n;
        s->cap_if = cap;
    }
    s->nif++;
    return &s->ifs[s->pass_nif++];
}

/* Nanoseconds since the epoch of a pcapng timestamp in the interface's units; like wiretap:
 * seconds = units / rate + if_tsoffset, fraction truncated to ns. Clamped to [0, 2^64). */
static uint64_t ng_ts_ns(const pcap_iface *f, uint64_t units) {
    uint64_t ups = f->units_per_s;
    uint64_t frac = (uint64_t)(((unsigned __int128)(units % ups) * NS_PER_S) / ups);
    __int128 sec = (__int128)(units / ups) + f->tsoffset_s;
    if (sec < 0) return 0;
    if (sec >= (__int128)(UINT64_MAX / NS_PER_S)) return UINT64_MAX;
    return (uint64_t)sec * NS_PER_S + frac;
}

/* Apply an IDB's options: if_tsresol (9) and if_tsoffset (14). Options are metadata: a
 * malformed list ends option parsing and an if_tsresol beyond 10^-19 / 2^-63 (which does not
 * fit 64 bits) makes the rate 2^64 - 1, as wiretap does; neither makes the file corrupt. */
static void idb_options(const pcap_src *s, pcap_iface *f, uint64_t at, uint64_t end) {
    while (at + 4 <= end) {
        uint16_t code = rd16(s, at), len = rd16(s, at + 2);
        uint64_t val = at + 4;
        if (code == 0 || val + len > end) break;
        if (code == 9 && len >= 1) {
            uint8_t r = s->map[val], e = r & 0x7F;
            uint64_t ups = 1;
            if ((r & 0x80) ? e > 63 : e > 19) ups = UINT64_MAX;
            else if (r & 0x80) ups <<= e;
            else while (e--) ups *= 10;
            f->units_per_s = ups;
        } else if (code == 14 && len >= 8) {
            f->tsoffset_s = (int64_t)rd64(s, val);
        }
        at = val + pad4(len);
    }
}

/* ---------------------------------------------------------------- pcapng blocks */
/* Validate the block at s->off: header present, length sane and inside the file, trailer
 * copy equal. For an SHB it first sets the byte order from its byte-order magic. */
static int ng_block(pcap_src *s, uint32_t *type, uint32_t *len) {
    uint64_t at = s->off, rem = s->size - at;
    if (rem < 8) return corrupt(s, at, "block header truncated (%llu of 8 bytes)", (unsigned long long)rem);
    uint32_t raw;
    memcpy(&raw, s->map + at, 4);
    if (raw == NG_SHB) { /* the type reads the same in both byte orders */
        if (rem < 12) return corrupt(s, at, "section header truncated (%llu bytes)", (unsigned long long)rem);
        uint32_t bom;
        memcpy(&bom, s->map + at + 8, 4);
        if (bom == NG_BOM) s->swap = 0;
        else if (bom == __builtin_bswap32(NG_BOM)) s->swap = 1;
        else return corrupt(s, at + 8, "bad byte-order magic 0x%08x in section header", bom);
    }
    *type = rd32(s, at);
    *len = rd32(s, at + 4);
    uint32_t min = *type == NG_SHB ? NG_MIN_SHB : 12;
    if (*len < min || *len % 4) return corrupt(s, at, "bad block length %u (block type 0x%08x)", *len, *type);
    if (*len > rem)
        return corrupt(s, at, "block truncated: length %u but only %llu bytes left", *len, (unsigned long long)rem);
    uint32_t trailer = rd32(s, at + *len - 4);
    if (trailer != *len)
        return corrupt(s, at, "block length %u but trailing copy says %u (block type 0x%08x)", *len, trailer, *type);
    return 0;
}

/* Section header: check the version; interface ids restart with the section. */
static int ng_shb(pcap_src *s, uint32_t len) {
    uint16_t major = rd16(s, s->off + 12), minor = rd16(s, s->off + 14);
    if (major != 1) return corrupt(s, s->off + 12, "unsupported pcapng version %u.%u", major, minor);
    s->sec_base = s->pass_nif;
    (void)len;
    return 0;
}

/* Interface description: link type, snaplen, timestamp resolution and offset. */
static int ng_idb(pcap_src *s, uint32_t len) {
    uint64_t at = s->off;
    if (len < NG_MIN_IDB) return corrupt(s, at, "interface description block too short (%u bytes)", len);
    pcap_iface f = {.linktype = rd16(s, at + 8), .snaplen = rd32(s, at + 12), .units_per_s = 1000000};
    idb_options(s, &f, at + 16, at + len - 4);
    pcap_iface *slot = next_iface(s, at);
    if (!slot) return -s->err;
    *slot = f;
    return 0;
}

/* Global interface of a section-local id, or corrupt if the section has no such IDB. */
static int ng_iface(pcap_src *s, uint32_t id, uint32_t *out) {
    if (id >= s->pass_nif - s->sec_base)
        return corrupt(s, s->off, "packet for interface %u without an interface description block", id);
    *out = s->sec_base + id;
    return 0;
}

/* EPB (type 6) and OPB (type 2): same layout but OPB has a 16-bit interface id. */
static int ng_epb(pcap_src *s, uint32_t type, uint32_t len, pcap_pkt *pk) {
    uint64_t at = s->off;
    if (len < NG_MIN_EPB) return corrupt(s, at, "packet block too short (%u bytes)", len);
    uint32_t id = type == NG_OPB ? rd16(s, at + 8) : rd32(s, at + 8);
    int rc = ng_iface(s, id, &pk->iface);
    if (rc) return rc;
    uint64_t units = (uint64_t)rd32(s, at + 12) << 32 | rd32(s, at + 16);
    pk->caplen = rd32(s, at + 20);
    pk->wirelen = rd32(s, at + 24);
    if (pk->caplen > PCAP_MAX_CAPLEN)
        return corrupt(s, at, "captured length %u exceeds %u", pk->caplen, PCAP_MAX_CAPLEN);
    if (28ull + pk->caplen + 4 > len)
        return corrupt(s, at, "captured length %u does not fit in its %u-byte block", pk->caplen, len);
    pk->data = s->map + at + 28;
    pk->ts_ns = ng_ts_ns(&s->ifs[pk->iface], units);
    return 0;
}

/* SPB: interface 0, original length only; caplen is that cut to the interface's snaplen. No
 * timestamp: it gets the previous packet's (so replays and loops stay in order). */
static int ng_spb(pcap_src *s, uint32_t len, pcap_pkt *pk) {
    uint64_t at = s->off;
    if (len < NG_MIN_SPB) return corrupt(s, at, "simple packet block too short (%u bytes)", len);
    int rc = ng_iface(s, 0, &pk->iface);
    if (rc) return rc;
    pk->wirelen = rd32(s, at + 8);
    uint32_t snap = s->ifs[pk->iface].snaplen;
    pk->caplen = snap && snap < pk->wirelen ? snap : pk->wirelen;
    if (pk->caplen > PCAP_MAX_CAPLEN)
        return corrupt(s, at, "captured length %u exceeds %u", pk->caplen, PCAP_MAX_CAPLEN);
    if (12ull + pk->caplen + 4 > len)
        return corrupt(s, at, "simple packet block of %u bytes too short for %u bytes of data", len, pk->caplen);
    pk->data = s->map + at + 12;
    pk->ts_ns = s->last_ts;
    return 0;
}

/* Next packet of a pcapng file: 1, 0 at the end of the file, or -error. */
static int ng_next(pcap_src *s, pcap_pkt *pk) {
    while (s->off < s->size) {
        uint32_t type = 0, len = 0;
        int rc = ng_block(s, &type, &len);
        if (rc) return rc;
        int pkt = 0;
        switch (type) {
        case NG_SHB: rc = ng_shb(s, len); break;
        case NG_IDB: rc = ng_idb(s, len); break;
        case NG_EPB: case NG_OPB: rc = ng_epb(s, type, len, pk); pkt = 1; break;
        case NG_SPB: rc = ng_spb(s, len, pk); pkt = 1; break;
        default: break; /* NRB, ISB, DSB, custom...: not needed for replay */
        }
        if (rc) return rc;
        s->off += len;
        if (pkt) return 1;
    }
    return 0;
}

/* Consume leading non-packet blocks (to learn the first interfaces before any packet);
 * stops quietly at a packet block, the end, or a problem (recv will report it). */
static void ng_meta(pcap_src *s) {
    while (s->off < s->size && !s->err) {
        uint64_t at = s->off;
        uint32_t type = 0, len = 0;
        if (ng_block(s, &type, &len)) break;
        if (type == NG_EPB || type == NG_OPB || type == NG_SPB) break;
        if ((type == NG_SHB && ng_shb(s, len)) || (type == NG_IDB && ng_idb(s, len))) break;
        s->off = at + len;
    }
    if (s->err) { /* undo: recv re-reads the block and reports it */
        s->err = 0;
        s->base.st.malformed--;
    }
}

/* ---------------------------------------------------------------- classic pcap */
/* Next record of a classic pcap file: 1, 0 at the end of the file, or -error. */
static int pcap_next_rec(pcap_src *s, pcap_pkt *pk) {
    uint64_t at = s->off, rem = s->size - at;
    if (rem == 0) return 0;
    if (rem < PCAP_REC_LEN)
        return corrupt(s, at, "record header truncated (%llu of %u bytes)", (unsigned long long)rem, PCAP_REC_LEN);
    uint32_t sec = rd32(s, at), frac = rd32(s, at + 4);
    pk->caplen = rd32(s, at + 8);
    pk->wirelen = rd32(s, at + 12);
    if (pk->caplen > PCAP_MAX_CAPLEN)
        return corrupt(s, at, "captured length %u exceeds %u", pk->caplen, PCAP_MAX_CAPLEN);
    if (pk->caplen > rem - PCAP_REC_LEN)
        return corrupt(s, at, "packet data truncated: captured length %u but only %llu bytes left",
                       pk->caplen, (unsigned long long)(rem - PCAP_REC_LEN));
    pk->data = s->map + at + PCAP_REC_LEN;
    pk->iface = 0;
    pk->ts_ns = (uint64_t)sec * NS_PER_S + (s->nsec ? frac : (uint64_t)frac * US_PER_NS);
    s->off = at + PCAP_REC_LEN + pk->caplen;
    return 1;
}

/* ---------------------------------------------------------------- passes */
/* Next packet over all passes: 1, 0 when every pass is done, -error. Timestamps of pass n are
 * shifted by n x (span + 1 µs) so they keep increasing across passes. */
static int next_packet(pcap_src *s, pcap_pkt *pk) {
    for (;;) {
        int rc = s->ng ? ng_next(s, pk) : pcap_next_rec(s, pk);
        if (rc < 0) return rc;
        if (rc == 1) {
            if (!s->have_ts) {
                s->have_ts = 1;
                s->first_ts = s->min_ts = s->max_ts = pk->ts_ns;
            }
            if (pk->ts_ns < s->min_ts) s->min_ts = pk->ts_ns;
            if (pk->ts_ns > s->max_ts) s->max_ts = pk->ts_ns;
            s->last_ts = pk->ts_ns;
            pk->ts_ns += s->shift;
            return 1;
        }
        s->base.st.loops_done++;
        /* an empty file would loop for ever without producing anything: one pass is enough */
        if (++s->pass >= s->loops || !s->have_ts) {
            s->base.st.loops_done = s->loops;
            return 0;
        }
        s->shift += s->max_ts - s->min_ts + US_PER_NS;
        s->off = s->start;
        s->pass_nif = 0;
        s->sec_base = 0;
        s->last_ts = 0;
    }
}

/* ---------------------------------------------------------------- pacing */
/* Wait until a monotonic time: nanosleep most of the way, spin the last SPIN_NS. */
static void sleep_until(uint64_t target_mono) {
    uint64_t now = capfan_now_monotonic_ns();
    if (target_mono > now + SPIN_NS) {
        uint64_t t = target_mono - SPIN_NS;
        struct timespec ts = {.tv_sec = (time_t)(t / NS_PER_S), .tv_nsec = (long)(t % NS_PER_S)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
    }
    while (capfan_now_monotonic_ns() < target_mono) {} /* the last stretch: nanosleep is too coarse */
}

/* Monotonic time at which a packet is due: its offset from the first packet / speed. */
static uint64_t due_mono(const pcap_src *s, uint64_t ts) {
    if (ts <= s->first_ts) return s->t0_mono;
    return s->t0_mono + (uint64_t)((double)(ts - s->first_ts) / s->speed);
}

/* ---------------------------------------------------------------- source ops */
/* Link type of a port (port_base + interface); unknown ports get the first interface's. */
static uint32_t pcap_linktype(capfan_source *base, uint32_t port) {
    pcap_src *s = (pcap_src *)base;
    if (s->nif == 0) return 1; /* no interface yet: Ethernet, the common case */
    uint32_t i = port >= s->port_base ? port - s->port_base : 0;
    return s->ifs[i < s->nif ? i : 0].linktype;
}

/* Tell the producer the link types of interfaces it does not know yet. */
static void publish_linktypes(pcap_src *s) {
    for (; s->lt_published < s->nif; s->lt_published++) {
        uint32_t port = (uint32_t)s->port_base + s->lt_published;
        if (port < CAPFAN_PORTS) capfan_producer_set_linktype(s->prod, port, s->ifs[s->lt_published].linktype);
    }
}

/* Bind to a producer: learn the ring's snaplen, declare every known interface's link type. */
static int pcap_prepare(capfan_source *base, capfan_producer *p) {
    pcap_src *s = (pcap_src *)base;
    capfan_ring_stats rs;
    capfan_ring_stats_get(capfan_producer_ring(p), &rs);
    s->prod = p;
    s->snaplen = rs.snaplen ? rs.snaplen : CAPFAN_MAX_CAPLEN;
    s->lt_published = 0;
    publish_linktypes(s);
    return 0;
}

/* Copy one packet into the ring (or count it as a ring drop). Returns 1 if published. */
static int publish(pcap_src *s, const pcap_pkt *pk) {
    capfan_source_stats *st = &s->base.st;
    st->packets++;
    st->bytes += pk->wirelen;
    uint32_t cl = pk->caplen < s->snaplen ? pk->caplen : s->snaplen;
    if (cl < pk->wirelen || cl < pk->caplen) st->truncated++;
    if (s->lt_published < s->nif) publish_linktypes(s);
    uint8_t *dst = capfan_producer_reserve(s->prod, cl, pk->wirelen, -1);
    if (!dst) {
        st->ring_drops++;
        return 0;
    }
    memcpy(dst, pk->data, cl);
    capfan_producer_commit(s->prod, pk->ts_ns, cl, pk->wirelen, (uint16_t)(s->port_base + pk->iface), 0);
    st->published++;
    return 1;
}

/* Publish up to max packets. Paced replays sleep for due packets but at most timeout_ns in
 * all, returning what was published so far (0 = nothing was due yet) so callers can report
 * progress. Packets before a corrupt record come first; the error comes on the next call. */
static int pcap_recv(capfan_source *base, capfan_producer *p, uint32_t max, int64_t timeout_ns) {
    pcap_src *s = (pcap_src *)base;
    capfan_source_stats *st = &s->base.st;
    if (s->err) return capfan_set_error(s->err, "%s", s->errmsg);
    if (st->eof) return capfan_set_error(CAPFAN_EEOF, "end of %s", s->path);
    if (p != s->prod) pcap_prepare(base, p);
    uint64_t deadline = UINT64_MAX;
    if (s->speed > 0 && timeout_ns >= 0) deadline = capfan_now_monotonic_ns() + (uint64_t)timeout_ns;
    int done = 0, rc = 0;
    for (uint32_t taken = 0; taken < max; taken++) {
        if (!s->have_pending) {
            rc = next_packet(s, &s->pending);
            if (rc <= 0) break;
            s->have_pending = 1;
        }
        if (s->speed > 0) {
            if (!s->t0_mono) s->t0_mono = capfan_now_monotonic_ns();
            uint64_t due = due_mono(s, s->pending.ts_ns);
            if (due > capfan_now_monotonic_ns()) {
                capfan_producer_flush(p); /* consumers see what is due while we wait */
                if (due > deadline) {
                    sleep_until(deadline);
                    break;
                }
                sleep_until(due);
            }
        }
        done += publish(s, &s->pending);
        s->have_pending = 0;
    }
    capfan_producer_flush(p);
    if (!s->err) st->file_offset = s->off;
    if (rc == 0 && !s->have_pending && st->loops_done >= s->loops) {
        st->eof = 1;
        st->file_offset = s->size;
    }
    if (done > 0) return done;
    if (s->err) return capfan_set_error(s->err, "%s", s->errmsg);
    if (st->eof) return capfan_set_error(CAPFAN_EEOF, "end of %s", s->path);
    return 0;
}

/* Unmap the file and free the source. */
static void pcap_close(capfan_source *base) {
    pcap_src *s = (pcap_src *)base;
    if (s->map) munmap((void *)s->map, s->size);
    free(s->ifs);
    free(s);
}

static const capfan_source_ops pcap_ops = {
    .kind = "pcap",
    .linktype = pcap_linktype,
    .prepare = pcap_prepare,
    .recv = pcap_recv,
    .stats = NULL,
    .close = pcap_close,
};

/* ---------------------------------------------------------------- open */
/* Map the file read-only; errors name the path. */
static int map_file(pcap_src *s, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return capfan_set_error(errno == ENOENT ? CAPFAN_ENOENT : errno == EACCES ? CAPFAN_EPERM : CAPFAN_ESYS,
                                "cannot open capture file %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return capfan_set_error(CAPFAN_EINVAL, "%s is not a regular file", path);
    }
    s->size = (uint64_t)sb.st_size;
    s->base.st.file_bytes = s->size;
    if (s->size) {
        void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return capfan_set_error(CAPFAN_ESYS, "cannot map %s: %s", path, strerror(e));
        }
        madvise(m, s->size, MADV_SEQUENTIAL);
        s->map = m;
    }
    close(fd);
    return 0;
}

/* Classic pcap file header: byte order / resolution from the magic, link type. */
static int pcap_header(pcap_src *s, uint32_t magic) {
    s->swap = magic == 0xD4C3B2A1u || magic == 0x4D3CB2A1u;
    s->nsec = magic == 0xA1B23C4Du || magic == 0x4D3CB2A1u;
    if (s->size < PCAP_HDR_LEN)
        return corrupt(s, 0, "file header truncated (%llu of %u bytes)", (unsigned long long)s->size, PCAP_HDR_LEN);
    uint16_t major = rd16(s, 4), minor = rd16(s, 6);
    if (major != 2) return corrupt(s, 4, "unsupported pcap version %u.%u", major, minor);
    pcap_iface *f = next_iface(s, 0);
    if (!f) return -s->err;
    f->snaplen = rd32(s, 16);
    f->linktype = rd32(s, 20) & 0xFFFFu; /* bits 16-27 reserved, 28-31 FCS length/flag */
    f->units_per_s = s->nsec ? NS_PER_S : 1000000;
    s->start = s->off = PCAP_HDR_LEN;
    return 0;
}

/* pcapng: the file must start with a valid section header block. */
static int pcapng_header(pcap_src *s) {
    s->ng = 1;
    uint32_t type = 0, len = 0;
    int rc = ng_block(s, &type, &len);
    if (rc == 0) rc = ng_shb(s, len);
    if (rc) return rc;
    s->start = 0;
    s->off = len;
    ng_meta(s); /* learn the first interfaces now: linktype() is asked before any recv */
    return 0;
}

/* Open a pcap/pcapng file for replay (see source.h); NULL with capfan_last_error() set. */
capfan_source *capfan_pcap_open(const char *path, const capfan_pcap_opts *o) {
    capfan_pcap_opts def = {.speed = 0, .loops = 1, .port_base = 0};
    if (!o) o = &def;
    if (!path) {
        capfan_set_error(CAPFAN_EINVAL, "no capture file given");
        return NULL;
    }
    if (!(o->speed >= 0) || isinf(o->speed)) {
        capfan_set_error(CAPFAN_EINVAL, "replay speed must be 0 (as fast as possible) or a positive factor, not %g", o->speed);
        return NULL;
    }
    pcap_src *s = calloc(1, sizeof *s);
    if (!s) {
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    s->base.ops = &pcap_ops;
    size_t plen = strlen(path);
    snprintf(s->path, sizeof s->path, "%s%s", plen > 256 ? "..." : "", plen > 256 ? path + plen - 253 : path);
    s->speed = o->speed;
    s->loops = o->loops ? o->loops : 1;
    s->port_base = o->port_base;
    int rc = map_file(s, path);
    if (rc == 0) {
        uint32_t magic = 0;
        if (s->size >= 4) memcpy(&magic, s->map, 4);
        if (s->size == 0) rc = corrupt(s, 0, "empty file (no capture file header)");
        else if (s->size < 4) rc = corrupt(s, 0, "file too short for a capture file header (%llu bytes)", (unsigned long long)s->size);
        else if (magic == NG_SHB) rc = pcapng_header(s);
        else if (magic == 0xA1B2C3D4u || magic == 0xD4C3B2A1u || magic == 0xA1B23C4Du || magic == 0x4D3CB2A1u)
            rc = pcap_header(s, magic);
        else rc = corrupt(s, 0, "unknown magic 0x%02x%02x%02x%02x (not a pcap or pcapng file)",
                          s->map[0], s->map[1], s->map[2], s->map[3]);
    }
    if (rc) {
        pcap_close(&s->base);
        return NULL;
    }
    s->base.st.file_offset = s->off;
    return &s->base;
}

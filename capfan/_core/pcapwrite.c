/* pcap / pcapng records from ring batches into a growable memory buffer (see pcapwrite.h).
 * Records are written in host byte order; the magic numbers tell readers which one it is. */
#include "pcapwrite.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpf.h"

#define DEFAULT_SNAPLEN 65535u
#define NO_LINKTYPE 0xffffffffu
#define NO_IFACE 0xffffffffu
#define MAX_FILTERS 16u          /* link types a filter is compiled for (one is the usual case) */
#define PORTS 65536u             /* descriptor port is 16 bits */
#define PCAP_MAGIC_US 0xa1b2c3d4u
#define PCAP_MAGIC_NS 0xa1b23c4du
#define PCAP_HDR_LEN 24u
#define PCAP_REC_HDR 16u
#define NG_SHB 0x0a0d0d0au
#define NG_IDB 0x00000001u
#define NG_EPB 0x00000006u
#define NG_BYTE_ORDER 0x1a2b3c4du
#define NG_EPB_OVERHEAD 32u      /* type, len, iface, ts hi, ts lo, caplen, origlen, trailing len */
#define OPT_END 0u
#define OPT_SHB_USERAPPL 4u
#define IF_NAME 2u
#define IF_TSRESOL 9u

typedef struct filter_slot {
    uint32_t linktype;
    capfan_bpf *bpf;            /* NULL: could not be compiled for this link type */
} filter_slot;

struct capfan_pcapw {
    capfan_pcapw_opts o;
    char *filter;               /* our copy of the expression, NULL = no filter */
    filter_slot filters[MAX_FILTERS];
    uint32_t nfilters;
    uint8_t *buf;
    uint64_t len, cap;
    capfan_pcapw_rec *recs;     /* packets of the last add */
    uint32_t nrecs, recs_cap;
    uint32_t *port_iface;       /* pcapng: port -> interface id in the current file */
    uint32_t *iface_linktype;   /* pcapng: interface id -> its link type */
    uint32_t niface, iface_cap;
    int header_pending;         /* pcap: file begun, header waits for the link type */
    capfan_pcapw_stats st;
};

static uint32_t pad4(uint32_t n) { return (n + 3u) & ~3u; }

/* Make room for `more` bytes at the end of the buffer. */
static int reserve(capfan_pcapw *w, uint64_t more) {
    if (w->len + more <= w->cap) return 0;
    uint64_t cap = w->cap ? w->cap : 1u << 20;
    while (cap < w->len + more) cap *= 2;
    uint8_t *b = realloc(w->buf, cap);
    if (!b) return capfan_set_error(CAPFAN_ESYS, "out of memory growing the pcap buffer to %llu bytes",
                                    (unsigned long long)cap);
    w->buf = b;
    w->cap = cap;
    return 0;
}

static void put32(capfan_pcapw *w, uint32_t v) { memcpy(w->buf + w->len, &v, 4); w->len += 4; }
static void put16(capfan_pcapw *w, uint16_t v) { memcpy(w->buf + w->len, &v, 2); w->len += 2; }
static void put_bytes(capfan_pcapw *w, const void *p, uint32_t n) { memcpy(w->buf + w->len, p, n); w->len += n; }
static void put_pad(capfan_pcapw *w, uint32_t n) { memset(w->buf + w->len, 0, n); w->len += n; }

/* Append a pcapng option (code, length, value padded to 4 bytes); room already reserved. */
static void put_opt(capfan_pcapw *w, uint16_t code, const void *val, uint16_t n) {
    put16(w, code);
    put16(w, n);
    put_bytes(w, val, n);
    put_pad(w, pad4(n) - n);
}

/* Classic pcap global header for a link type. */
static int put_pcap_header(capfan_pcapw *w, uint32_t linktype) {
    if (reserve(w, PCAP_HDR_LEN)) return -CAPFAN_ESYS;
    uint64_t before = w->len;
    put32(w, w->o.format == CAPFAN_PCAPW_PCAP_US ? PCAP_MAGIC_US : PCAP_MAGIC_NS);
    put16(w, 2);   /* version 2.4 */
    put16(w, 4);
    put32(w, 0);   /* thiszone */
    put32(w, 0);   /* sigfigs */
    put32(w, w->o.snaplen);
    put32(w, linktype);
    w->st.file_bytes += w->len - before;
    w->header_pending = 0;
    return 0;
}

/* pcapng Section Header Block naming capfan as the writer; section length unknown (-1). */
static int put_shb(capfan_pcapw *w) {
    static const char app[] = "capfan recorder";
    uint32_t opts = 4 + pad4(sizeof app - 1) + 4;
    uint32_t blen = 28 + opts;
    if (reserve(w, blen)) return -CAPFAN_ESYS;
    uint64_t before = w->len;
    put32(w, NG_SHB);
    put32(w, blen);
    put32(w, NG_BYTE_ORDER);
    put16(w, 1);   /* version 1.0 */
    put16(w, 0);
    put32(w, 0xffffffffu);
    put32(w, 0xffffffffu);
    put_opt(w, OPT_SHB_USERAPPL, app, sizeof app - 1);
    put_opt(w, OPT_END, NULL, 0);
    put32(w, blen);
    w->st.file_bytes += w->len - before;
    return 0;
}

/* pcapng Interface Description Block for a ring port: its link type, ns timestamps, a name
 * saying which port it was so readers can tell the interfaces apart. */
static int put_idb(capfan_pcapw *w, uint32_t port, uint32_t linktype) {
    char name[32];
    int n = snprintf(name, sizeof name, "capfan port %u", port);
    uint8_t tsresol = 9;
    uint32_t opts = (4 + pad4((uint32_t)n)) + (4 + 4) + 4;
    uint32_t blen = 20 + opts;
    if (reserve(w, blen)) return -CAPFAN_ESYS;
    uint64_t before = w->len;
    put32(w, NG_IDB);
    put32(w, blen);
    put16(w, (uint16_t)linktype);
    put16(w, 0);
    put32(w, w->o.snaplen);
    put_opt(w, IF_NAME, name, (uint16_t)n);
    put_opt(w, IF_TSRESOL, &tsresol, 1);
    put_opt(w, OPT_END, NULL, 0);
    put32(w, blen);
    w->st.file_bytes += w->len - before;
    return 0;
}

/* The interface id of `port` in the current file, emitting its IDB the first time (or when
 * the port's link type changed, e.g. a new producer). NO_IFACE on failure. */
static uint32_t iface_of(capfan_pcapw *w, uint32_t port, uint32_t linktype) {
    uint32_t id = w->port_iface[port];
    if (id != NO_IFACE && w->iface_linktype[id] == linktype) return id;
    if (w->niface == w->iface_cap) {
        uint32_t cap = w->iface_cap ? w->iface_cap * 2 : 16;
        uint32_t *lt = realloc(w->iface_linktype, cap * sizeof *lt);
        if (!lt) {
            capfan_set_error(CAPFAN_ESYS, "out of memory for pcapng interfaces");
            return NO_IFACE;
        }
        w->iface_linktype = lt;
        w->iface_cap = cap;
    }
    if (put_idb(w, port, linktype)) return NO_IFACE;
    id = w->niface++;
    w->iface_linktype[id] = linktype;
    w->port_iface[port] = id;
    w->st.interfaces = w->niface;
    return id;
}

/* The compiled filter for a link type (compiled on first use); NULL if it does not compile. */
static const capfan_bpf *filter_for(capfan_pcapw *w, uint32_t linktype) {
    for (uint32_t i = 0; i < w->nfilters; i++)
        if (w->filters[i].linktype == linktype) return w->filters[i].bpf;
    capfan_bpf *f = capfan_bpf_compile(w->filter, linktype, 0);
    if (!f && w->st.filter_failed_linktype == NO_LINKTYPE) w->st.filter_failed_linktype = linktype;
    if (w->nfilters == MAX_FILTERS) { /* pathological number of link types: no room to keep it */
        capfan_bpf_free(f);
        if (w->st.filter_failed_linktype == NO_LINKTYPE) w->st.filter_failed_linktype = linktype;
        return NULL;
    }
    w->filters[w->nfilters++] = (filter_slot){linktype, f};
    return f;
}

/* A writer with the filter compiled for o->linktype up front. */
capfan_pcapw *capfan_pcapw_new(const capfan_pcapw_opts *o) {
    if (o->format > CAPFAN_PCAPW_PCAPNG) {
        capfan_set_error(CAPFAN_EINVAL, "unknown capture file format %u", o->format);
        return NULL;
    }
    capfan_pcapw *w = calloc(1, sizeof *w);
    if (!w) {
        capfan_set_error(CAPFAN_ESYS, "out of memory for a pcap writer");
        return NULL;
    }
    w->o = *o;
    w->o.filter = NULL;
    if (!w->o.snaplen || w->o.snaplen > DEFAULT_SNAPLEN) w->o.snaplen = DEFAULT_SNAPLEN;
    w->st.linktype = NO_LINKTYPE;
    w->st.filter_failed_linktype = NO_LINKTYPE;
    w->port_iface = malloc(PORTS * sizeof *w->port_iface);
    if (!w->port_iface) {
        capfan_set_error(CAPFAN_ESYS, "out of memory for a pcap writer");
        capfan_pcapw_free(w);
        return NULL;
    }
    memset(w->port_iface, 0xff, PORTS * sizeof *w->port_iface);
    if (o->filter && o->filter[0]) {
        w->filter = strdup(o->filter);
        if (!w->filter) {
            capfan_set_error(CAPFAN_ESYS, "out of memory for a pcap writer");
            capfan_pcapw_free(w);
            return NULL;
        }
        /* Compile for the ring's link type now so a bad expression fails at start-up with
         * libpcap's message rather than silently filtering everything. */
        capfan_bpf *f = capfan_bpf_compile(w->filter, o->linktype, 0);
        if (!f) {
            capfan_pcapw_free(w);
            return NULL;
        }
        w->filters[w->nfilters++] = (filter_slot){o->linktype, f};
    }
    return w;
}

/* Free everything the writer owns. */
void capfan_pcapw_free(capfan_pcapw *w) {
    if (!w) return;
    for (uint32_t i = 0; i < w->nfilters; i++) capfan_bpf_free(w->filters[i].bpf);
    free(w->filter);
    free(w->buf);
    free(w->recs);
    free(w->port_iface);
    free(w->iface_linktype);
    free(w);
}

/* New file: SHB (pcapng) or the pcap header, which may wait for the link type. */
int capfan_pcapw_begin_file(capfan_pcapw *w) {
    w->st.file_bytes = 0;
    w->st.file_packets = 0;
    w->st.interfaces = 0;
    w->nrecs = 0;
    if (w->o.format == CAPFAN_PCAPW_PCAPNG) {
        if (w->niface) memset(w->port_iface, 0xff, PORTS * sizeof *w->port_iface);
        w->niface = 0;
        return put_shb(w);
    }
    if (w->st.linktype != NO_LINKTYPE) return put_pcap_header(w, w->st.linktype);
    w->header_pending = 1;
    return 0;
}

/* Make a packet-less pcap file valid: its header with the fallback link type. */
void capfan_pcapw_end_file(capfan_pcapw *w) {
    if (w->header_pending) put_pcap_header(w, w->st.linktype != NO_LINKTYPE ? w->st.linktype : w->o.linktype);
}

/* Room for one more entry in the table of the last add's packets. */
static capfan_pcapw_rec *new_rec(capfan_pcapw *w) {
    if (w->nrecs == w->recs_cap) {
        uint32_t cap = w->recs_cap ? w->recs_cap * 2 : 1024;
        capfan_pcapw_rec *r = realloc(w->recs, cap * sizeof *r);
        if (!r) {
            capfan_set_error(CAPFAN_ESYS, "out of memory for the pcap record table");
            return NULL;
        }
        w->recs = r;
        w->recs_cap = cap;
    }
    return &w->recs[w->nrecs++];
}

/* Size of the record a packet of `caplen` stored bytes takes. */
static uint64_t record_len(const capfan_pcapw *w, uint32_t caplen) {
    return w->o.format == CAPFAN_PCAPW_PCAPNG ? NG_EPB_OVERHEAD + pad4(caplen) : PCAP_REC_HDR + caplen;
}

/* Append the record of one packet (room reserved, header/IDB already out). */
static void put_record(capfan_pcapw *w, uint32_t iface, uint64_t ts_ns, const uint8_t *pkt,
                       uint32_t caplen, uint32_t wirelen) {
    if (w->o.format == CAPFAN_PCAPW_PCAPNG) {
        uint32_t blen = NG_EPB_OVERHEAD + pad4(caplen);
        put32(w, NG_EPB);
        put32(w, blen);
        put32(w, iface);
        put32(w, (uint32_t)(ts_ns >> 32));
        put32(w, (uint32_t)ts_ns);
        put32(w, caplen);
        put32(w, wirelen);
        put_bytes(w, pkt, caplen);
        put_pad(w, pad4(caplen) - caplen);
        put32(w, blen);
        return;
    }
    uint32_t sec = (uint32_t)(ts_ns / 1000000000u), frac = (uint32_t)(ts_ns % 1000000000u);
    put32(w, sec);
    put32(w, w->o.format == CAPFAN_PCAPW_PCAP_US ? frac / 1000u : frac);
    put32(w, caplen);
    put32(w, wirelen);
    put_bytes(w, pkt, caplen);
}

/* Filter, cut and append the selected packets until done or the file is full. */
int64_t capfan_pcapw_add(capfan_pcapw *w, capfan_ring *r, const capfan_batch *b, uint32_t from) {
    capfan_ring_stats rs;
    capfan_ring_stats_get(r, &rs);
    const uint64_t arena_bytes = rs.arena_bytes;
    const uint32_t n = b->sel ? b->nsel : b->count;
    const int ng = w->o.format == CAPFAN_PCAPW_PCAPNG;
    w->nrecs = 0;
    uint32_t i = from;
    for (; i < n; i++) {
        const uint32_t idx = b->sel ? b->sel[i] : i;
        const capfan_desc *d = &b->desc[idx];
        /* A lossy reader may see a descriptor being rewritten: copy it once and bound-check
         * it so a garbage offset can never read outside the arena. */
        const capfan_desc dc = *d;
        const uint32_t port = dc.port;
        capfan_pcapw_rec *rec = new_rec(w);
        if (!rec) return -CAPFAN_ESYS;
        rec->idx = idx;
        rec->start = rec->end = w->len;
        uint64_t need_end = (uint64_t)dc.off + dc.caplen + ((dc.flags & CAPFAN_F_WIRELEN_SAT) ? 4u : 0u);
        if (need_end > arena_bytes) {
            rec->outcome = CAPFAN_PCAPW_BAD; /* only a torn descriptor looks like this */
            w->st.torn++;
            continue;
        }
        const uint8_t *pkt = b->arena + dc.off;
        const uint32_t wirelen = capfan_desc_wirelen(&dc, b->arena);
        const uint32_t linktype = capfan_ring_port_linktype(r, port);
        if (!ng) {
            if (w->st.linktype == NO_LINKTYPE) w->st.linktype = linktype;
            if (linktype != w->st.linktype) {
                rec->outcome = CAPFAN_PCAPW_SKIPPED;
                w->st.skipped_linktype++;
                continue;
            }
        }
        if (w->filter) {
            const capfan_bpf *f = filter_for(w, linktype);
            if (!f || capfan_bpf_match(f, pkt, dc.caplen, wirelen) <= 0) {
                rec->outcome = CAPFAN_PCAPW_FILTERED;
                w->st.filtered++;
                continue;
            }
        }
        const uint32_t caplen = dc.caplen < w->o.snaplen ? dc.caplen : w->o.snaplen;
        const uint64_t rlen = record_len(w, caplen);
        /* Full file: stop before this packet (a file always takes at least one packet, so a
         * packet bigger than rotate_size still gets written). The unfinished entry is dropped. */
        if (w->o.rotate_size && w->st.file_packets &&
            w->st.file_bytes + rlen + (w->header_pending ? PCAP_HDR_LEN : 0) > w->o.rotate_size) {
            w->nrecs--;
            break;
        }
        if (w->header_pending && put_pcap_header(w, w->st.linktype)) return -CAPFAN_ESYS;
        uint32_t iface = 0;
        if (ng && (iface = iface_of(w, port, linktype)) == NO_IFACE) return -CAPFAN_ESYS;
        if (reserve(w, rlen)) return -CAPFAN_ESYS;
        rec->start = w->len;
        put_record(w, iface, dc.ts_ns, pkt, caplen, wirelen);
        rec->end = w->len;
        rec->outcome = CAPFAN_PCAPW_WRITTEN;
        w->st.file_bytes += rlen;
        w->st.file_packets++;
        w->st.packets++;
        w->st.bytes += caplen;
    }
    return i;
}

/* Cut torn packets' records out, keeping any IDB between them; undo their counts. */
uint32_t capfan_pcapw_drop_torn(capfan_pcapw *w, uint32_t torn) {
    uint32_t k = 0, dropped = 0;
    uint64_t cut = 0;       /* bytes removed so far: later records shift down by this much */
    uint64_t keep_from = 0; /* start of the bytes after the last removed record */
    for (; k < w->nrecs && w->recs[k].idx < torn; k++) {
        capfan_pcapw_rec *rec = &w->recs[k];
        dropped++;
        switch (rec->outcome) {
        case CAPFAN_PCAPW_WRITTEN: {
            /* Move what lies between the previous cut and this record (an IDB, say) down. */
            uint64_t rlen = rec->end - rec->start;
            uint32_t caplen;
            memcpy(&caplen, w->buf + rec->start + (w->o.format == CAPFAN_PCAPW_PCAPNG ? 20 : 8), 4);
            if (cut && rec->start > keep_from)
                memmove(w->buf + keep_from - cut, w->buf + keep_from, rec->start - keep_from);
            cut += rlen;
            keep_from = rec->end;
            w->st.packets--;
            w->st.bytes -= caplen;
            w->st.file_bytes -= rlen;
            w->st.file_packets--;
            break;
        }
        case CAPFAN_PCAPW_FILTERED: w->st.filtered--; break;
        case CAPFAN_PCAPW_SKIPPED: w->st.skipped_linktype--; break;
        default: w->st.torn--; break; /* BAD: counted as torn at add time already */
        }
        rec->outcome = CAPFAN_PCAPW_BAD;
        rec->start = rec->end = 0;
    }
    if (cut) {
        memmove(w->buf + keep_from - cut, w->buf + keep_from, w->len - keep_from);
        w->len -= cut;
        for (uint32_t j = k; j < w->nrecs; j++) {
            if (w->recs[j].outcome != CAPFAN_PCAPW_WRITTEN) continue;
            w->recs[j].start -= cut;
            w->recs[j].end -= cut;
        }
    }
    w->st.torn += dropped;
    return dropped;
}

/* The last add's per-packet table. */
const capfan_pcapw_rec *capfan_pcapw_records(capfan_pcapw *w, uint32_t *n) {
    *n = w->nrecs;
    return w->recs;
}

/* The buffered bytes. */
const uint8_t *capfan_pcapw_buffer(capfan_pcapw *w, uint64_t *len) {
    *len = w->len;
    return w->buf;
}

/* Empty the buffer after the caller wrote it. */
void capfan_pcapw_clear(capfan_pcapw *w) {
    w->len = 0;
    w->nrecs = 0; /* their offsets pointed into the bytes just handed out */
}

/* Counters snapshot. */
void capfan_pcapw_get_stats(capfan_pcapw *w, capfan_pcapw_stats *out) { *out = w->st; }

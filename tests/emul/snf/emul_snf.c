/* capfan-owned emulation of the public SNF API for tests (not Myricom/CSPi code).
 *
 * Built by the tests into a shared library (cc -shared -fPIC) that exports the same symbols
 * as libsnf (API 8 as declared in capfan/_core/snf_abi.h) with the documented semantics, so
 * capfan's SNF backend can be exercised on any machine:
 *
 *   - traffic: the packets of the classic pcap file $CAPFAN_SNF_EMUL_PCAP form the "wire" of
 *     port 0 (interface name "snf0"); the pcap timestamps become the hardware timestamps.
 *     Or, with $CAPFAN_SNF_EMUL_IFACE=NAME, the wire is a live network interface (a veth in a
 *     test namespace): frames it receives (not the ones it sends) are read from an AF_PACKET
 *     socket opened at snf_start, with the kernel's receive time as the "hardware" timestamp.
 *     The wire is pumped lazily, on the receive calls of any ring, once at least one handle is
 *     started: every started handle (one per application id) gets every packet, spread over
 *     its rings by a symmetric flow hash (both directions of a flow land in one ring).
 *     $CAPFAN_SNF_EMUL_BURST=N moves at most N wire packets per receive call (default: all).
 *   - $CAPFAN_SNF_EMUL_DROP_EVERY=N: every N-th wire packet is dropped "by the NIC" before it
 *     reaches any ring (counted in nic_pkt_dropped, the same on every ring of the port).
 *   - each ring holds at most data-ring-size / num_rings bytes of packets (queued + borrowed,
 *     each packet occupying length_data bytes); a packet that does not fit is lost and counted
 *     in that ring's ring_pkt_overflow: a slow reader overflows.
 *   - borrow/return: packets from snf_ring_recv_many stay valid until snf_ring_return_many
 *     gives their data-ring bytes back (FIFO; the count must end on a packet boundary or the
 *     call fails with EINVAL); a returned packet's bytes are overwritten at once, so a reader
 *     that used a packet after returning it sees garbage. snf_ring_recv releases the previous
 *     packet the same way.
 *   - EAGAIN when nothing arrived within the timeout (0 = poll).
 *   - $CAPFAN_SNF_EMUL_API sets the API version the library speaks (default 0x0008);
 *     snf_init refuses a different major byte with EINVAL, as documented.
 *   - built with -DEMUL_NO_RECV_MANY the library lacks snf_ring_recv_many/return_many; with
 *     -DEMUL_NO_VERSION_API it lacks snf_version_api (only snf_init tells a mismatch).
 *   - SNF_NUM_RINGS, SNF_DATARING_SIZE, SNF_FLAGS and SNF_APP_ID are honoured like the real
 *     library documents (defaults when the open arguments ask for them; SNF_APP_ID overrides).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define F_RX_DUPLICATE 0x300
#define MAX_HANDLES 16
#define MAX_RINGS 64
#define POISON 0xA5

struct snf_recv_req {
    void *pkt_addr;
    uint32_t length;
    uint64_t timestamp;
    uint32_t portnum;
    uint32_t length_data;
    uint32_t hw_hash;
};
struct snf_ring_qinfo { uintptr_t q_avail, q_borrowed, q_free; };
struct snf_ring_stats {
    uint64_t nic_pkt_recv, nic_pkt_overflow, nic_pkt_bad, ring_pkt_recv, ring_pkt_overflow, nic_bytes_recv,
        snf_pkt_overflow, nic_pkt_dropped;
};
struct snf_ifaddrs {
    struct snf_ifaddrs *snf_ifa_next;
    const char *snf_ifa_name;
    uint32_t snf_ifa_portnum;
    int snf_ifa_maxrings;
    uint8_t snf_ifa_macaddr[6];
    uint8_t pad[2];
    int snf_ifa_maxinject;
    int snf_ifa_link_state;
    uint64_t snf_ifa_link_speed;
};
struct snf_rss_params;

typedef struct wpkt { const uint8_t *data; uint32_t len; uint64_t ts; } wpkt;
typedef struct epkt { uint8_t *data; uint32_t len, length_data, hash; uint64_t ts; } epkt;

struct snf_handle;
typedef struct snf_ring {
    struct snf_handle *h;
    int id, open;
    epkt *q;           /* [ret, rd) borrowed, [rd, wr) queued */
    size_t ret, rd, wr, cap;
    int held;          /* snf_ring_recv's packet is q[ret] (released by the next call) */
    uint64_t used, capacity;
    uint64_t ring_pkt_recv, ring_pkt_overflow;
} snf_ring;

typedef struct snf_handle {
    int in_use, started, num_rings, flags;
    int32_t app_id;
    uint32_t portnum;
    snf_ring rings[MAX_RINGS];
} snf_handle;

typedef struct snf_handle *snf_handle_t;
typedef struct snf_ring *snf_ring_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int initialised;
static int32_t pending_app_id = -1;
static snf_handle handles[MAX_HANDLES];
static uint8_t *wire_file;
static wpkt *wire;
static size_t wire_n, wire_pos;
static int wire_loaded;
static uint64_t nic_pkt_recv, nic_pkt_dropped, nic_bytes_recv;
static int wire_sock = -1;  /* live interface feed, -1 = pcap */

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 0) : dflt;
}

static uint16_t api_version(void) { return (uint16_t)env_long("CAPFAN_SNF_EMUL_API", 0x0008); }

/* ---------------------------------------------------------------- the wire (a pcap file) */
/* AF_PACKET socket on $CAPFAN_SNF_EMUL_IFACE with kernel receive timestamps (0, or -1 if it
 * cannot be opened: the emulated port then has no traffic). */
static int wire_open_iface(const char *name) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0) return -1;
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = (int)if_nametoindex(name)};
    int on = 1;
    if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof sll) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0) {
        close(fd);
        return -1;
    }
    wire_sock = fd;
    return 0;
}

static void wire_load(void) {
    if (wire_loaded) return;
    wire_loaded = 1;
    const char *iface = getenv("CAPFAN_SNF_EMUL_IFACE");
    if (iface && *iface) {
        wire_open_iface(iface);
        return;
    }
    const char *path = getenv("CAPFAN_SNF_EMUL_PCAP");
    if (!path) return;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    wire_file = malloc(size > 0 ? (size_t)size : 1);
    if (!wire_file || fread(wire_file, 1, (size_t)size, f) != (size_t)size || size < 24) {
        fclose(f);
        return;
    }
    fclose(f);
    uint32_t magic;
    memcpy(&magic, wire_file, 4);
    int swap = magic == 0xD4C3B2A1u || magic == 0x4D3CB2A1u;
    int nsec = magic == 0xA1B23C4Du || magic == 0x4D3CB2A1u;
    size_t off = 24, cap = 0;
    while (off + 16 <= (size_t)size) {
        uint32_t h[4];
        memcpy(h, wire_file + off, 16);
        if (swap) for (int i = 0; i < 4; i++) h[i] = __builtin_bswap32(h[i]);
        if (off + 16 + h[2] > (size_t)size) break;
        if (wire_n == cap) {
            cap = cap ? cap * 2 : 1024;
            wire = realloc(wire, cap * sizeof *wire);
        }
        wire[wire_n].data = wire_file + off + 16;
        wire[wire_n].len = h[2];
        wire[wire_n].ts = (uint64_t)h[0] * 1000000000ull + (nsec ? h[1] : (uint64_t)h[1] * 1000ull);
        wire_n++;
        off += 16 + h[2];
    }
}

/* Symmetric flow hash: the endpoints (address, port) are put in order before hashing. */
static uint32_t fnv(uint32_t h, const uint8_t *p, size_t n) {
    while (n--) h = (h ^ *p++) * 16777619u;
    return h;
}

static uint32_t flow_hash(const uint8_t *p, uint32_t len) {
    uint32_t h = 2166136261u;
    if (len < 14) return fnv(h, p, len);
    uint32_t off = 12;
    uint16_t et = (uint16_t)(p[off] << 8 | p[off + 1]);
    while ((et == 0x8100 || et == 0x88A8) && off + 6 <= len) {
        off += 4;
        et = (uint16_t)(p[off] << 8 | p[off + 1]);
    }
    off += 2;
    const uint8_t *a = NULL, *b = NULL;
    size_t alen = 0;
    uint32_t l4 = 0, proto = 0;
    int ports = 0;
    if (et == 0x0800 && off + 20 <= len) {
        uint32_t ihl = (p[off] & 0xF) * 4u;
        proto = p[off + 9];
        a = p + off + 12, b = p + off + 16, alen = 4;
        ports = (((p[off + 6] << 8) | p[off + 7]) & 0x3FFF) == 0; /* not a fragment */
        l4 = off + ihl;
    } else if (et == 0x86DD && off + 40 <= len) {
        proto = p[off + 6];
        a = p + off + 8, b = p + off + 24, alen = 16;
        ports = 1;
        l4 = off + 40;
    }
    if (!a) { /* not IP: the MAC pair, in order */
        int lt = memcmp(p, p + 6, 6) < 0;
        h = fnv(h, lt ? p : p + 6, 6);
        return fnv(h, lt ? p + 6 : p, 6);
    }
    uint16_t sp = 0, dp = 0;
    if (ports && (proto == 6 || proto == 17 || proto == 132) && l4 + 4 <= len) {
        sp = (uint16_t)(p[l4] << 8 | p[l4 + 1]);
        dp = (uint16_t)(p[l4 + 2] << 8 | p[l4 + 3]);
    }
    int c = memcmp(a, b, alen);
    int keep = c < 0 || (c == 0 && sp <= dp);
    h = fnv(h, keep ? a : b, alen);
    h = fnv(h, keep ? b : a, alen);
    uint16_t lo = keep ? sp : dp, hi = keep ? dp : sp;
    uint8_t pp[5] = {(uint8_t)(lo >> 8), (uint8_t)lo, (uint8_t)(hi >> 8), (uint8_t)hi, (uint8_t)proto};
    h = fnv(h, pp, 5);
    return h ^ (h >> 16);
}

/* ---------------------------------------------------------------- ring queues */
static void q_push(snf_ring *r, const wpkt *w, uint32_t hash) {
    uint32_t ld = (w->len + 8 + 4 + 15) & ~15u; /* NIC header + CRC, 16-byte aligned */
    if (!r->open || r->used + ld > r->capacity) {
        r->ring_pkt_overflow++;
        return;
    }
    if (r->wr == r->cap) {
        if (r->ret > 0) {
            memmove(r->q, r->q + r->ret, (r->wr - r->ret) * sizeof *r->q);
            r->rd -= r->ret, r->wr -= r->ret, r->ret = 0;
        }
        if (r->wr == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 256;
            r->q = realloc(r->q, r->cap * sizeof *r->q);
        }
    }
    epkt *e = &r->q[r->wr++];
    e->data = malloc(w->len ? w->len : 1);
    memcpy(e->data, w->data, w->len);
    e->len = w->len, e->length_data = ld, e->hash = hash, e->ts = w->ts;
    r->used += ld;
}

/* Give back the oldest borrowed packet: its bytes are overwritten, then freed. */
static void q_release_one(snf_ring *r) {
    epkt *e = &r->q[r->ret++];
    memset(e->data, POISON, e->len);
    free(e->data);
    e->data = NULL;
    r->used -= e->length_data;
}

/* One packet from the wire to every started application (its ring by flow hash). */
static void wire_deliver(const wpkt *w, uint64_t nth) {
    long drop_every = env_long("CAPFAN_SNF_EMUL_DROP_EVERY", 0);
    nic_pkt_recv++;
    nic_bytes_recv += (w->len + 8 + 4 + 15) & ~15u;
    if (drop_every > 0 && nth % (uint64_t)drop_every == 0) {
        nic_pkt_dropped++;
        return;
    }
    uint32_t hash = flow_hash(w->data, w->len);
    for (int i = 0; i < MAX_HANDLES; i++) {
        snf_handle *h = &handles[i];
        if (!h->in_use || !h->started) continue;
        if ((h->flags & F_RX_DUPLICATE) == F_RX_DUPLICATE) {
            for (int k = 0; k < h->num_rings; k++) q_push(&h->rings[k], w, hash);
        } else {
            q_push(&h->rings[hash % (uint32_t)h->num_rings], w, hash);
        }
    }
}

/* Frames the interface received since the last call (the ones it sent are skipped). */
static void pump_iface(long burst) {
    static uint8_t buf[65536];
    for (long moved = 0; burst <= 0 || moved < burst; moved++) {
        struct sockaddr_ll from;
        char ctl[256];
        struct iovec iov = {buf, sizeof buf};
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                           .msg_control = ctl, .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(wire_sock, &m, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) return;
        if (from.sll_pkttype == PACKET_OUTGOING) continue;
        wpkt w = {buf, (uint32_t)(n > (ssize_t)sizeof buf ? (ssize_t)sizeof buf : n), 0};
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                w.ts = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
            }
        wire_deliver(&w, ++wire_pos);
    }
}

static void pump(void) {
    int any = 0;
    for (int i = 0; i < MAX_HANDLES; i++) any |= handles[i].in_use && handles[i].started;
    if (!any) return;
    wire_load();
    long burst = env_long("CAPFAN_SNF_EMUL_BURST", 0);
    if (wire_sock >= 0) {
        pump_iface(burst);
        return;
    }
    for (long moved = 0; wire_pos < wire_n && (burst <= 0 || moved < burst); moved++) {
        const wpkt *w = &wire[wire_pos++];
        wire_deliver(w, wire_pos);
    }
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait (unlocked) until the ring has a queued packet or the timeout passes; called locked. */
static int wait_queued(snf_ring *r, int timeout_ms) {
    pump();
    long waited = 0;
    while (r->rd == r->wr) {
        if (timeout_ms >= 0 && waited >= timeout_ms) return EAGAIN;
        long step = timeout_ms < 0 ? 10 : (timeout_ms - waited < 10 ? timeout_ms - waited : 10);
        pthread_mutex_unlock(&mu);
        if (wire_sock >= 0) { /* a live wire: wake when a frame arrives */
            struct pollfd pfd = {.fd = wire_sock, .events = POLLIN};
            poll(&pfd, 1, (int)step);
        } else {
            sleep_ms(step);
        }
        pthread_mutex_lock(&mu);
        waited += step;
        if (!r->open) return EINVAL;
        pump();
    }
    return 0;
}

static void fill_req(const snf_ring *r, const epkt *e, struct snf_recv_req *req) {
    req->pkt_addr = e->data;
    req->length = e->len;
    req->timestamp = e->ts;
    req->portnum = r->h->portnum;
    req->length_data = e->length_data;
    req->hw_hash = e->hash;
}

static void fill_qinfo(const snf_ring *r, struct snf_ring_qinfo *qi) {
    if (!qi) return;
    uint64_t borrowed = 0;
    for (size_t i = r->ret; i < r->rd; i++) borrowed += r->q[i].length_data;
    qi->q_borrowed = borrowed;
    qi->q_avail = r->used - borrowed;
    qi->q_free = r->capacity - r->used;
}

/* ---------------------------------------------------------------- the API */
#ifndef EMUL_NO_VERSION_API
uint16_t snf_version_api(void) { return api_version(); }
#endif

int snf_init(uint16_t api) {
    if ((api & 0xff00) != (api_version() & 0xff00)) return EINVAL;
    pthread_mutex_lock(&mu);
    initialised = 1;
    pthread_mutex_unlock(&mu);
    return 0;
}

int snf_set_app_id(int32_t id) {
    if (!initialised || id == -1) return EINVAL;
    pending_app_id = id;
    return 0;
}

int snf_getifaddrs(struct snf_ifaddrs **out) {
    if (!initialised) return EINVAL;
    struct snf_ifaddrs *a = calloc(1, sizeof *a);
    if (!a) return ENOMEM;
    a->snf_ifa_name = "snf0";
    a->snf_ifa_portnum = 0;
    a->snf_ifa_maxrings = MAX_RINGS;
    memcpy(a->snf_ifa_macaddr, "\x00\x60\xdd\x00\x00\x01", 6);
    a->snf_ifa_link_state = 1;
    a->snf_ifa_link_speed = 10000000000ull;
    *out = a;
    return 0;
}

void snf_freeifaddrs(struct snf_ifaddrs *p) {
    while (p) {
        struct snf_ifaddrs *n = p->snf_ifa_next;
        free(p);
        p = n;
    }
}

int snf_open(uint32_t portnum, int num_rings, const struct snf_rss_params *rss, int64_t dataring_sz, int flags,
             snf_handle_t *out) {
    (void)rss; /* the emulation always uses its symmetric IP/port hash */
    if (!initialised) return EINVAL;
    if (portnum != 0) return ENODEV;
    if (num_rings <= 0) num_rings = (int)env_long("SNF_NUM_RINGS", 1);
    if (num_rings <= 0 || num_rings > MAX_RINGS) return EINVAL;
    if (dataring_sz <= 0) dataring_sz = env_long("SNF_DATARING_SIZE", 256);
    if (dataring_sz < 1048576) dataring_sz *= 1048576; /* small values are megabytes */
    if (dataring_sz > (1ll << 40)) return E2BIG;
    if (flags < 0) flags = (int)env_long("SNF_FLAGS", 0);
    int32_t app = getenv("SNF_APP_ID") ? (int32_t)env_long("SNF_APP_ID", -1) : pending_app_id;
    pthread_mutex_lock(&mu);
    snf_handle *h = NULL;
    for (int i = 0; i < MAX_HANDLES; i++) {
        if (!handles[i].in_use) {
            if (!h) h = &handles[i];
            continue;
        }
        if (handles[i].app_id == app) {
            pthread_mutex_unlock(&mu);
            return EBUSY; /* this application already has the port */
        }
        if ((handles[i].app_id == -1) != (app == -1)) {
            pthread_mutex_unlock(&mu);
            return EINVAL; /* mixing applications with and without ids is not allowed */
        }
    }
    if (!h) {
        pthread_mutex_unlock(&mu);
        return ENOMEM;
    }
    memset(h, 0, sizeof *h);
    h->in_use = 1;
    h->num_rings = num_rings;
    h->flags = flags;
    h->app_id = app;
    h->portnum = portnum;
    for (int k = 0; k < num_rings; k++) {
        h->rings[k].h = h;
        h->rings[k].id = k;
        h->rings[k].capacity = (uint64_t)dataring_sz / (uint64_t)num_rings;
    }
    pending_app_id = -1;
    pthread_mutex_unlock(&mu);
    *out = h;
    return 0;
}

int snf_ring_open_id(snf_handle_t h, int id, snf_ring_t *out) {
    pthread_mutex_lock(&mu);
    int rc = 0;
    if (id < 0) {
        for (id = 0; id < h->num_rings && h->rings[id].open; id++) {}
        if (id == h->num_rings) rc = EBUSY;
    } else if (id >= h->num_rings) {
        rc = EINVAL;
    } else if (h->rings[id].open) {
        rc = EBUSY;
    }
    if (!rc) {
        h->rings[id].open = 1;
        *out = &h->rings[id];
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

int snf_ring_open(snf_handle_t h, snf_ring_t *out) { return snf_ring_open_id(h, -1, out); }

int snf_start(snf_handle_t h) {
    pthread_mutex_lock(&mu);
    wire_load(); /* a live interface feed starts receiving now */
    int any = 0;
    for (int k = 0; k < h->num_rings; k++) any |= h->rings[k].open;
    if (any) h->started = 1;
    pthread_mutex_unlock(&mu);
    return any ? 0 : EINVAL;
}

int snf_stop(snf_handle_t h) {
    pthread_mutex_lock(&mu);
    h->started = 0;
    pthread_mutex_unlock(&mu);
    return 0;
}

int snf_ring_close(snf_ring_t r) {
    pthread_mutex_lock(&mu);
    while (r->ret < r->wr) q_release_one(r);
    free(r->q);
    r->q = NULL;
    r->ret = r->rd = r->wr = r->cap = 0;
    r->held = 0;
    r->used = 0;
    r->open = 0;
    pthread_mutex_unlock(&mu);
    return 0;
}

int snf_close(snf_handle_t h) {
    pthread_mutex_lock(&mu);
    for (int k = 0; k < h->num_rings; k++)
        if (h->rings[k].open) {
            pthread_mutex_unlock(&mu);
            return EBUSY;
        }
    h->in_use = 0;
    h->started = 0;
    pthread_mutex_unlock(&mu);
    return 0;
}

int snf_ring_recv(snf_ring_t r, int timeout_ms, struct snf_recv_req *req) {
    pthread_mutex_lock(&mu);
    if (!r->open) {
        pthread_mutex_unlock(&mu);
        return EINVAL;
    }
    if (r->held) { /* receiving again releases the previous packet */
        q_release_one(r);
        r->held = 0;
    }
    if (r->ret != r->rd) { /* borrowed packets still out: single receive is not allowed then */
        pthread_mutex_unlock(&mu);
        return EINVAL;
    }
    int rc = wait_queued(r, timeout_ms);
    if (!rc) {
        fill_req(r, &r->q[r->rd++], req);
        r->held = 1;
        r->ring_pkt_recv++;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

#ifndef EMUL_NO_RECV_MANY
int snf_ring_recv_many(snf_ring_t r, int timeout_ms, struct snf_recv_req *vec, int nreq_in, int *nreq_out,
                       struct snf_ring_qinfo *qinfo) {
    pthread_mutex_lock(&mu);
    if (!r->open || nreq_in <= 0) {
        pthread_mutex_unlock(&mu);
        return EINVAL;
    }
    if (r->held) {
        q_release_one(r);
        r->held = 0;
    }
    int rc = wait_queued(r, timeout_ms), n = 0;
    while (!rc && n < nreq_in && r->rd < r->wr) {
        fill_req(r, &r->q[r->rd++], &vec[n++]);
        r->ring_pkt_recv++;
    }
    *nreq_out = n;
    fill_qinfo(r, qinfo);
    pthread_mutex_unlock(&mu);
    return rc;
}

int snf_ring_return_many(snf_ring_t r, uint32_t data_qlen, struct snf_ring_qinfo *qinfo) {
    pthread_mutex_lock(&mu);
    int rc = 0;
    if (data_qlen == UINT32_MAX) {
        while (r->ret < r->rd) q_release_one(r);
    } else {
        uint64_t left = data_qlen;
        while (left && r->ret < r->rd && r->q[r->ret].length_data <= left) {
            left -= r->q[r->ret].length_data;
            q_release_one(r);
        }
        if (left) rc = EINVAL; /* not on a packet boundary, or more than was borrowed */
    }
    fill_qinfo(r, qinfo);
    pthread_mutex_unlock(&mu);
    return rc;
}
#endif

int snf_ring_recv_qinfo(snf_ring_t r, struct snf_ring_qinfo *qinfo) {
    pthread_mutex_lock(&mu);
    fill_qinfo(r, qinfo);
    pthread_mutex_unlock(&mu);
    return 0;
}

int snf_ring_getstats(snf_ring_t r, struct snf_ring_stats *st) {
    pthread_mutex_lock(&mu);
    memset(st, 0, sizeof *st);
    st->nic_pkt_recv = nic_pkt_recv;
    st->nic_pkt_dropped = nic_pkt_dropped;
    st->nic_bytes_recv = nic_bytes_recv;
    st->ring_pkt_recv = r->ring_pkt_recv;
    st->ring_pkt_overflow = r->ring_pkt_overflow;
    pthread_mutex_unlock(&mu);
    return 0;
}

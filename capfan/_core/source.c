/* Backend-independent part of capture sources: dispatch, the C receive loop, stubs for
 * backends this build lacks. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "source_impl.h"

#include <stdlib.h>
#include <time.h>

uint64_t capfan_now_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t capfan_now_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *capfan_source_kind(capfan_source *s) { return s->ops->kind; }

uint32_t capfan_source_linktype(capfan_source *s, uint32_t port) { return s->ops->linktype(s, port); }

int capfan_source_prepare(capfan_source *s, capfan_producer *p) {
    return s->ops->prepare ? s->ops->prepare(s, p) : 0;
}

int capfan_source_recv(capfan_source *s, capfan_producer *p, uint32_t max, int64_t timeout_ns) {
    return s->ops->recv(s, p, max, timeout_ns);
}

int64_t capfan_source_run(capfan_source *s, capfan_producer *p, uint64_t max_packets, int64_t duration_ns) {
    uint64_t end = duration_ns < 0 ? UINT64_MAX : capfan_now_monotonic_ns() + (uint64_t)duration_ns;
    int64_t total = 0;
    for (;;) {
        uint64_t now = capfan_now_monotonic_ns();
        if (now >= end || (max_packets && (uint64_t)total >= max_packets)) break;
        uint64_t left = max_packets ? max_packets - (uint64_t)total : 4096;
        int64_t wait = end == UINT64_MAX ? 100000000 : (int64_t)(end - now);
        int n = s->ops->recv(s, p, left < 4096 ? (uint32_t)left : 4096, wait < 100000000 ? wait : 100000000);
        if (n < 0) return total > 0 ? total : n; /* report what was published; the error comes next call */
        total += n;
    }
    return total;
}

int capfan_source_get_stats(capfan_source *s, capfan_source_stats *st) {
    if (s->ops->stats) s->ops->stats(s);
    *st = s->st;
    return 0;
}

void capfan_source_close(capfan_source *s) {
    if (s) s->ops->close(s);
}

const char *capfan_source_backends(void) {
    return ""
#ifdef CAPFAN_HAVE_PCAP_SOURCE
           " pcap"
#endif
#ifdef CAPFAN_HAVE_AFPACKET
           " afpacket"
#endif
#ifdef CAPFAN_HAVE_AFXDP
           " afxdp"
#endif
#ifdef CAPFAN_HAVE_SNF
           " snf"
#endif
#ifdef CAPFAN_HAVE_EFVI
           " efvi"
#endif
        ;
}

#ifndef CAPFAN_HAVE_PCAP_SOURCE
capfan_source *capfan_pcap_open(const char *path, const capfan_pcap_opts *o) {
    (void)path; (void)o;
    capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without the pcap replay backend");
    return NULL;
}
#endif

#ifndef CAPFAN_HAVE_AFPACKET
capfan_source *capfan_afpacket_open(const capfan_afpacket_opts *o) {
    (void)o;
    capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without the AF_PACKET backend");
    return NULL;
}
#endif

#ifndef CAPFAN_HAVE_AFXDP
capfan_source *capfan_afxdp_open(const capfan_afxdp_opts *o, capfan_producer *p) {
    (void)o; (void)p;
    capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without AF_XDP: install libxdp-dev and libbpf-dev, then reinstall capfan");
    return NULL;
}

int capfan_afxdp_cleanup(const char *ifname) {
    (void)ifname;
    return capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without AF_XDP");
}
#endif

#ifndef CAPFAN_HAVE_SNF
capfan_source *capfan_snf_open(const capfan_snf_opts *o) {
    (void)o;
    capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without the SNF backend");
    return NULL;
}

int capfan_snf_batched(capfan_source *s) {
    (void)s;
    return 0;
}
#endif

#ifndef CAPFAN_HAVE_EFVI
capfan_source *capfan_efvi_open(const capfan_efvi_opts *o, capfan_producer *p) {
    (void)o; (void)p;
    capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without ef_vi: install Onload (its etherfabric/*.h "
                     "headers and libciul), set CAPFAN_ONLOAD_PREFIX=DIR if it is not under /usr, then reinstall "
                     "capfan (pip install -e .); the build prints which backends it compiled");
    return NULL;
}

int capfan_efvi_counters_get(capfan_source *s, capfan_efvi_counters *out) {
    (void)s; (void)out;
    return capfan_set_error(CAPFAN_ENOTSUP, "this capfan was built without ef_vi");
}

int capfan_efvi_emulated(void) { return 0; }
#endif

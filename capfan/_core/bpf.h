/* capfan BPF filters in tcpdump syntax, compiled by libpcap.
 *
 * One compiled filter serves two uses: capfan_bpf_match() runs it in user space on a packet
 * (recorder, replay), capfan_bpf_fprog() hands the same instructions to the kernel
 * (SO_ATTACH_FILTER on an AF_PACKET socket). Built without libpcap, every entry point fails
 * with CAPFAN_ENOTSUP so the rest of the core (and the AF_PACKET backend) still builds.
 */
#ifndef CAPFAN_BPF_H
#define CAPFAN_BPF_H

#include <stdint.h>
#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

struct sock_fprog;
typedef struct capfan_bpf capfan_bpf;

#ifdef CAPFAN_HAVE_LIBPCAP

/* Compile a tcpdump filter for packets of a pcap link type; NULL + CAPFAN_EINVAL on a bad
 * expression (the message quotes libpcap's). snaplen 0 = 262144 (what a match returns). */
capfan_bpf *capfan_bpf_compile(const char *expr, uint32_t linktype, uint32_t snaplen);

/* Compile for live capture on a Linux interface: libpcap then emits the kernel's VLAN
 * ancillary loads (a VLAN tag is out of band by the time AF_PACKET filters run). Fails unless
 * libpcap sees the interface with `linktype`. The program is for the kernel only:
 * capfan_bpf_match() refuses it. */
capfan_bpf *capfan_bpf_compile_live(const char *ifname, const char *expr, uint32_t linktype, uint32_t snaplen);

/* 1 if the packet passes the filter, 0 if not, -CAPFAN_EINVAL for a kernel-only program. */
int capfan_bpf_match(const capfan_bpf *f, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen);

/* The instructions in the kernel's layout, for setsockopt(SO_ATTACH_FILTER). */
const struct sock_fprog *capfan_bpf_fprog(const capfan_bpf *f);

/* Number of BPF instructions (tests, diagnostics). */
uint32_t capfan_bpf_len(const capfan_bpf *f);

/* Free a filter (NULL is fine). */
void capfan_bpf_free(capfan_bpf *f);

#else /* no libpcap: same API, every compile fails with a clear message */

static inline capfan_bpf *capfan_bpf_unsupported(const char *expr) {
    capfan_set_error(CAPFAN_ENOTSUP, "BPF filter '%s' needs libpcap: install libpcap-dev, then reinstall capfan",
                     expr ? expr : "");
    return (capfan_bpf *)0;
}
static inline capfan_bpf *capfan_bpf_compile(const char *expr, uint32_t linktype, uint32_t snaplen) {
    (void)linktype; (void)snaplen;
    return capfan_bpf_unsupported(expr);
}
static inline capfan_bpf *capfan_bpf_compile_live(const char *ifname, const char *expr, uint32_t linktype,
                                                  uint32_t snaplen) {
    (void)ifname; (void)linktype; (void)snaplen;
    return capfan_bpf_unsupported(expr);
}
static inline int capfan_bpf_match(const capfan_bpf *f, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen) {
    (void)f; (void)pkt; (void)caplen; (void)wirelen;
    return -CAPFAN_ENOTSUP;
}
static inline const struct sock_fprog *capfan_bpf_fprog(const capfan_bpf *f) { (void)f; return (const struct sock_fprog *)0; }
static inline uint32_t capfan_bpf_len(const capfan_bpf *f) { (void)f; return 0; }
static inline void capfan_bpf_free(capfan_bpf *f) { (void)f; }

#endif

#ifdef __cplusplus
}
#endif
#endif

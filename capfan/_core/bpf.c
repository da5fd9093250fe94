/* BPF filters in tcpdump syntax: libpcap compiles, capfan runs the program in user space
 * (pcap_offline_filter) or hands it to the kernel (SO_ATTACH_FILTER). Only built when
 * libpcap's headers are found (CAPFAN_HAVE_LIBPCAP); bpf.h has the stubs otherwise. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bpf.h"

#include <linux/filter.h>
#include <pcap/pcap.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SNAPLEN 262144u /* what libpcap itself uses: a match never cuts a packet */
#define LINKTYPE_RAW 101u       /* pcap file link type for raw IP ... */
#define DLT_RAW_LINUX 12        /* ... which libpcap's compiler knows by its DLT value */

struct capfan_bpf {
    struct bpf_program prog; /* libpcap's program (struct bpf_insn == struct sock_filter) */
    struct sock_fprog fprog; /* the same instructions, as the kernel wants them */
    uint32_t linktype;
    int kernel_only;         /* uses ancillary loads pcap_offline_filter cannot evaluate */
};

_Static_assert(sizeof(struct bpf_insn) == sizeof(struct sock_filter), "BPF instruction layouts differ");

/* LINKTYPE_* (file/ring values) to the DLT_* value libpcap's compiler expects. */
static int linktype_to_dlt(uint32_t linktype) {
    return linktype == LINKTYPE_RAW ? DLT_RAW_LINUX : (int)linktype;
}

/* Compile on an already set-up handle and wrap the program; the handle is not kept. */
static capfan_bpf *compile_on(pcap_t *p, const char *expr, uint32_t linktype, int kernel_only) {
    capfan_bpf *f = calloc(1, sizeof *f);
    if (!f) {
        capfan_set_error(CAPFAN_ESYS, "out of memory compiling BPF filter '%s'", expr);
        return NULL;
    }
    if (pcap_compile(p, &f->prog, expr, 1, PCAP_NETMASK_UNKNOWN) != 0) {
        capfan_set_error(CAPFAN_EINVAL, "bad BPF filter '%s': %s", expr, pcap_geterr(p));
        free(f);
        return NULL;
    }
    f->fprog.len = (unsigned short)f->prog.bf_len;
    f->fprog.filter = (struct sock_filter *)f->prog.bf_insns;
    f->linktype = linktype;
    f->kernel_only = kernel_only;
    return f;
}

/* Filter for a link type, runnable in user space and in the kernel. */
capfan_bpf *capfan_bpf_compile(const char *expr, uint32_t linktype, uint32_t snaplen) {
    if (!expr) expr = "";
    pcap_t *p = pcap_open_dead(linktype_to_dlt(linktype), (int)(snaplen ? snaplen : DEFAULT_SNAPLEN));
    if (!p) {
        capfan_set_error(CAPFAN_ESYS, "libpcap could not set up a compiler for link type %u", linktype);
        return NULL;
    }
    capfan_bpf *f = compile_on(p, expr, linktype, 0);
    pcap_close(p);
    return f;
}

/* Activate a throw-away libpcap handle on the interface so the compiler knows it targets the
 * Linux kernel (VLAN tags via SKF_AD_VLAN_TAG*); NULL with the reason on failure. */
static pcap_t *live_handle(const char *ifname, uint32_t linktype, uint32_t snaplen) {
    char err[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = pcap_create(ifname, err);
    if (!p) {
        capfan_set_error(CAPFAN_ESYS, "libpcap cannot open %s: %s", ifname, err);
        return NULL;
    }
    pcap_set_snaplen(p, (int)(snaplen ? snaplen : DEFAULT_SNAPLEN));
    pcap_set_immediate_mode(p, 1); /* no block timer for a handle that never reads */
    int rc = pcap_activate(p);
    if (rc < 0) {
        capfan_set_error(rc == PCAP_ERROR_PERM_DENIED ? CAPFAN_EPERM : CAPFAN_ESYS,
                         "libpcap cannot activate %s: %s", ifname, pcap_geterr(p));
        pcap_close(p);
        return NULL;
    }
    if (pcap_datalink(p) != linktype_to_dlt(linktype)) {
        /* e.g. cooked (SLL) mode: its filter offsets would not fit the frames capfan reads */
        capfan_set_error(CAPFAN_ENOTSUP, "libpcap sees %s with link type %d, not %u", ifname,
                         pcap_datalink(p), linktype);
        pcap_close(p);
        return NULL;
    }
    return p;
}

/* Filter for the Linux kernel on this interface (VLAN via ancillary loads). */
capfan_bpf *capfan_bpf_compile_live(const char *ifname, const char *expr, uint32_t linktype, uint32_t snaplen) {
    if (!expr) expr = "";
    pcap_t *p = live_handle(ifname, linktype, snaplen);
    if (!p) return NULL;
    capfan_bpf *f = compile_on(p, expr, linktype, 1);
    pcap_close(p);
    return f;
}

/* User-space verdict on one packet. */
int capfan_bpf_match(const capfan_bpf *f, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen) {
    if (f->kernel_only)
        return capfan_set_error(CAPFAN_EINVAL, "this BPF program was compiled for the kernel only");
    struct pcap_pkthdr h = {.caplen = caplen, .len = wirelen < caplen ? caplen : wirelen};
    return pcap_offline_filter(&f->prog, &h, pkt) != 0;
}

/* The program for SO_ATTACH_FILTER (valid while f lives). */
const struct sock_fprog *capfan_bpf_fprog(const capfan_bpf *f) { return &f->fprog; }

/* Instruction count. */
uint32_t capfan_bpf_len(const capfan_bpf *f) { return f->prog.bf_len; }

/* Free the program and the wrapper. */
void capfan_bpf_free(capfan_bpf *f) {
    if (!f) return;
    pcap_freecode(&f->prog);
    free(f);
}

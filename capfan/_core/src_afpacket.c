/* AF_PACKET capture backend: TPACKET_V3 RX ring, optional PACKET_FANOUT, kernel BPF, hardware
 * timestamps. Each packet is copied once from the kernel's block into the capfan ring.
 *
 * Defaults (why): 1 MiB blocks x 64 = 64 MiB of kernel ring per socket, ~50 ms of a saturated
 * 10 Gb/s link, enough to ride out a slow consumer's hiccup without pinning hundreds of MiB per
 * queue; 1 MiB blocks hold ~700 full-size frames, so returning one block frees room often;
 * blocks are handed over at the latest after 10 ms so quiet links still deliver promptly.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "source_impl.h"
#include "bpf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/net_tstamp.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BLOCK_SIZE (1u << 20)
#define DEFAULT_BLOCK_COUNT 64u
#define DEFAULT_BLOCK_TIMEOUT_MS 10u
#define FRAME_SIZE 2048u            /* TPACKET_V3 packs packets; the kernel only checks geometry */
#define MAX_RING_BYTES (16ull << 30)
#define KERNEL_SNAPLEN 262144u      /* what a filter match returns: never cut a packet */
#define LINKTYPE_ETHERNET 1u
#define LINKTYPE_RAW 101u
#define LINKTYPE_IEEE802_11_RADIOTAP 127u
#define VLAN_TAG_LEN 4u
#define MAC_ADDRS_LEN 12u           /* the tag goes after destination and source MAC */
#define SCRATCH_LEN (CAPFAN_MAX_CAPLEN + VLAN_TAG_LEN)

#ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
#define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000 /* 6.2+; older uapi headers lack it */
#endif

typedef struct afp_source {
    capfan_source base;
    int fd;
    char ifname[IFNAMSIZ];
    uint8_t *map;
    size_t map_len;
    uint32_t block_size, block_count;
    uint32_t cur_block;             /* block the walk is in (or waits for) */
    uint32_t pkts_left;             /* packets of cur_block not taken yet; 0 = not opened */
    uint8_t *next_pkt;              /* next tpacket3_hdr in cur_block */
    uint32_t linktype;
    uint16_t port;
    capfan_bpf *ufilter;            /* user-space filter when the kernel cannot run the program */
    uint8_t *scratch;               /* frame rebuilt with its VLAN tag for the user-space filter */
    capfan_producer *prod;          /* producer prepare() saw (to learn the ring's snaplen) */
    uint32_t ring_snaplen;
} afp_source;

/* ------------------------------------------------------------------ set-up helpers */

/* Message for a failed privileged call: missing CAP_NET_RAW is the common case. */
static int sys_fail(afp_source *s, int err, const char *what) {
    if (err == EPERM || err == EACCES)
        return capfan_set_error(CAPFAN_EPERM, "AF_PACKET capture on %s needs CAP_NET_RAW (run as root or grant it)",
                                s->ifname);
    return capfan_set_error(CAPFAN_ESYS, "AF_PACKET %s on %s failed: %s", what, s->ifname, strerror(err));
}

/* pcap link type of what a SOCK_RAW packet socket reads on this kind of device. */
static int linktype_of(afp_source *s, int arphrd) {
    switch (arphrd) {
    case ARPHRD_ETHER:
    case ARPHRD_LOOPBACK: /* lo carries zeroed Ethernet headers */
        return LINKTYPE_ETHERNET;
    case ARPHRD_NONE:     /* tun, wireguard: frames start with the IP header */
        return LINKTYPE_RAW;
    case ARPHRD_IEEE80211_RADIOTAP:
        return LINKTYPE_IEEE802_11_RADIOTAP;
    default:
        return capfan_set_error(CAPFAN_ENOTSUP,
                                "AF_PACKET capture on %s: device type (ARPHRD %d) is not supported; "
                                "capfan captures Ethernet, loopback, raw-IP (tun) and radiotap devices",
                                s->ifname, arphrd);
    }
}

/* Check that the interface exists and is up, and learn its link type. */
static int probe_interface(afp_source *s, int *ifindex) {
    *ifindex = (int)if_nametoindex(s->ifname);
    if (*ifindex == 0)
        return capfan_set_error(CAPFAN_EINVAL, "no network interface named '%s' in this network namespace "
                                "(see: ip link)", s->ifname);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, s->ifname, strlen(s->ifname));
    if (ioctl(s->fd, SIOCGIFHWADDR, &ifr) != 0) return sys_fail(s, errno, "SIOCGIFHWADDR");
    int lt = linktype_of(s, ifr.ifr_hwaddr.sa_family);
    if (lt < 0) return lt;
    s->linktype = (uint32_t)lt;
    if (ioctl(s->fd, SIOCGIFFLAGS, &ifr) != 0) return sys_fail(s, errno, "SIOCGIFFLAGS");
    if (!(ifr.ifr_flags & IFF_UP))
        /* a bound socket on a down device never runs, so fanout and reads would fail later */
        return capfan_set_error(CAPFAN_EINVAL, "interface %s is down (bring it up: ip link set %s up)",
                                s->ifname, s->ifname);
    return 0;
}

/* Kernel filter when possible; else a user-space one (libpcap could not target this device). */
static int attach_filter(afp_source *s, const char *expr) {
    /* CAPFAN_AFPACKET_USER_BPF=1 forces the user-space path (tests, comparing both paths) */
    const char *env = getenv("CAPFAN_AFPACKET_USER_BPF");
    int force_user = env && env[0] == '1';
    capfan_bpf *k = force_user ? NULL : capfan_bpf_compile_live(s->ifname, expr, s->linktype, KERNEL_SNAPLEN);
    if (k) {
        int rc = setsockopt(s->fd, SOL_SOCKET, SO_ATTACH_FILTER, capfan_bpf_fprog(k), sizeof(struct sock_fprog));
        int err = errno;
        capfan_bpf_free(k);
        return rc == 0 ? 0 : sys_fail(s, err, "SO_ATTACH_FILTER");
    }
    if (!force_user && capfan_last_error_code() == CAPFAN_EINVAL) return -CAPFAN_EINVAL; /* bad expression */
    /* Compile for the link type instead (without libpcap this fails with ENOTSUP and says so)
     * and filter in user space on frames with their VLAN tag put back, which is what the
     * expression describes. */
    s->ufilter = capfan_bpf_compile(expr, s->linktype, KERNEL_SNAPLEN);
    if (!s->ufilter) return -capfan_last_error_code();
    s->scratch = malloc(SCRATCH_LEN);
    if (!s->scratch) return capfan_set_error(CAPFAN_ESYS, "out of memory");
    return 0;
}

/* Ask the NIC for RX hardware timestamps; drivers that refuse (veth, most virtual devices)
 * leave software timestamps, flagged per packet by tp_status. */
static void enable_hw_timestamps(afp_source *s) {
    struct hwtstamp_config cfg = {.flags = 0, .tx_type = HWTSTAMP_TX_OFF, .rx_filter = HWTSTAMP_FILTER_ALL};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, s->ifname, strlen(s->ifname));
    ifr.ifr_data = (char *)&cfg;
    (void)ioctl(s->fd, SIOCSHWTSTAMP, &ifr); /* failure = no hardware stamps: a fallback, not an error */
    int req = SOF_TIMESTAMPING_RAW_HARDWARE;
    (void)setsockopt(s->fd, SOL_PACKET, PACKET_TIMESTAMP, &req, sizeof req);
}

/* TPACKET_V3 RX ring of block_count blocks, mapped into our address space. */
static int setup_ring(afp_source *s, uint32_t timeout_ms) {
    struct tpacket_req3 req = {
        .tp_block_size = s->block_size,
        .tp_block_nr = s->block_count,
        .tp_frame_size = FRAME_SIZE,
        .tp_frame_nr = (s->block_size / FRAME_SIZE) * s->block_count,
        .tp_retire_blk_tov = timeout_ms,
    };
    if (setsockopt(s->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) != 0) {
        int err = errno;
        if (err == ENOMEM)
            return capfan_set_error(CAPFAN_ESYS, "AF_PACKET on %s: the kernel could not allocate %u blocks of %u bytes "
                                    "(lower block_size/block_count)", s->ifname, s->block_count, s->block_size);
        return sys_fail(s, err, "PACKET_RX_RING");
    }
    s->map_len = (size_t)s->block_size * s->block_count;
    void *m = mmap(NULL, s->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, s->fd, 0);
    if (m == MAP_FAILED) {
        s->map_len = 0;
        return sys_fail(s, errno, "mmap of the RX ring");
    }
    s->map = m;
    return 0;
}

/* Start receiving: from bind on, packets of this interface (only) enter the ring. */
static int bind_interface(afp_source *s, int ifindex) {
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = ifindex};
    if (bind(s->fd, (struct sockaddr *)&sll, sizeof sll) != 0) return sys_fail(s, errno, "bind");
    return 0;
}

/* Join fanout group `group`: the kernel hands each packet to exactly one member. */
static int join_fanout(afp_source *s, int mode, uint16_t flags, uint16_t group) {
    /* The group's hook replaces each member's, so the socket's PACKET_IGNORE_OUTGOING does not
     * apply inside a group; ask the group (6.2+), recv() still skips outgoing packets otherwise. */
    int arg = (int)group | (int)((unsigned)(mode | flags | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16);
    if (setsockopt(s->fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) == 0) return 0;
    arg = (int)group | (int)((unsigned)(mode | flags) << 16);
    if (setsockopt(s->fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) == 0) return 0;
    int err = errno;
    if (err == EINVAL)
        return capfan_set_error(CAPFAN_EINVAL, "cannot join AF_PACKET fanout group %u on %s: the group exists with "
                                "another mode or flags, or on another interface (pick another group id)",
                                group, s->ifname);
    if (err == ENOSPC)
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET fanout group %u on %s is full", group, s->ifname);
    return sys_fail(s, err, "PACKET_FANOUT");
}

/* Receive frames not addressed to us too (dropped automatically when the socket closes). */
static int set_promisc(afp_source *s, int ifindex) {
    struct packet_mreq mr = {.mr_ifindex = ifindex, .mr_type = PACKET_MR_PROMISC};
    if (setsockopt(s->fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) != 0)
        return sys_fail(s, errno, "PACKET_ADD_MEMBERSHIP (promiscuous mode)");
    return 0;
}

/* Check sizes before asking the kernel, so the message names the option. */
static int check_geometry(afp_source *s) {
    long page = sysconf(_SC_PAGESIZE);
    if (s->block_size < (uint32_t)page || (s->block_size & (s->block_size - 1)) || s->block_size % (uint32_t)page)
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET block_size %u must be a power of two and at least the page "
                                "size (%ld)", s->block_size, page);
    if (s->block_count < 2)
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET block_count %u must be at least 2", s->block_count);
    if ((uint64_t)s->block_size * s->block_count > MAX_RING_BYTES)
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET ring of %u x %u bytes exceeds %llu GiB", s->block_count,
                                s->block_size, MAX_RING_BYTES >> 30);
    return 0;
}

/* ------------------------------------------------------------------ receive */

/* Block descriptor i of the mapped ring. */
static inline struct tpacket_block_desc *block_at(afp_source *s, uint32_t i) {
    return (struct tpacket_block_desc *)(s->map + (size_t)i * s->block_size);
}

/* The kernel handed cur_block to us (acquire: its packets are visible). */
static inline int block_ready(afp_source *s) {
    return (__atomic_load_n(&block_at(s, s->cur_block)->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) != 0;
}

/* Give cur_block back to the kernel and move to the next one. */
static void release_block(afp_source *s) {
    __atomic_store_n(&block_at(s, s->cur_block)->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    s->cur_block = (s->cur_block + 1) % s->block_count;
    s->pkts_left = 0;
    s->next_pkt = NULL;
}

/* Wait up to timeout_ns for a block; 0 on timeout or signal, -error if the socket failed. */
static int wait_block(afp_source *s, int64_t timeout_ns) {
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    int n = ppoll(&pfd, 1, timeout_ns < 0 ? NULL : &ts, NULL);
    if (n < 0) return errno == EINTR ? 0 : sys_fail(s, errno, "poll");
    if (n > 0 && (pfd.revents & (POLLERR | POLLNVAL))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == ENETDOWN || err == ENODEV)
            return capfan_set_error(CAPFAN_ESYS, "interface %s went down or was removed", s->ifname);
        if (err) return sys_fail(s, err, "receive");
    }
    return 0;
}

/* Bytes of frame `f` as they were on the wire into `dst`: the kernel moved a VLAN tag out of
 * the frame into tpacket3_hdr, so it is put back after the MAC addresses (as libpcap does). */
static uint32_t copy_frame(uint8_t *dst, uint32_t room, const uint8_t *f, uint32_t caplen, const uint8_t *tag) {
    if (!tag) {
        uint32_t n = caplen < room ? caplen : room;
        memcpy(dst, f, n);
        return n;
    }
    uint8_t full[MAC_ADDRS_LEN + VLAN_TAG_LEN];
    memcpy(full, f, MAC_ADDRS_LEN);
    memcpy(full + MAC_ADDRS_LEN, tag, VLAN_TAG_LEN);
    uint32_t head = room < sizeof full ? room : (uint32_t)sizeof full;
    memcpy(dst, full, head);
    uint32_t rest = caplen - MAC_ADDRS_LEN, space = room - head;
    if (rest > space) rest = space;
    memcpy(dst + head, f + MAC_ADDRS_LEN, rest);
    return head + rest;
}

/* The 4 tag bytes to re-insert, or NULL when the frame had no (stripped) tag. */
static const uint8_t *vlan_tag(afp_source *s, const struct tpacket3_hdr *h, uint8_t tag[VLAN_TAG_LEN]) {
    if (!(h->tp_status & TP_STATUS_VLAN_VALID) || s->linktype != LINKTYPE_ETHERNET || h->tp_snaplen < MAC_ADDRS_LEN)
        return NULL;
    uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->hv1.tp_vlan_tpid : ETH_P_8021Q;
    uint16_t tci = h->hv1.tp_vlan_tci;
    tag[0] = (uint8_t)(tpid >> 8); tag[1] = (uint8_t)tpid;
    tag[2] = (uint8_t)(tci >> 8); tag[3] = (uint8_t)tci;
    return tag;
}

/* Copy one packet into the ring (or count why not). Returns 1 if published. */
static int take_packet(afp_source *s, capfan_producer *p, struct tpacket3_hdr *h) {
    const struct sockaddr_ll *sll = (const void *)((uint8_t *)h + TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
    if (sll->sll_pkttype == PACKET_OUTGOING) return 0; /* we capture what the interface receives */
    const uint8_t *frame = (uint8_t *)h + h->tp_mac;
    uint8_t tagbuf[VLAN_TAG_LEN];
    const uint8_t *tag = vlan_tag(s, h, tagbuf);
    uint32_t extra = tag ? VLAN_TAG_LEN : 0;
    uint32_t caplen = h->tp_snaplen + extra, wirelen = h->tp_len + extra;
    if (s->ufilter) {
        const uint8_t *whole = frame;
        uint32_t seen = caplen;
        if (tag) {
            seen = copy_frame(s->scratch, SCRATCH_LEN, frame, h->tp_snaplen, tag);
            whole = s->scratch;
        }
        if (capfan_bpf_match(s->ufilter, whole, seen, wirelen) <= 0) return 0;
    }
    s->base.st.packets++;
    s->base.st.bytes += wirelen;
    uint16_t flags = 0;
    if (h->tp_status & TP_STATUS_TS_RAW_HARDWARE) {
        flags |= CAPFAN_F_HWTS;
        s->base.st.hw_timestamps++;
    }
    uint8_t *dst = capfan_producer_reserve(p, caplen, wirelen, -1);
    if (!dst) {
        s->base.st.ring_drops++;
        return 0;
    }
    uint32_t room = caplen < s->ring_snaplen ? caplen : s->ring_snaplen;
    uint32_t stored = copy_frame(dst, room, frame, h->tp_snaplen, tag);
    if (stored < wirelen) s->base.st.truncated++;
    uint64_t ts = (uint64_t)h->tp_sec * 1000000000ull + h->tp_nsec;
    capfan_producer_commit(p, ts, stored, wirelen, s->port, flags);
    s->base.st.published++;
    return 1;
}

/* Open cur_block for walking if the kernel handed it over; 1 if packets are waiting. */
static int open_block(afp_source *s) {
    if (s->pkts_left) return 1;
    if (!block_ready(s)) return 0;
    struct tpacket_block_desc *bd = block_at(s, s->cur_block);
    if (bd->hdr.bh1.num_pkts == 0) { /* nothing in it: just give it back */
        release_block(s);
        return open_block(s);
    }
    s->pkts_left = bd->hdr.bh1.num_pkts;
    s->next_pkt = (uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt;
    return 1;
}

/* Walk ready blocks taking up to max packets; blocks go back to the kernel as soon as done. */
static int walk_blocks(afp_source *s, capfan_producer *p, uint32_t max) {
    uint32_t taken = 0;
    int published = 0;
    while (taken < max && open_block(s)) {
        while (s->pkts_left && taken < max) {
            struct tpacket3_hdr *h = (struct tpacket3_hdr *)s->next_pkt;
            published += take_packet(s, p, h);
            taken++;
            s->next_pkt += h->tp_next_offset;
            s->pkts_left--;
        }
        if (!s->pkts_left) {
            release_block(s);
            capfan_producer_flush(p); /* consumers see a block's packets without waiting for the batch */
        }
    }
    return published;
}

/* Learn the ring's snaplen and declare our link type on our port. */
static int afp_prepare(capfan_source *base, capfan_producer *p) {
    afp_source *s = (afp_source *)base;
    capfan_ring_stats rs;
    capfan_ring_stats_get(capfan_producer_ring(p), &rs);
    int rc = capfan_producer_set_linktype(p, s->port, s->linktype);
    if (rc != 0) return rc;
    s->ring_snaplen = rs.snaplen;
    s->prod = p;
    return 0;
}

/* Wait (poll) only if no block is ready, then copy up to max packets; one flush at the end. */
static int afp_recv(capfan_source *base, capfan_producer *p, uint32_t max, int64_t timeout_ns) {
    afp_source *s = (afp_source *)base;
    if (s->prod != p) {
        int rc = afp_prepare(base, p);
        if (rc != 0) return rc;
    }
    if (!open_block(s) && timeout_ns != 0) {
        int rc = wait_block(s, timeout_ns);
        if (rc < 0) return rc;
    }
    int published = walk_blocks(s, p, max ? max : UINT32_MAX);
    capfan_producer_flush(p);
    return published;
}

/* PACKET_STATISTICS resets on every read: add to what we have. */
static void afp_stats(capfan_source *base) {
    afp_source *s = (afp_source *)base;
    struct tpacket_stats_v3 st;
    socklen_t len = sizeof st;
    if (getsockopt(s->fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) != 0) return;
    s->base.st.kernel_drops += st.tp_drops;
    s->base.st.kernel_freezes += st.tp_freeze_q_cnt;
}

/* One link type for every port: the interface's. */
static uint32_t afp_linktype(capfan_source *base, uint32_t port) {
    (void)port;
    return ((afp_source *)base)->linktype;
}

/* Unmap and close; the kernel drops promiscuous mode and the fanout membership with the socket. */
static void afp_close(capfan_source *base) {
    afp_source *s = (afp_source *)base;
    if (s->map) munmap(s->map, s->map_len);
    if (s->fd >= 0) close(s->fd);
    capfan_bpf_free(s->ufilter);
    free(s->scratch);
    free(s);
}

static const capfan_source_ops afp_ops = {
    .kind = "afpacket",
    .linktype = afp_linktype,
    .prepare = afp_prepare,
    .recv = afp_recv,
    .stats = afp_stats,
    .close = afp_close,
};

/* ------------------------------------------------------------------ open */

/* Options into the source, defaults applied. */
static int init_options(afp_source *s, const capfan_afpacket_opts *o) {
    if (!o->ifname || !o->ifname[0])
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET capture needs an interface name");
    if (strlen(o->ifname) >= IFNAMSIZ)
        return capfan_set_error(CAPFAN_EINVAL, "interface name '%s' is longer than %d characters", o->ifname,
                                IFNAMSIZ - 1);
    strcpy(s->ifname, o->ifname);
    s->block_size = o->block_size ? o->block_size : DEFAULT_BLOCK_SIZE;
    s->block_count = o->block_count ? o->block_count : DEFAULT_BLOCK_COUNT;
    s->port = o->port;
    if (o->fanout_mode > PACKET_FANOUT_QM || o->fanout_mode < -1)
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET fanout mode %d is not one of -1 (none) .. 5 (qm)",
                                o->fanout_mode);
    if (o->fanout_flags & ~(PACKET_FANOUT_FLAG_DEFRAG | PACKET_FANOUT_FLAG_ROLLOVER))
        return capfan_set_error(CAPFAN_EINVAL, "AF_PACKET fanout flags 0x%x: only defrag (0x8000) and rollover "
                                "(0x1000) are supported", o->fanout_flags);
    return check_geometry(s);
}

/* Everything after the socket exists, in the order that keeps stray packets out: the filter
 * and ring exist before bind() starts delivery, promisc comes last. */
static int configure(afp_source *s, const capfan_afpacket_opts *o) {
    int ifindex = 0, rc, v = TPACKET_V3, one = 1;
    if ((rc = probe_interface(s, &ifindex)) != 0) return rc;
    if (setsockopt(s->fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) != 0) return sys_fail(s, errno, "TPACKET_V3");
    (void)setsockopt(s->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one); /* 4.20+; recv skips them anyway */
    if (o->bpf && o->bpf[0] && (rc = attach_filter(s, o->bpf)) != 0) return rc;
    if (o->hw_timestamps) enable_hw_timestamps(s);
    if ((rc = setup_ring(s, o->block_timeout_ms ? o->block_timeout_ms : DEFAULT_BLOCK_TIMEOUT_MS)) != 0) return rc;
    if ((rc = bind_interface(s, ifindex)) != 0) return rc;
    if (o->fanout_mode >= 0 && (rc = join_fanout(s, o->fanout_mode, o->fanout_flags, o->fanout_group)) != 0) return rc;
    if (o->promisc && (rc = set_promisc(s, ifindex)) != 0) return rc;
    return 0;
}

/* Open an AF_PACKET TPACKET_V3 capture of o->ifname (see source.h); NULL + message on failure. */
capfan_source *capfan_afpacket_open(const capfan_afpacket_opts *o) {
    afp_source *s = calloc(1, sizeof *s);
    if (!s) {
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    s->base.ops = &afp_ops;
    s->fd = -1;
    if (init_options(s, o) != 0) {
        afp_close(&s->base);
        return NULL;
    }
    /* protocol 0: the socket receives nothing until bind() names the interface and protocol */
    s->fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (s->fd < 0 || configure(s, o) != 0) {
        if (s->fd < 0) sys_fail(s, errno, "socket");
        afp_close(&s->base);
        return NULL;
    }
    return &s->base;
}

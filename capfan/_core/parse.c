/* Outermost-header parser and symmetric flow hash; with options (capfan_parse_ex) it also
 * skips MPLS and looks inside GRE/ERSPAN/VXLAN/Geneve for the flow meter. Bounds-checked
 * against caplen everywhere: this runs on untrusted traffic.
 *
 * Two kinds of verdict: `flags` (CAPFAN_F_*, stored in ring descriptors; kept exactly as the
 * ring has always set them) and `bad` (why the flow meter cannot meter the frame). */
#include "parse.h"
#include "ring.h"

#include <stddef.h>
#include <string.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_QINQ_OLD 0x9100
#define ETH_P_MPLS_UC 0x8847
#define ETH_P_MPLS_MC 0x8848
#define ETH_P_TEB 0x6558        /* transparent Ethernet bridging (GRE, Geneve) */
#define ETH_P_ERSPAN 0x88BE     /* ERSPAN type I (no sequence bit) and II */
#define ETH_P_ERSPAN3 0x22EB
#define UDP_VXLAN 4789
#define UDP_GENEVE 6081
#define IPV6_EXT_MAX 8  /* extension headers skipped before giving up */
#define MPLS_MAX 16     /* labels skipped before giving up */
#define DECAP_DEPTH 3   /* tunnels opened inside one another at most */

/* One parse: the frame, the options, and how deep in tunnels we are. */
typedef struct parser {
    const uint8_t *pkt;
    uint32_t caplen;
    uint32_t opts;
    uint32_t depth;
} parser;

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Keep the first reason: later ones are consequences. */
static inline void set_bad(capfan_pkt_info *in, uint8_t why) {
    if (!in->bad) in->bad = why;
}

static int parse_ether(parser *P, uint32_t off, int keep_vlans, capfan_pkt_info *in);
static int parse_ethertype(parser *P, uint32_t off, uint16_t et, capfan_pkt_info *in);
static int parse_by_version(parser *P, uint32_t off, capfan_pkt_info *in);

enum inner_kind { INNER_IP, INNER_ETHER, INNER_ETHERTYPE };

/* Re-parse `info` from the packet inside a tunnel starting at `off`. A non-IP inner packet
 * leaves the outer flow as it was; a malformed one is bad[TUNNEL]. */
static void decap(parser *P, uint32_t off, int kind, uint16_t et, capfan_pkt_info *in) {
    if (P->depth >= DECAP_DEPTH || (in->flags & CAPFAN_F_FRAGMENT)) return;
    capfan_pkt_info outer = *in;
    memset(in, 0, offsetof(capfan_pkt_info, src));
    in->pflags = (uint16_t)(outer.pflags & ~CAPFAN_P_TUNNEL);
    P->depth++;
    if (kind == INNER_ETHER) parse_ether(P, off, 1, in);
    else if (kind == INNER_ETHERTYPE) parse_ethertype(P, off, et, in);
    else parse_by_version(P, off, in);
    P->depth--;
    in->vlan = outer.vlan;
    in->inner_vlan = outer.inner_vlan;
    if (in->bad) {
        in->bad = CAPFAN_BAD_TUNNEL;
        return;
    }
    if (!(in->flags & CAPFAN_F_L3)) {
        *in = outer; /* not IP inside (PPP, ARP...): meter the tunnel itself */
        return;
    }
    in->pflags |= CAPFAN_P_DECAP;
}

/* GRE (RFC 2784/2890) and ERSPAN I/II/III on top of it. */
static void decap_gre(parser *P, uint32_t off, capfan_pkt_info *in) {
    const uint8_t *pkt = P->pkt;
    if (off + 4 > P->caplen) { set_bad(in, CAPFAN_BAD_TUNNEL); return; }
    uint16_t fl = rd16(pkt + off), pt = rd16(pkt + off + 2);
    if ((fl & 7) || (fl & 0x4000)) return; /* PPTP's enhanced GRE, source routing: keep outer */
    uint32_t h = off + 4;
    if (fl & 0x8000) h += 4; /* checksum + reserved */
    if (fl & 0x2000) h += 4; /* key */
    if (fl & 0x1000) h += 4; /* sequence number */
    switch (pt) {
    case ETH_P_IP: case ETH_P_IPV6:
        decap(P, h, INNER_IP, 0, in);
        return;
    case ETH_P_TEB:
        decap(P, h, INNER_ETHER, 0, in);
        return;
    case ETH_P_ERSPAN: /* type II carries an 8-byte header and sets the sequence bit; type I neither */
        decap(P, h + ((fl & 0x1000) ? 8 : 0), INNER_ETHER, 0, in);
        return;
    case ETH_P_ERSPAN3: { /* 12-byte header, + 8-byte platform subheader when the O bit is set */
        if (h + 12 > P->caplen) { set_bad(in, CAPFAN_BAD_TUNNEL); return; }
        decap(P, h + 12 + ((pkt[h + 11] & 1) ? 8 : 0), INNER_ETHER, 0, in);
        return;
    }
    case ETH_P_MPLS_UC: case ETH_P_MPLS_MC:
        if (P->opts & CAPFAN_PARSE_MPLS) decap(P, h, INNER_ETHERTYPE, pt, in);
        return;
    default:
        return;
    }
}

/* VXLAN (8-byte header, then Ethernet) and Geneve (8 bytes + options, then by protocol type). */
static void decap_udp(parser *P, uint32_t off, uint16_t dport, capfan_pkt_info *in) {
    const uint8_t *pkt = P->pkt;
    if (off + 8 > P->caplen) { set_bad(in, CAPFAN_BAD_TUNNEL); return; }
    if (dport == UDP_VXLAN) {
        decap(P, off + 8, INNER_ETHER, 0, in);
        return;
    }
    if (pkt[off] >> 6) return; /* unknown Geneve version: keep outer */
    uint32_t h = off + 8 + (uint32_t)(pkt[off] & 0x3F) * 4;
    uint16_t pt = rd16(pkt + off + 2);
    if (pt == ETH_P_TEB) decap(P, h, INNER_ETHER, 0, in);
    else if (pt == ETH_P_IP || pt == ETH_P_IPV6) decap(P, h, INNER_IP, 0, in);
}

static int parse_l4(parser *P, uint32_t off, capfan_pkt_info *in) {
    const uint8_t *pkt = P->pkt;
    in->l4_off = (uint16_t)off;
    switch (in->proto) {
    case 6: case 17: case 33: case 132: case 136: /* TCP UDP DCCP SCTP UDPLite: ports first */
        if (off + 4 > P->caplen) {
            in->flags |= CAPFAN_F_MALFORMED;
            set_bad(in, CAPFAN_BAD_L4_TRUNCATED);
            return 0;
        }
        in->sport = rd16(pkt + off);
        in->dport = rd16(pkt + off + 2);
        in->flags |= CAPFAN_F_L4;
        if (in->proto == 6 && off + 14 <= P->caplen) in->tcp_flags = pkt[off + 13];
        if (in->proto == 17 && (in->dport == UDP_VXLAN || in->dport == UDP_GENEVE)) {
            in->pflags |= CAPFAN_P_TUNNEL;
            if (P->opts & CAPFAN_PARSE_VXLAN) decap_udp(P, off + 8, in->dport, in);
        }
        return 0;
    case 1: case 58: /* ICMP, ICMPv6: type/code */
        if (off + 2 > P->caplen) {
            in->flags |= CAPFAN_F_MALFORMED;
            set_bad(in, CAPFAN_BAD_L4_TRUNCATED);
            return 0;
        }
        in->sport = (uint16_t)(pkt[off] << 8 | pkt[off + 1]);
        return 0;
    case 4: case 41: /* IPv4 / IPv6 in IP */
        in->pflags |= CAPFAN_P_TUNNEL;
        return 0;
    case 103: /* PIM: a Register message (type 1) carries a whole multicast data packet */
        if (off < P->caplen && (pkt[off] & 0x0f) == 1) in->pflags |= CAPFAN_P_TUNNEL;
        return 0;
    case 47:
        in->pflags |= CAPFAN_P_TUNNEL;
        if (P->opts & CAPFAN_PARSE_GRE) decap_gre(P, off, in);
        return 0;
    default:
        return 0;
    }
}

static int parse_ipv4(parser *P, uint32_t off, capfan_pkt_info *in) {
    if (off + 20 > P->caplen) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_IP_TRUNCATED);
        return -1;
    }
    const uint8_t *ip = P->pkt + off;
    if ((ip[0] >> 4) != 4) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_IP_VERSION);
        return -1;
    }
    uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
    in->ip_version = 4;
    in->l3_off = (uint16_t)off;
    in->proto = ip[9];
    in->ip_len = rd16(ip + 2);
    memcpy(in->src, ip + 12, 4);
    memcpy(in->dst, ip + 16, 4);
    in->flags |= CAPFAN_F_L3;
    int gso = in->ip_len == 0 && (P->opts & CAPFAN_PARSE_GSO); /* TSO/GSO frame: length left 0 */
    if (ihl < 20 || (in->ip_len < ihl && !gso)) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_IP_HEADER);
        return 0;
    }
    uint16_t fo = rd16(ip + 6);
    in->frag_id = rd16(ip + 4);
    in->frag_off = fo & 0x1FFF;
    if (fo & 0x3FFF) in->flags |= CAPFAN_F_FRAGMENT; /* MF set or offset != 0 */
    if (in->frag_off) return 0;                        /* later fragment: no L4 header */
    return parse_l4(P, off + ihl, in);
}

static int parse_ipv6(parser *P, uint32_t off, capfan_pkt_info *in) {
    const uint8_t *pkt = P->pkt;
    uint32_t caplen = P->caplen;
    if (off + 40 > caplen) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_IP_TRUNCATED);
        return -1;
    }
    const uint8_t *ip = pkt + off;
    if ((ip[0] >> 4) != 6) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_IP_VERSION);
        return -1;
    }
    in->ip_version = 6;
    in->l3_off = (uint16_t)off;
    uint32_t plen = rd16(ip + 4);
    in->ip_len = (plen == 0 && (P->opts & CAPFAN_PARSE_GSO)) ? 0 : plen + 40;
    memcpy(in->src, ip + 8, 16);
    memcpy(in->dst, ip + 24, 16);
    in->flags |= CAPFAN_F_L3 | CAPFAN_F_IPV6;
    uint8_t nh = ip[6];
    uint32_t p = off + 40;
    for (int i = 0; i < IPV6_EXT_MAX; i++) {
        switch (nh) {
        case 0: case 43: case 60: case 135: case 139: case 140: /* HBH, routing, dstopts, mobility, HIP, shim6 */
        case 51: /* AH: length in 4-byte units, minus 2 */
            if (p + 8 > caplen) {
                in->proto = nh;
                in->flags |= CAPFAN_F_MALFORMED;
                set_bad(in, CAPFAN_BAD_IPV6_EXT);
                return 0;
            }
            in->pflags |= CAPFAN_P_IPV6_EXT;
            {
                uint32_t len = nh == 51 ? (uint32_t)(pkt[p + 1] + 2) * 4 : (uint32_t)(pkt[p + 1] + 1) * 8;
                nh = pkt[p];
                p += len;
            }
            continue;
        case 44: { /* fragment */
            if (p + 8 > caplen) {
                in->proto = nh;
                in->flags |= CAPFAN_F_MALFORMED;
                set_bad(in, CAPFAN_BAD_IPV6_EXT);
                return 0;
            }
            uint16_t fo = rd16(pkt + p + 2);
            in->pflags |= CAPFAN_P_IPV6_EXT;
            in->flags |= CAPFAN_F_FRAGMENT;
            in->frag_off = fo >> 3;
            in->frag_id = rd32(pkt + p + 4);
            nh = pkt[p];
            p += 8;
            if (in->frag_off) { in->proto = nh; return 0; }
            continue;
        }
        default:
            in->proto = nh;
            if (p > caplen) set_bad(in, CAPFAN_BAD_IPV6_EXT); /* chain runs past the capture */
            return parse_l4(P, p, in);
        }
    }
    in->proto = nh;
    in->flags |= CAPFAN_F_MALFORMED; /* too many extension headers */
    set_bad(in, CAPFAN_BAD_IPV6_EXT);
    return 0;
}

/* MPLS label stack (only with CAPFAN_PARSE_MPLS), then IPv4/IPv6 by the first nibble, or
 * Ethernet after a pseudowire control word (first nibble 0). */
static int parse_mpls(parser *P, uint32_t off, capfan_pkt_info *in) {
    const uint8_t *pkt = P->pkt;
    for (int i = 0;; i++) {
        if (off + 4 > P->caplen) { set_bad(in, CAPFAN_BAD_L2_TRUNCATED); return -1; }
        int bottom = pkt[off + 2] & 1;
        off += 4;
        if (bottom) break;
        if (i + 1 == MPLS_MAX) return -1; /* absurd stack: not metered as IP */
    }
    in->pflags |= CAPFAN_P_MPLS;
    if (off >= P->caplen) { set_bad(in, CAPFAN_BAD_L2_TRUNCATED); return -1; }
    uint8_t nib = pkt[off] >> 4;
    if (nib == 4) return parse_ipv4(P, off, in);
    if (nib == 6) return parse_ipv6(P, off, in);
    if (nib == 0) return parse_ether(P, off + 4, 1, in);
    return -1;
}

static int parse_ethertype(parser *P, uint32_t off, uint16_t et, capfan_pkt_info *in) {
    in->ethertype = et;
    if (et == ETH_P_IP) return parse_ipv4(P, off, in);
    if (et == ETH_P_IPV6) return parse_ipv6(P, off, in);
    if ((et == ETH_P_MPLS_UC || et == ETH_P_MPLS_MC) && (P->opts & CAPFAN_PARSE_MPLS))
        return parse_mpls(P, off, in);
    return -1;
}

/* Ethernet and up to 4 VLAN tags; keep_vlans: an inner frame (tunnel, pseudowire) does not
 * replace the outer VLAN ids. */
static int parse_ether(parser *P, uint32_t off, int keep_vlans, capfan_pkt_info *in) {
    const uint8_t *pkt = P->pkt;
    if (off + 14 > P->caplen) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_L2_TRUNCATED);
        return -1;
    }
    uint16_t et = rd16(pkt + off + 12);
    off += 14;
    for (int tags = 0; (et == ETH_P_8021Q || et == ETH_P_8021AD || et == ETH_P_QINQ_OLD) && tags < 4; tags++) {
        if (off + 4 > P->caplen) {
            in->flags |= CAPFAN_F_MALFORMED;
            set_bad(in, CAPFAN_BAD_L2_TRUNCATED);
            return -1;
        }
        uint16_t vid = rd16(pkt + off) & 0x0FFF;
        if (!keep_vlans) {
            if (tags == 0) in->vlan = vid;
            else if (tags == 1) { in->inner_vlan = vid; in->pflags |= CAPFAN_P_QINQ; }
        }
        et = rd16(pkt + off + 2);
        off += 4;
    }
    return parse_ethertype(P, off, et, in);
}

static int parse_by_version(parser *P, uint32_t off, capfan_pkt_info *in) {
    if (off >= P->caplen) {
        in->flags |= CAPFAN_F_MALFORMED;
        set_bad(in, CAPFAN_BAD_IP_TRUNCATED);
        return -1;
    }
    uint8_t v = P->pkt[off] >> 4;
    if (v == 4) return parse_ipv4(P, off, in);
    if (v == 6) return parse_ipv6(P, off, in);
    in->flags |= CAPFAN_F_MALFORMED;
    set_bad(in, CAPFAN_BAD_IP_VERSION);
    return -1;
}

int capfan_parse_ex(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint32_t opts,
                    capfan_pkt_info *in) {
    /* every field but the addresses (valid only with CAPFAN_F_L3); this runs per packet */
    memset(in, 0, offsetof(capfan_pkt_info, src));
    parser P = {pkt, caplen, opts, 0};
    switch (linktype) {
    case CAPFAN_LT_ETHERNET:
        return parse_ether(&P, 0, 0, in);
    case CAPFAN_LT_RAW: case CAPFAN_LT_RAW_OLD: case CAPFAN_LT_RAW_OLD2:
        return parse_by_version(&P, 0, in);
    case CAPFAN_LT_IPV4:
        return parse_ipv4(&P, 0, in);
    case CAPFAN_LT_IPV6:
        return parse_ipv6(&P, 0, in);
    case CAPFAN_LT_NULL: case CAPFAN_LT_LOOP: /* 4-byte address family, host or network order */
        return parse_by_version(&P, 4, in);
    case CAPFAN_LT_LINUX_SLL:
        if (caplen < 16) {
            in->flags |= CAPFAN_F_MALFORMED;
            set_bad(in, CAPFAN_BAD_L2_TRUNCATED);
            return -1;
        }
        return parse_ethertype(&P, 16, rd16(pkt + 14), in);
    case CAPFAN_LT_LINUX_SLL2:
        if (caplen < 20) {
            in->flags |= CAPFAN_F_MALFORMED;
            set_bad(in, CAPFAN_BAD_L2_TRUNCATED);
            return -1;
        }
        return parse_ethertype(&P, 20, rd16(pkt), in);
    default:
        set_bad(in, CAPFAN_BAD_LINKTYPE);
        return -1;
    }
}

int capfan_parse(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, capfan_pkt_info *in) {
    return capfan_parse_ex(pkt, caplen, linktype, 0, in);
}
static inline uint64_t mix64(uint64_t h, uint64_t w) {
    h ^= w * 0x87c37b91114253d5ULL;
    h = (h << 31 | h >> 33) * 0x4cf5ad432745937fULL;
    return h;
}

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }

/* Compare two addresses as big-endian numbers: -1, 0, 1. */
static inline int addr_cmp(const uint8_t *a, const uint8_t *b, int v6) {
    if (!v6) {
        uint32_t x = rd32(a), y = rd32(b);
        return (x > y) - (x < y);
    }
    uint64_t x = rd64(a), y = rd64(b);
    if (x == y) { x = rd64(a + 8); y = rd64(b + 8); }
    return (x > y) - (x < y);
}

uint32_t capfan_sym_hash(const uint8_t *src, const uint8_t *dst, int v6, uint8_t proto,
                         uint16_t sp, uint16_t dp) {
    int c = addr_cmp(src, dst, v6);
    const uint8_t *lo = src, *hi = dst;
    uint16_t lop = sp, hip = dp;
    if (c > 0 || (c == 0 && sp > dp)) { lo = dst; hi = src; lop = dp; hip = sp; }
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ proto;
    if (v6) {
        h = mix64(h, rd64(lo));
        h = mix64(h, rd64(lo + 8));
        h = mix64(h, rd64(hi));
        h = mix64(h, rd64(hi + 8));
    } else {
        h = mix64(h, (uint64_t)rd32(lo) << 32 | rd32(hi));
    }
    h = mix64(h, (uint64_t)lop << 16 | hip);
    return (uint32_t)(fmix64(h) >> 32);
}

uint32_t capfan_flow_hash(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint16_t *flags) {
    capfan_pkt_info in;
    capfan_parse(pkt, caplen, linktype, &in);
    *flags = (uint16_t)(*flags | in.flags);
    if (!(in.flags & CAPFAN_F_L3)) return 0;
    /* Fragments hash on addresses and protocol only so every fragment of a datagram lands
     * with its first fragment; ports take part otherwise. */
    uint16_t sp = in.sport, dp = in.dport;
    if ((in.flags & CAPFAN_F_FRAGMENT) || !(in.flags & CAPFAN_F_L4)) sp = dp = 0;
    return capfan_sym_hash(in.src, in.dst, in.ip_version == 6, in.proto, sp, dp);
}

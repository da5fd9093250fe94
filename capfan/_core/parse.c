/* Outermost-header parser and symmetric flow hash. Bounds-checked against caplen everywhere:
 * this runs on untrusted traffic. */
#include "parse.h"
#include "ring.h"

#include <stddef.h>
#include <string.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_QINQ_OLD 0x9100
#define IPV6_EXT_MAX 8 /* extension headers skipped before giving up */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int parse_l4(const uint8_t *pkt, uint32_t caplen, uint32_t off, capfan_pkt_info *in) {
    in->l4_off = (uint16_t)off;
    switch (in->proto) {
    case 6: case 17: case 33: case 132: case 136: /* TCP UDP DCCP SCTP UDPLite: ports first */
        if (off + 4 > caplen) { in->flags |= CAPFAN_F_MALFORMED; return 0; }
        in->sport = rd16(pkt + off);
        in->dport = rd16(pkt + off + 2);
        in->flags |= CAPFAN_F_L4;
        return 0;
    case 1: case 58: /* ICMP, ICMPv6: type/code */
        if (off + 2 > caplen) { in->flags |= CAPFAN_F_MALFORMED; return 0; }
        in->sport = (uint16_t)(pkt[off] << 8 | pkt[off + 1]);
        return 0;
    default:
        return 0;
    }
}

static int parse_ipv4(const uint8_t *pkt, uint32_t caplen, uint32_t off, capfan_pkt_info *in) {
    if (off + 20 > caplen) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
    const uint8_t *ip = pkt + off;
    if ((ip[0] >> 4) != 4) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
    uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
    in->ip_version = 4;
    in->l3_off = (uint16_t)off;
    in->proto = ip[9];
    in->ip_len = rd16(ip + 2);
    memcpy(in->src, ip + 12, 4);
    memcpy(in->dst, ip + 16, 4);
    in->flags |= CAPFAN_F_L3;
    if (ihl < 20 || in->ip_len < ihl) { in->flags |= CAPFAN_F_MALFORMED; return 0; }
    uint16_t fo = rd16(ip + 6);
    in->frag_id = rd16(ip + 4);
    in->frag_off = fo & 0x1FFF;
    if (fo & 0x3FFF) in->flags |= CAPFAN_F_FRAGMENT; /* MF set or offset != 0 */
    if (in->frag_off) return 0;                        /* later fragment: no L4 header */
    return parse_l4(pkt, caplen, off + ihl, in);
}

static int parse_ipv6(const uint8_t *pkt, uint32_t caplen, uint32_t off, capfan_pkt_info *in) {
    if (off + 40 > caplen) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
    const uint8_t *ip = pkt + off;
    if ((ip[0] >> 4) != 6) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
    in->ip_version = 6;
    in->l3_off = (uint16_t)off;
    in->ip_len = (uint16_t)(rd16(ip + 4) + 40);
    memcpy(in->src, ip + 8, 16);
    memcpy(in->dst, ip + 24, 16);
    in->flags |= CAPFAN_F_L3 | CAPFAN_F_IPV6;
    uint8_t nh = ip[6];
    uint32_t p = off + 40;
    for (int i = 0; i < IPV6_EXT_MAX; i++) {
        switch (nh) {
        case 0: case 43: case 60: case 135: case 139: case 140: /* HBH, routing, dstopts, mobility, HIP, shim6 */
            if (p + 8 > caplen) { in->proto = nh; in->flags |= CAPFAN_F_MALFORMED; return 0; }
            nh = pkt[p];
            p += (uint32_t)(pkt[p + 1] + 1) * 8;
            continue;
        case 51: /* AH: length in 4-byte units, minus 2 */
            if (p + 8 > caplen) { in->proto = nh; in->flags |= CAPFAN_F_MALFORMED; return 0; }
            nh = pkt[p];
            p += (uint32_t)(pkt[p + 1] + 2) * 4;
            continue;
        case 44: { /* fragment */
            if (p + 8 > caplen) { in->proto = nh; in->flags |= CAPFAN_F_MALFORMED; return 0; }
            uint16_t fo = rd16(pkt + p + 2);
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
            return parse_l4(pkt, caplen, p, in);
        }
    }
    in->proto = nh;
    in->flags |= CAPFAN_F_MALFORMED; /* too many extension headers */
    return 0;
}

static int parse_ethertype(const uint8_t *pkt, uint32_t caplen, uint32_t off, uint16_t et,
                           capfan_pkt_info *in) {
    in->ethertype = et;
    if (et == ETH_P_IP) return parse_ipv4(pkt, caplen, off, in);
    if (et == ETH_P_IPV6) return parse_ipv6(pkt, caplen, off, in);
    return -1;
}

static int parse_ether(const uint8_t *pkt, uint32_t caplen, uint32_t off, capfan_pkt_info *in) {
    if (off + 14 > caplen) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
    uint16_t et = rd16(pkt + off + 12);
    off += 14;
    for (int tags = 0; (et == ETH_P_8021Q || et == ETH_P_8021AD || et == ETH_P_QINQ_OLD) && tags < 4; tags++) {
        if (off + 4 > caplen) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
        uint16_t vid = rd16(pkt + off) & 0x0FFF;
        if (tags == 0) in->vlan = vid;
        else if (tags == 1) in->inner_vlan = vid;
        et = rd16(pkt + off + 2);
        off += 4;
    }
    return parse_ethertype(pkt, caplen, off, et, in);
}

static int parse_by_version(const uint8_t *pkt, uint32_t caplen, uint32_t off, capfan_pkt_info *in) {
    if (off >= caplen) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
    uint8_t v = pkt[off] >> 4;
    if (v == 4) return parse_ipv4(pkt, caplen, off, in);
    if (v == 6) return parse_ipv6(pkt, caplen, off, in);
    in->flags |= CAPFAN_F_MALFORMED;
    return -1;
}

int capfan_parse(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, capfan_pkt_info *in) {
    /* every field but the addresses (valid only with CAPFAN_F_L3); this runs per packet */
    memset(in, 0, offsetof(capfan_pkt_info, src));
    switch (linktype) {
    case CAPFAN_LT_ETHERNET:
        return parse_ether(pkt, caplen, 0, in);
    case CAPFAN_LT_RAW: case CAPFAN_LT_RAW_OLD: case CAPFAN_LT_RAW_OLD2:
        return parse_by_version(pkt, caplen, 0, in);
    case CAPFAN_LT_IPV4:
        return parse_ipv4(pkt, caplen, 0, in);
    case CAPFAN_LT_IPV6:
        return parse_ipv6(pkt, caplen, 0, in);
    case CAPFAN_LT_NULL: case CAPFAN_LT_LOOP: /* 4-byte address family, host or network order */
        return parse_by_version(pkt, caplen, 4, in);
    case CAPFAN_LT_LINUX_SLL:
        if (caplen < 16) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
        return parse_ethertype(pkt, caplen, 16, rd16(pkt + 14), in);
    case CAPFAN_LT_LINUX_SLL2:
        if (caplen < 20) { in->flags |= CAPFAN_F_MALFORMED; return -1; }
        return parse_ethertype(pkt, caplen, 20, rd16(pkt), in);
    default:
        return -1;
    }
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

uint32_t capfan_flow_hash(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint16_t *flags) {
    capfan_pkt_info in;
    capfan_parse(pkt, caplen, linktype, &in);
    *flags = (uint16_t)(*flags | in.flags);
    if (!(in.flags & CAPFAN_F_L3)) return 0;
    int v6 = in.ip_version == 6;
    /* Fragments hash on addresses and protocol only so every fragment of a datagram lands
     * with its first fragment; ports take part otherwise. */
    uint16_t sp = in.sport, dp = in.dport;
    if ((in.flags & CAPFAN_F_FRAGMENT) || !(in.flags & CAPFAN_F_L4)) sp = dp = 0;
    int c = addr_cmp(in.src, in.dst, v6);
    const uint8_t *lo = in.src, *hi = in.dst;
    uint16_t lop = sp, hip = dp;
    if (c > 0 || (c == 0 && sp > dp)) { lo = in.dst; hi = in.src; lop = dp; hip = sp; }
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ in.proto;
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

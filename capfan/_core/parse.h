/* capfan packet parsing: link layer to L4 ports, and the symmetric flow hash the producer
 * stores in every descriptor. */
#ifndef CAPFAN_PARSE_H
#define CAPFAN_PARSE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* pcap LINKTYPE_* values capfan understands. */
enum capfan_linktype {
    CAPFAN_LT_NULL = 0, CAPFAN_LT_ETHERNET = 1, CAPFAN_LT_RAW_OLD = 12, CAPFAN_LT_RAW_OLD2 = 14,
    CAPFAN_LT_RAW = 101, CAPFAN_LT_LOOP = 108, CAPFAN_LT_LINUX_SLL = 113,
    CAPFAN_LT_IPV4 = 228, CAPFAN_LT_IPV6 = 229, CAPFAN_LT_LINUX_SLL2 = 276,
};

/* What the parser found in a frame (outermost headers). */
typedef struct capfan_pkt_info {
    uint16_t flags;        /* CAPFAN_F_* of ring.h (L3, L4, IPV6, FRAGMENT, MALFORMED) */
    uint16_t vlan;         /* outer VLAN id, 0 if untagged */
    uint16_t inner_vlan;   /* inner VLAN id (QinQ), 0 if none */
    uint16_t l3_off;       /* offset of the IP header, 0 if none */
    uint16_t l4_off;       /* offset of the transport header, 0 if none */
    uint8_t ip_version;    /* 4, 6 or 0 */
    uint8_t proto;         /* IP protocol after extension headers */
    uint16_t sport, dport; /* ports (ICMP: type<<8|code in sport) */
    uint16_t ethertype;    /* ethertype after VLAN tags */
    uint32_t frag_id;      /* IPv4 id or IPv6 fragment identification */
    uint16_t frag_off;     /* fragment offset in 8-byte units */
    uint16_t ip_len;       /* IP-layer length from the header (v6: payload + 40) */
    uint8_t src[16], dst[16]; /* IPv4 uses the first 4 bytes */
} capfan_pkt_info;

/* Parse the outermost L2/L3/L4 headers of a frame; never reads past caplen. Returns 0 if an
 * IP header was found, -1 otherwise (info->flags says why). */
int capfan_parse(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, capfan_pkt_info *info);

/* Symmetric flow hash of a frame: both directions of a flow give the same value. Sets
 * CAPFAN_F_L3/L4/IPV6/FRAGMENT/MALFORMED in *flags. */
uint32_t capfan_flow_hash(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint16_t *flags);

#ifdef __cplusplus
}
#endif
#endif

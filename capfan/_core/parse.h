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

/* Why a frame could not be metered (capfan_pkt_info.bad; the flow meter counts them). */
enum capfan_bad_reason {
    CAPFAN_BAD_NONE = 0,
    CAPFAN_BAD_LINKTYPE,         /* link type the parser does not know */
    CAPFAN_BAD_L2_TRUNCATED,     /* Ethernet / VLAN / SLL / MPLS header cut short */
    CAPFAN_BAD_IP_TRUNCATED,     /* IP header cut short */
    CAPFAN_BAD_IP_VERSION,       /* version field is neither 4 nor 6 where IP was announced */
    CAPFAN_BAD_IP_HEADER,        /* IHL < 5 or total length < header length */
    CAPFAN_BAD_IPV6_EXT,         /* extension header chain cut short or longer than the limit */
    CAPFAN_BAD_L4_TRUNCATED,     /* transport header too short for the ports / type+code */
    CAPFAN_BAD_TUNNEL,           /* decapsulation asked but the inner packet is malformed */
    CAPFAN_BAD_TORN,             /* lossy consumer: packet overwritten while being metered */
    CAPFAN_BAD_MAX
};

/* capfan_parse_ex options: decapsulation switches (same values as CAPFAN_DECAP_* of
 * flowmeter.h) and metering-only leniency. */
enum capfan_parse_opts {
    CAPFAN_PARSE_MPLS = 1u << 0,   /* skip MPLS label stacks (else MPLS frames are non-IP) */
    CAPFAN_PARSE_GRE = 1u << 1,    /* parse the packet inside GRE / ERSPAN */
    CAPFAN_PARSE_VXLAN = 1u << 2,  /* parse the packet inside VXLAN (UDP 4789) / Geneve (6081) */
    CAPFAN_PARSE_GSO = 1u << 8,    /* IP length field 0 = jumbogram / GSO frame (ip_len 0), not
                                      malformed; transport header parsed */
};

/* capfan_pkt_info.pflags: what the parse went through (same bit values as the
 * CAPFAN_FLOW_* record flags of flowmeter.h, so the meter ORs them in as they are). */
enum capfan_parse_flags {
    CAPFAN_P_IPV6_EXT = 1u << 2,   /* IPv6 extension headers skipped */
    CAPFAN_P_TUNNEL = 1u << 3,     /* the (outer) packet is a tunnel: GRE, IPIP, IPv6-in-IP, PIM Register,
                                      UDP 4789 / 6081 */
    CAPFAN_P_DECAP = 1u << 4,      /* fields below describe the inner packet */
    CAPFAN_P_QINQ = 1u << 5,       /* two or more VLAN tags */
    CAPFAN_P_MPLS = 1u << 9,       /* MPLS labels skipped */
};

/* What the parser found in a frame (outermost headers, or the inner ones after a decap). */
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
    uint8_t bad;           /* capfan_bad_reason: why the frame cannot be metered, 0 = fine */
    uint8_t tcp_flags;     /* TCP flags byte (TCP with at least 14 header bytes captured) */
    uint32_t frag_id;      /* IPv4 id or IPv6 fragment identification */
    uint16_t frag_off;     /* fragment offset in 8-byte units */
    uint16_t pflags;       /* CAPFAN_P_* */
    uint32_t ip_len;       /* IP-layer length from the header (v6: payload + 40); with
                              CAPFAN_PARSE_GSO, 0 when the header's length field is 0 */
    uint8_t src[16], dst[16]; /* IPv4 uses the first 4 bytes */
} capfan_pkt_info;

/* Parse the outermost L2/L3/L4 headers of a frame; never reads past caplen. Returns 0 if an
 * IP header was found, -1 otherwise (info->flags says why). */
int capfan_parse(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, capfan_pkt_info *info);

/* capfan_parse with options (CAPFAN_PARSE_*): decapsulation and metering leniency. The ring's
 * flow hash always uses plain capfan_parse. */
int capfan_parse_ex(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint32_t opts,
                    capfan_pkt_info *info);

/* Symmetric flow hash of a frame: both directions of a flow give the same value. Sets
 * CAPFAN_F_L3/L4/IPV6/FRAGMENT/MALFORMED in *flags. */
uint32_t capfan_flow_hash(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint16_t *flags);

/* The flow hash of given addresses (4 or 16 bytes), protocol and ports: symmetric in
 * (src, sport) <-> (dst, dport). */
uint32_t capfan_sym_hash(const uint8_t *src, const uint8_t *dst, int v6, uint8_t proto,
                         uint16_t sp, uint16_t dp);

#ifdef __cplusplus
}
#endif
#endif

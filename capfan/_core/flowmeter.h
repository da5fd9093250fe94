/* capfan flow meter: turns packets into bidirectional flow records (C hot path of the
 * `flowmeter` analyzer). One meter per consumer process; not thread-safe.
 *
 * Key (canonical, direction-free): outer VLAN, inner VLAN (QinQ), IP version, protocol
 * (after IPv6 extension headers), the two addresses, the two ports (TCP/UDP/SCTP/DCCP/UDP-Lite)
 * or ICMP type/code (echo request and reply paired). The *initiator* (record source) is the
 * sender of the flow's first packet, except that a TCP SYN without ACK wins.
 *
 * Time is packet time: timeouts compare packet timestamps, so a replayed capture meters the
 * same as it did live. capfan_flowmeter_tick() advances the clock with wall time while no
 * packets arrive, so idle flows still end on a quiet link.
 */
#ifndef CAPFAN_FLOWMETER_H
#define CAPFAN_FLOWMETER_H

#include <stdint.h>

#include "parse.h"
#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* flowEndReason (IPFIX IE 136) values. */
enum capfan_flow_end {
    CAPFAN_END_IDLE = 1,      /* idle timeout */
    CAPFAN_END_ACTIVE = 2,    /* active timeout: long flow cut into records */
    CAPFAN_END_EOF = 3,       /* end of flow detected: FIN both ways, or RST */
    CAPFAN_END_FORCED = 4,    /* forced flush (shutdown, capfan_flowmeter_flush) */
    CAPFAN_END_RESOURCES = 5, /* lack of resources: table full, oldest flow expired early */
};

/* capfan_flow_record.flags: what the flow contained (for users and for explaining differences
 * with other meters). */
enum capfan_flow_flags {
    CAPFAN_FLOW_FRAGMENTS = 1u << 0,   /* IP fragments counted in this flow */
    CAPFAN_FLOW_FRAG_ORPHAN = 1u << 1, /* non-first fragments whose first fragment was not seen
                                          (ports unknown: counted with ports 0) */
    CAPFAN_FLOW_IPV6_EXT = 1u << 2,    /* IPv6 extension headers were skipped */
    CAPFAN_FLOW_TUNNEL = 1u << 3,      /* outer header of a tunnel (GRE, IP-in-IP, VXLAN, Geneve, PIM Register,
                                          ERSPAN), metered as the outer flow */
    CAPFAN_FLOW_DECAP = 1u << 4,       /* key taken from the inner headers (decap switch on) */
    CAPFAN_FLOW_QINQ = 1u << 5,        /* two or more VLAN tags */
    CAPFAN_FLOW_MALFORMED = 1u << 6,   /* some packet had malformed/truncated headers */
    CAPFAN_FLOW_SYN_INITIATOR = 1u << 7, /* initiator known from a SYN */
    CAPFAN_FLOW_ICMP_ERROR = 1u << 8,  /* ICMP error messages (they quote another datagram) */
    CAPFAN_FLOW_MPLS = 1u << 9,        /* MPLS labels were skipped */
    CAPFAN_FLOW_LEN_FROM_FRAME = 1u << 10, /* an IP length field was 0 (jumbogram, GSO/"big TCP"
                                              frame): IP bytes taken from the wire length */
};

/* One flow record, 136 bytes. Field comments give the IPFIX element (RFC 7012 / RFC 5103
 * reverse elements); capfan/records.py holds the matching numpy dtype. Addresses are 16
 * bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). "fwd" = initiator -> responder. */
typedef struct capfan_flow_record {
    uint64_t start_ns;       /* flowStartNanoseconds: first packet, either direction */
    uint64_t end_ns;         /* flowEndNanoseconds: last packet, either direction */
    uint64_t rev_start_ns;   /* reverseFlowStartNanoseconds: first responder packet (0: none) */
    uint64_t rev_end_ns;     /* reverseFlowEndNanoseconds */
    uint64_t packets;        /* packetDeltaCount (initiator -> responder) */
    uint64_t rev_packets;    /* reversePacketDeltaCount */
    uint64_t octets;         /* octetDeltaCount: IP-layer bytes (IP total length / v6 payload+40) */
    uint64_t rev_octets;     /* reverseOctetDeltaCount */
    uint64_t l2_octets;      /* layer2OctetDeltaCount: frame bytes on the wire (wire length) */
    uint64_t rev_l2_octets;  /* reverseLayer2OctetDeltaCount */
    uint8_t src[16];         /* sourceIPv6Address (initiator) */
    uint8_t dst[16];         /* destinationIPv6Address */
    uint32_t hash;           /* symmetric flow hash, as in ring descriptors */
    uint16_t sport;          /* sourceTransportPort (ICMP: 0) */
    uint16_t dport;          /* destinationTransportPort (ICMP: type << 8 | code of the first packet) */
    uint16_t vlan;           /* vlanId: outer VLAN, 0 = untagged */
    uint16_t inner_vlan;     /* dot1qCustomerVlanId: inner VLAN of QinQ, 0 = none */
    uint16_t port;           /* ingressInterface: ring port (queue / pcapng interface) */
    uint16_t flags;          /* CAPFAN_FLOW_* */
    uint8_t ip_version;      /* ipVersion */
    uint8_t proto;           /* protocolIdentifier */
    uint8_t tcp_flags;       /* tcpControlBits: union over initiator packets */
    uint8_t rev_tcp_flags;   /* reverseTcpControlBits */
    uint8_t end_reason;      /* flowEndReason */
    uint8_t _pad[3];
} capfan_flow_record;

/* Decapsulation switches (capfan_flowmeter_config.decap); 0 = meter the outer flow. */
enum capfan_decap {
    CAPFAN_DECAP_MPLS = 1u << 0,  /* skip MPLS label stacks to the IP packet underneath */
    CAPFAN_DECAP_GRE = 1u << 1,   /* key GRE (and ERSPAN) packets by the inner IP headers */
    CAPFAN_DECAP_VXLAN = 1u << 2, /* key VXLAN (UDP 4789) / Geneve (UDP 6081) by the inner headers */
};

typedef struct capfan_flowmeter_config {
    uint32_t max_flows;          /* flows kept at once; when full the least recently seen is
                                    expired early (END_RESOURCES, counted). 0 = 1048576 */
    uint32_t max_fragments;      /* first-fragment table entries; 0 = 65536 */
    uint64_t idle_timeout_ns;    /* 0 = never */
    uint64_t active_timeout_ns;  /* 0 = never */
    uint64_t end_linger_ns;      /* after FIN both ways / RST the flow still absorbs stray
                                    packets (final ACK, retransmitted FIN) this long; 0 = 0 */
    uint64_t fragment_timeout_ns;/* how long a first fragment's ports are remembered; 0 = 30 s */
    uint32_t decap;              /* CAPFAN_DECAP_* */
    uint32_t _pad;
} capfan_flowmeter_config;

/* Why packets were not metered normally (stats.bad[reason]): enum capfan_bad_reason, declared
 * in parse.h because the parser decides it; names from capfan_flowmeter_bad_name(). Counted,
 * never fatal. */

typedef struct capfan_flowmeter_stats {
    uint64_t packets;            /* packets offered */
    uint64_t ip_packets;         /* packets metered into a flow */
    uint64_t non_ip;             /* well-formed frames that carry no IP (ARP, STP, LLDP...) */
    uint64_t bad[CAPFAN_BAD_MAX];/* per capfan_bad_reason; bad[0] unused */
    uint64_t fragments;          /* IP fragments seen (first and later) */
    uint64_t fragment_orphans;   /* later fragments whose first fragment was not seen */
    uint64_t flows_created;
    uint64_t flows_ended[6];     /* records written, by capfan_flow_end (index 1..5; [0] unused);
                                    an active-timeout cut writes a record, the flow goes on */
    uint64_t flows_active;       /* in the table now */
    uint64_t flows_active_max;   /* high-water mark */
    uint64_t records_pending;    /* ended, waiting in the output buffer */
    uint64_t now_ns;             /* the meter's clock */
    uint64_t records_lost;       /* ended flows dropped because the output buffer could not
                                    grow (out of memory); drain more often */
} capfan_flowmeter_stats;

typedef struct capfan_flowmeter capfan_flowmeter;

/* New meter; NULL on allocation failure or a bad config (capfan_last_error says which). */
capfan_flowmeter *capfan_flowmeter_new(const capfan_flowmeter_config *cfg);
void capfan_flowmeter_free(capfan_flowmeter *fm);
/* Meter a batch a consumer received (link types from the ring's ports); for a lossy consumer,
 * packets torn meanwhile are counted as bad[TORN]. Returns packets metered into flows. */
int64_t capfan_flowmeter_batch(capfan_flowmeter *fm, capfan_consumer *c, const capfan_batch *b);
/* Meter n packets held in buf at offs[i] (caplens, wirelens, ts_ns per packet; wirelens may
 * be NULL = caplen) of one link type. Returns packets metered into flows. */
int64_t capfan_flowmeter_packets(capfan_flowmeter *fm, const uint8_t *buf, const uint64_t *offs,
                                 const uint32_t *caplens, const uint32_t *wirelens,
                                 const uint64_t *ts_ns, uint32_t n, uint32_t linktype, uint16_t port);
/* Advance the clock with wall time (ns since the epoch) and end idle/active flows. */
void capfan_flowmeter_tick(capfan_flowmeter *fm, uint64_t wall_ns);
/* End every flow now (END_FORCED). */
void capfan_flowmeter_flush(capfan_flowmeter *fm);
/* Move up to max ended records into out; returns how many. */
uint32_t capfan_flowmeter_drain(capfan_flowmeter *fm, capfan_flow_record *out, uint32_t max);
void capfan_flowmeter_get_stats(capfan_flowmeter *fm, capfan_flowmeter_stats *out);
/* Short name of a capfan_bad_reason ("ip_truncated"...), NULL past the end. */
const char *capfan_flowmeter_bad_name(uint32_t reason);

#ifdef __cplusplus
}
#endif
#endif

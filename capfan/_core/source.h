/* capfan capture sources: each capture method is one C backend behind this interface
 * (libpcap's pcap-*.c is the model). A source receives batches straight into a ring. */
#ifndef CAPFAN_SOURCE_H
#define CAPFAN_SOURCE_H

#include <stdint.h>
#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Counters of one source; kernel/NIC counters are cumulative since open. */
typedef struct capfan_source_stats {
    uint64_t packets;          /* packets taken from the backend */
    uint64_t bytes;            /* their wire bytes */
    uint64_t published;        /* packets written into the ring */
    uint64_t ring_drops;       /* lost because the ring was full (drop policy / timeout) */
    uint64_t kernel_drops;     /* AF_PACKET tp_drops, XDP rx_dropped, NIC drops */
    uint64_t kernel_freezes;   /* AF_PACKET tp_freeze_q_cnt */
    uint64_t malformed;        /* records that could not be used (bad lengths...) */
    uint64_t truncated;        /* packets cut to the ring's snaplen */
    uint64_t hw_timestamps;    /* packets carrying a hardware timestamp */
    uint64_t xdp_rx_invalid;   /* XDP_STATISTICS rx_invalid_descs */
    uint64_t xdp_rx_ring_full; /* XDP_STATISTICS rx_ring_full */
    uint64_t xdp_fill_empty;   /* XDP_STATISTICS rx_fill_ring_empty_descs */
    uint64_t loops_done;       /* replay: completed passes over the file */
    uint64_t file_offset;      /* replay: bytes of the file consumed */
    uint64_t file_bytes;       /* replay: file size */
    uint32_t zerocopy;         /* AF_XDP: bound in zero-copy mode (0 = copy mode) */
    uint32_t xdp_mode;         /* AF_XDP: 1 skb (generic), 2 native driver */
    uint32_t eof;              /* replay finished */
    uint32_t _pad;
    uint64_t nic_drops;        /* SNF: packets the NIC dropped/overflowed, port-wide (same on every ring) */
    uint64_t ring_overflows;   /* SNF: packets lost because this SNF ring was full (also in kernel_drops) */
    uint64_t shared_overflows; /* SNF: packets lost because the library's shared buffering was full */
} capfan_source_stats;

typedef struct capfan_source capfan_source;

/* ---- every backend ---- */
const char *capfan_source_kind(capfan_source *s);
/* Link type of packets from port (pcapng interface / queue). */
uint32_t capfan_source_linktype(capfan_source *s, uint32_t port);
/* Once per producer, before receiving: declares link types per port and, for backends that
 * receive into the arena itself, switches the producer to external placement. */
int capfan_source_prepare(capfan_source *s, capfan_producer *p);
/* Receive up to max packets into the ring, waiting up to timeout_ns for the first one.
 * Returns packets published (0 on timeout), -CAPFAN_EEOF at the end of a replay, or -error. */
int capfan_source_recv(capfan_source *s, capfan_producer *p, uint32_t max, int64_t timeout_ns);
/* Loop recv in C for up to duration_ns (or max_packets); returns packets published or -error
 * (-CAPFAN_EEOF once a replay is done and nothing more was published). */
int64_t capfan_source_run(capfan_source *s, capfan_producer *p, uint64_t max_packets, int64_t duration_ns);
int capfan_source_get_stats(capfan_source *s, capfan_source_stats *st);
void capfan_source_close(capfan_source *s);

/* ---- pcap / pcapng replay (src_pcap.c) ---- */
typedef struct capfan_pcap_opts {
    double speed;       /* 0 = as fast as possible, 1 = as recorded, k = k times faster */
    uint32_t loops;     /* passes over the file (0 = 1) */
    uint16_t port_base; /* pcapng interface i is published as port port_base + i */
} capfan_pcap_opts;
capfan_source *capfan_pcap_open(const char *path, const capfan_pcap_opts *o);

/* ---- AF_PACKET TPACKET_V3 (src_afpacket.c) ---- */
typedef struct capfan_afpacket_opts {
    const char *ifname;
    uint32_t block_size;       /* bytes per block (power of two multiple of the page size) */
    uint32_t block_count;
    uint32_t block_timeout_ms; /* hand over a partly filled block after this long */
    int32_t fanout_mode;       /* -1 none, else PACKET_FANOUT_* (0 hash, 1 lb, 2 cpu, 3 rollover, 4 rnd, 5 qm) */
    uint16_t fanout_group;
    uint16_t fanout_flags;     /* PACKET_FANOUT_FLAG_* (defrag 0x8000, rollover 0x1000) */
    const char *bpf;           /* tcpdump filter expression or NULL */
    int32_t promisc;
    int32_t hw_timestamps;     /* ask the NIC for hardware RX timestamps */
    uint16_t port;             /* descriptor port value */
} capfan_afpacket_opts;
capfan_source *capfan_afpacket_open(const capfan_afpacket_opts *o);

/* ---- AF_XDP (src_afxdp.c, needs libxdp/libbpf at build time) ---- */
typedef struct capfan_afxdp_opts {
    const char *ifname;
    uint32_t queue;
    uint32_t frame_size;     /* UMEM chunk: 2048 or 4096; the ring arena holds the frames */
    uint32_t rx_size;        /* RX ring size (power of two); the FILL ring is twice as large */
    int32_t xdp_mode;        /* 0 auto, 1 skb (generic), 2 native */
    int32_t bind_mode;       /* 0 auto (zero-copy when the driver can), 1 copy, 2 zero-copy or fail */
    int32_t busy_poll;       /* SO_PREFER_BUSY_POLL + SO_BUSY_POLL(_BUDGET) */
    uint32_t busy_poll_us;
    uint32_t busy_poll_budget;
    uint16_t port;
} capfan_afxdp_opts;
/* The producer's arena becomes the UMEM (frames are read in place by every consumer). */
capfan_source *capfan_afxdp_open(const capfan_afxdp_opts *o, capfan_producer *p);
/* Remove XDP programs capfan left on an interface (after a crash); returns how many. */
int capfan_afxdp_cleanup(const char *ifname);

/* ---- Myricom/CSPi SNF (src_snf.c; libsnf is loaded at run time, nothing needed to build) ---- */
typedef struct capfan_snf_opts {
    const char *lib_path;    /* NULL: $CAPFAN_SNF_LIB, else /opt/snf/lib/libsnf.so */
    const char *ifname;      /* SNF port by name (snf_getifaddrs), or NULL to use portnum */
    uint32_t portnum;
    int32_t num_rings;       /* rings of the port for this application (0 = library default) */
    int32_t queue;           /* the ring id this source reads, 0..num_rings-1 */
    int64_t dataring_size;   /* bytes (>= 1 MiB), 0 = library default */
    int32_t app_id;          /* -1 none; else every application id gets all traffic */
    int32_t flags;           /* SNF open flags, -1 = default (PSHARED when num_rings > 1) */
    int32_t batch;           /* 1 = use recv_many/return_many when the library has them */
    uint16_t port;           /* descriptor port value */
} capfan_snf_opts;
capfan_source *capfan_snf_open(const capfan_snf_opts *o);
/* 1 if this source borrows packets in batches (recv_many), 0 if it receives one at a time. */
int capfan_snf_batched(capfan_source *s);

/* ---- Solarflare/AMD ef_vi (src_efvi.c; compiled only with Onload's etherfabric headers and libciul) ---- */
typedef struct capfan_efvi_opts {
    const char *ifname;
    int32_t rss_vis;        /* 0: one VI; n > 0: a VI set of n VIs (RSS), VI i publishes as port + i */
    int32_t rxq_size;       /* RX descriptors per VI, -1 default */
    int32_t evq_size;       /* event queue entries, -1 default */
    int32_t hw_timestamps;  /* ask for hardware RX timestamps */
    int32_t merge;          /* EF_VI_RX_EVENT_MERGE (RX_MULTI events) */
    const char *filters;    /* comma separated, see src_efvi.c; NULL = sniff-promisc */
    uint16_t port;
    int32_t wait;           /* 0 poll (short sleeps when idle), 1 interrupt (ef_vi_prime + block on the driver fd) */
    int32_t jumbo;          /* 0 publish a multi-buffer frame cut to its first buffer, 1 reassemble it */
    uint64_t jumbo_bytes;   /* reassemble: arena bytes set aside for reassembled frames (0 = auto) */
    uint32_t spin_us;       /* interrupt mode: keep polling this long after the last packet before blocking */
} capfan_efvi_opts;

typedef struct capfan_efvi_counters {
    uint64_t discards[8];     /* by EF_EVENT_RX_DISCARD_* reason: csum, mcast, crc, trunc, rights, ev_error, other, inner csum */
    uint64_t no_desc_trunc;   /* RX_NO_DESC_TRUNC events */
    uint64_t resets;          /* RESET events */
    uint64_t jumbo;           /* frames that spanned several buffers */
    uint64_t rx_multi;        /* RX_MULTI events */
    uint64_t hwts_unsynced;   /* hardware timestamps without CLOCK_IN_SYNC */
    uint64_t reposted;        /* buffers posted to the NIC */
    uint64_t held_back;       /* refills short of buffers because consumers held them */
    uint64_t jumbo_reassembled; /* multi-buffer frames copied whole into the jumbo area */
    uint64_t jumbo_no_room;   /* ... published cut to their first buffer: the jumbo area was held by consumers */
    uint64_t primes;          /* interrupt mode: times the VIs were primed before blocking */
    uint64_t wakeups;         /* interrupt mode: times the driver fd woke the source */
} capfan_efvi_counters;

/* The ring's arena becomes the NIC's packet memory: the source needs its producer at open. */
capfan_source *capfan_efvi_open(const capfan_efvi_opts *o, capfan_producer *p);
int capfan_efvi_counters_get(capfan_source *s, capfan_efvi_counters *out);
/* 1 when this build's ef_vi layer was compiled against capfan's test emulation (tests only). */
int capfan_efvi_emulated(void);

/* Backends compiled into this build, e.g. "pcap afpacket afxdp". */
const char *capfan_source_backends(void);

#ifdef __cplusplus
}
#endif
#endif

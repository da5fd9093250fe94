/* capfan's own declaration of the public Myricom/CSPi SNF (Sniffer10G) API, version 8.
 *
 * This is NOT the vendor's snf.h and contains none of its text: it lists, in capfan's words,
 * only the types and functions capfan calls, written from the publicly documented API (the
 * CSPi SNF reference documentation for API version 8, and open consumers of it: libpcap's
 * pcap-snf.c, go-snf, Arkime, PF_RING). The library is loaded at run time with dlopen(), so no
 * vendor header or library is needed to build capfan.
 *
 * Conventions of the API: every function returns 0 on success or a positive errno value.
 * Layouts are those of API 8 on LP64; older APIs (e.g. 3) have a different receive request,
 * which is why capfan refuses a library that speaks another version.
 */
#ifndef CAPFAN_SNF_ABI_H
#define CAPFAN_SNF_ABI_H

#include <stdint.h>

#define CAPFAN_SNF_API 0x0008u          /* the API version capfan is written against */

/* open flags */
#define CAPFAN_SNF_F_PSHARED 0x1        /* rings of one port may be shared by several processes */
#define CAPFAN_SNF_F_AGGREGATE_PORTMASK 0x2
#define CAPFAN_SNF_F_RX_DUPLICATE 0x300 /* every ring gets every packet (host copy) */

/* RSS selection */
#define CAPFAN_SNF_RSS_IP 0x01
#define CAPFAN_SNF_RSS_SRC_PORT 0x10
#define CAPFAN_SNF_RSS_DST_PORT 0x20

typedef struct capfan_snf_handle *capfan_snf_handle_t; /* opaque to the caller */
typedef struct capfan_snf_ring *capfan_snf_ring_t;     /* opaque to the caller */

/* RSS parameters: mode 0 = flags, 1 = a user hash function. */
struct capfan_snf_rss_params {
    int mode;
    union {
        int rss_flags;
        struct {
            int (*hash_fn)(void *req, void *ctx, uint32_t *hash);
            void *ctx;
        } fn;
    } params;
};

/* One received packet (40 bytes on LP64). */
struct capfan_snf_recv_req {
    void *pkt_addr;       /* start of the packet in the library's data ring */
    uint32_t length;      /* packet length without the CRC */
    uint64_t timestamp;   /* hardware timestamp, ns since the epoch */
    uint32_t portnum;     /* port the packet arrived on */
    uint32_t length_data; /* bytes the packet occupies in the data ring (what return_many counts) */
    uint32_t hw_hash;     /* the NIC's hash of the packet */
};

/* Borrowed/available space of a ring, in data-ring bytes. */
struct capfan_snf_ring_qinfo {
    uintptr_t q_avail;
    uintptr_t q_borrowed;
    uintptr_t q_free;
};

/* Ring counters. The nic_* ones are counted before the packets are spread over rings (the
 * same values on every ring of a port) and are refreshed periodically by the library. */
struct capfan_snf_ring_stats {
    uint64_t nic_pkt_recv;
    uint64_t nic_pkt_overflow;
    uint64_t nic_pkt_bad;
    uint64_t ring_pkt_recv;
    uint64_t ring_pkt_overflow;  /* this ring was full */
    uint64_t nic_bytes_recv;
    uint64_t snf_pkt_overflow;   /* the library's shared buffering was full */
    uint64_t nic_pkt_dropped;
};

/* Port list (API 8 layout, 48 bytes). */
struct capfan_snf_ifaddrs {
    struct capfan_snf_ifaddrs *next;
    const char *name;
    uint32_t portnum;
    int maxrings;
    uint8_t macaddr[6];
    uint8_t pad[2];
    int maxinject;
    int link_state;
    uint64_t link_speed;
};

/* Function types of the symbols capfan resolves (names in the library: "snf_" + the part
 * after capfan_snf_fn_). */
typedef int (*capfan_snf_fn_init)(uint16_t api_version);
typedef uint16_t (*capfan_snf_fn_version_api)(void);
typedef int (*capfan_snf_fn_set_app_id)(int32_t id);
typedef int (*capfan_snf_fn_getifaddrs)(struct capfan_snf_ifaddrs **out);
typedef void (*capfan_snf_fn_freeifaddrs)(struct capfan_snf_ifaddrs *p);
typedef int (*capfan_snf_fn_open)(uint32_t portnum, int num_rings, const struct capfan_snf_rss_params *rss,
                                  int64_t dataring_size, int flags, capfan_snf_handle_t *h);
typedef int (*capfan_snf_fn_start)(capfan_snf_handle_t h);
typedef int (*capfan_snf_fn_close)(capfan_snf_handle_t h);
typedef int (*capfan_snf_fn_ring_open_id)(capfan_snf_handle_t h, int id, capfan_snf_ring_t *r);
typedef int (*capfan_snf_fn_ring_close)(capfan_snf_ring_t r);
typedef int (*capfan_snf_fn_ring_recv)(capfan_snf_ring_t r, int timeout_ms, struct capfan_snf_recv_req *req);
typedef int (*capfan_snf_fn_ring_recv_many)(capfan_snf_ring_t r, int timeout_ms, struct capfan_snf_recv_req *vec,
                                            int nreq_in, int *nreq_out, struct capfan_snf_ring_qinfo *qinfo);
typedef int (*capfan_snf_fn_ring_return_many)(capfan_snf_ring_t r, uint32_t data_qlen,
                                              struct capfan_snf_ring_qinfo *qinfo);
typedef int (*capfan_snf_fn_ring_getstats)(capfan_snf_ring_t r, struct capfan_snf_ring_stats *st);

#endif

/* TEST EMULATION -- NOT Onload's header.
 * capfan's own minimal declarations of the subset of the ef_vi API (Xilinx-CNS/onload,
 * etherfabric headers) that capfan/_core/src_efvi.c uses, written from the documented function and
 * macro names only. Types, layouts and constant values are capfan's and differ from Onload's;
 * they only make sense together with tests/emul/efvi/emul_efvi.c. Never install these. */
#ifndef CAPFAN_EMUL_EF_VI_H
#define CAPFAN_EMUL_EF_VI_H

#include <stddef.h>
#include <stdint.h>

typedef int ef_driver_handle;
typedef uint64_t ef_addr;
typedef int ef_request_id;

typedef struct ef_pd { int emul_ifindex; char emul_name[32]; } ef_pd;
enum ef_pd_flags { EF_PD_DEFAULT = 0 };

typedef struct ef_memreg { uint8_t *emul_base; size_t emul_len; ef_addr emul_dma; } ef_memreg;

struct emul_vi;
typedef struct ef_vi { struct emul_vi *emul; } ef_vi;
typedef struct ef_vi_set { int emul_id; int emul_n; } ef_vi_set;

enum ef_vi_flags {
    EF_VI_FLAGS_DEFAULT = 0,
    EF_VI_RX_TIMESTAMPS = 0x10000,
    EF_VI_RX_EVENT_MERGE = 0x200000,
};

#define EF_VI_RECEIVE_BATCH 15
#define EF_VI_DMA_ALIGN 64

/* event types, in the documented order */
enum {
    EF_EVENT_TYPE_RX, EF_EVENT_TYPE_TX, EF_EVENT_TYPE_RX_DISCARD, EF_EVENT_TYPE_TX_ERROR,
    EF_EVENT_TYPE_RX_NO_DESC_TRUNC, EF_EVENT_TYPE_SW, EF_EVENT_TYPE_OFLOW, EF_EVENT_TYPE_TX_WITH_TIMESTAMP,
    EF_EVENT_TYPE_RX_PACKED_STREAM, EF_EVENT_TYPE_RX_MULTI, EF_EVENT_TYPE_TX_ALT,
    EF_EVENT_TYPE_RX_MULTI_DISCARD, EF_EVENT_TYPE_RESET, EF_EVENT_TYPE_RX_MULTI_PKTS,
    EF_EVENT_TYPE_RX_REF, EF_EVENT_TYPE_RX_REF_DISCARD,
};

/* RX discard reasons */
enum {
    EF_EVENT_RX_DISCARD_CSUM_BAD, EF_EVENT_RX_DISCARD_MCAST_MISMATCH, EF_EVENT_RX_DISCARD_CRC_BAD,
    EF_EVENT_RX_DISCARD_TRUNC, EF_EVENT_RX_DISCARD_RIGHTS, EF_EVENT_RX_DISCARD_EV_ERROR,
    EF_EVENT_RX_DISCARD_OTHER, EF_EVENT_RX_DISCARD_INNER_CSUM_BAD, EF_EVENT_RX_DISCARD_MAX,
};

#define EF_EVENT_FLAG_SOP 0x1
#define EF_EVENT_FLAG_CONT 0x2

typedef union {
    struct { unsigned type; } generic;
    struct { unsigned type, q_id, rq_id, len, flags; } rx;
    struct { unsigned type, q_id, rq_id, len, flags, subtype; } rx_discard;
    struct { unsigned type, q_id; } rx_no_desc_trunc;
    struct { unsigned type, q_id, n_descs, flags, subtype; } rx_multi;
} ef_event;

#define EF_EVENT_TYPE(e) ((e).generic.type)
#define EF_EVENT_RX_BYTES(e) ((e).rx.len)
#define EF_EVENT_RX_Q_ID(e) ((e).rx.q_id)
#define EF_EVENT_RX_RQ_ID(e) ((e).rx.rq_id)
#define EF_EVENT_RX_SOP(e) ((e).rx.flags & EF_EVENT_FLAG_SOP)
#define EF_EVENT_RX_CONT(e) ((e).rx.flags & EF_EVENT_FLAG_CONT)
#define EF_EVENT_RX_DISCARD_TYPE(e) ((e).rx_discard.subtype)
#define EF_EVENT_RX_DISCARD_BYTES(e) ((e).rx_discard.len)
#define EF_EVENT_RX_DISCARD_RQ_ID(e) ((e).rx_discard.rq_id)
#define EF_EVENT_RX_DISCARD_SOP(e) ((e).rx_discard.flags & EF_EVENT_FLAG_SOP)
#define EF_EVENT_RX_DISCARD_CONT(e) ((e).rx_discard.flags & EF_EVENT_FLAG_CONT)
#define EF_EVENT_RX_MULTI_DISCARD_TYPE(e) ((e).rx_multi.subtype)

typedef struct ef_precisetime { int64_t tv_sec; uint32_t tv_nsec; uint32_t tv_nsec_frac; uint16_t tv_flags; } ef_precisetime;
#define EF_VI_SYNC_FLAG_CLOCK_SET 1
#define EF_VI_SYNC_FLAG_CLOCK_IN_SYNC 2

typedef struct ef_filter_spec { int emul_kind; int emul_proto; uint32_t emul_host, emul_rhost; int emul_port, emul_rport; } ef_filter_spec;
typedef struct ef_filter_cookie { int emul_id; } ef_filter_cookie;
enum ef_filter_flags { EF_FILTER_FLAG_NONE = 0 };

/* base.h */
int ef_driver_open(ef_driver_handle *dh);
int ef_driver_close(ef_driver_handle dh);
/* pd.h */
int ef_pd_alloc_by_name(ef_pd *pd, ef_driver_handle dh, const char *ifname, enum ef_pd_flags flags);
int ef_pd_free(ef_pd *pd, ef_driver_handle dh);
/* memreg.h */
int ef_memreg_alloc(ef_memreg *mr, ef_driver_handle dh, ef_pd *pd, ef_driver_handle pd_dh, void *mem, size_t len);
int ef_memreg_free(ef_memreg *mr, ef_driver_handle dh);
ef_addr ef_memreg_dma_addr(ef_memreg *mr, size_t offset);
/* vi.h */
int ef_vi_alloc_from_pd(ef_vi *vi, ef_driver_handle vi_dh, ef_pd *pd, ef_driver_handle pd_dh, int evq_capacity,
                        int rxq_capacity, int txq_capacity, ef_vi *evq_opt, ef_driver_handle evq_dh,
                        enum ef_vi_flags flags);
int ef_vi_free(ef_vi *vi, ef_driver_handle dh);
int ef_vi_set_alloc_from_pd(ef_vi_set *set, ef_driver_handle dh, ef_pd *pd, ef_driver_handle pd_dh, int n_vis);
int ef_vi_set_free(ef_vi_set *set, ef_driver_handle dh);
int ef_vi_alloc_from_set(ef_vi *vi, ef_driver_handle vi_dh, ef_vi_set *set, ef_driver_handle set_dh, int index_in_vi_set,
                         int evq_capacity, int rxq_capacity, int txq_capacity, ef_vi *evq_opt,
                         ef_driver_handle evq_dh, enum ef_vi_flags flags);
void ef_filter_spec_init(ef_filter_spec *fs, enum ef_filter_flags flags);
int ef_filter_spec_set_port_sniff(ef_filter_spec *fs, int promiscuous);
int ef_filter_spec_set_unicast_all(ef_filter_spec *fs);
int ef_filter_spec_set_multicast_all(ef_filter_spec *fs);
int ef_filter_spec_set_ip4_local(ef_filter_spec *fs, int protocol, unsigned host_be32, int port_be16);
int ef_filter_spec_set_ip4_full(ef_filter_spec *fs, int protocol, unsigned host_be32, int port_be16,
                                unsigned rhost_be32, int rport_be16);
int ef_vi_filter_add(ef_vi *vi, ef_driver_handle dh, const ef_filter_spec *fs, ef_filter_cookie *cookie_out);
int ef_vi_set_filter_add(ef_vi_set *set, ef_driver_handle dh, const ef_filter_spec *fs, ef_filter_cookie *cookie_out);
/* ef_vi.h datapath (macros/inlines in Onload; plain functions here) */
int ef_vi_receive_buffer_len(ef_vi *vi);
int ef_vi_receive_prefix_len(ef_vi *vi);
int ef_vi_receive_capacity(ef_vi *vi);
int ef_vi_receive_fill_level(ef_vi *vi);
int ef_vi_receive_init(ef_vi *vi, ef_addr addr, ef_request_id dma_id);
void ef_vi_receive_push(ef_vi *vi);
int ef_eventq_poll(ef_vi *vi, ef_event *evs, int evs_len);
int ef_vi_receive_unbundle(ef_vi *vi, const ef_event *ev, ef_request_id *ids);
int ef_vi_receive_get_bytes(ef_vi *vi, const void *pkt, uint16_t *bytes_out);
int ef_vi_receive_get_precise_timestamp(ef_vi *vi, const void *pkt, ef_precisetime *ts_out);
/* interrupts: the driver handle is a file descriptor to poll() after priming */
unsigned ef_eventq_current(ef_vi *vi);
int ef_vi_prime(ef_vi *vi, ef_driver_handle dh, unsigned current_ptr);

#endif

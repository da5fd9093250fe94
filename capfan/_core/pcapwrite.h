/* capfan pcap/pcapng writer: turns ring batches into capture-file records in a memory buffer
 * (C hot path of the `recorder` analyzer). One writer per consumer process; not thread-safe.
 *
 * Formats: classic pcap with nanosecond (default) or microsecond timestamps, or pcapng (one
 * SHB per file, one IDB per ring port as ports appear, EPBs in nanoseconds via if_tsresol=9).
 * The caller writes the finished buffer to a file; the writer never does I/O.
 *
 * Per call to capfan_pcapw_add() the writer keeps a table of the records it produced (batch
 * index, byte range in the buffer). A lossy consumer checks capfan_consumer_torn() after the
 * call and hands the count to capfan_pcapw_drop_torn(), which cuts the records of overwritten
 * packets out of the buffer before any byte of them reaches a file.
 */
#ifndef CAPFAN_PCAPWRITE_H
#define CAPFAN_PCAPWRITE_H

#include <stdint.h>

#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

enum capfan_pcapw_format {
    CAPFAN_PCAPW_PCAP_NS = 0, /* classic pcap, magic 0xa1b23c4d: nanosecond timestamps */
    CAPFAN_PCAPW_PCAP_US = 1, /* classic pcap, magic 0xa1b2c3d4: microsecond timestamps */
    CAPFAN_PCAPW_PCAPNG = 2,  /* pcapng, if_tsresol = 9 (nanoseconds) on every interface */
};

/* What happened to one packet of the last capfan_pcapw_add() call. */
enum capfan_pcapw_outcome {
    CAPFAN_PCAPW_WRITTEN = 0,
    CAPFAN_PCAPW_FILTERED = 1,  /* did not pass the BPF filter */
    CAPFAN_PCAPW_SKIPPED = 2,   /* pcap file: link type differs from the file's */
    CAPFAN_PCAPW_BAD = 3,       /* descriptor pointed outside the arena (torn while read) */
};

typedef struct capfan_pcapw_opts {
    uint32_t format;       /* capfan_pcapw_format */
    uint32_t snaplen;      /* longest record written; 0 = 65535 */
    uint32_t linktype;     /* link type the filter is compiled for first; a pcap file's link
                              type until the first packet fixes it */
    uint32_t _pad;
    uint64_t rotate_size;  /* a file is full before it would exceed this many bytes; 0 = never */
    const char *filter;    /* tcpdump filter expression; NULL or "" = every packet */
} capfan_pcapw_opts;

/* One packet of the last add call: its batch descriptor index, what happened to it and, when
 * written, its record's byte range [start, end) in the buffer. */
typedef struct capfan_pcapw_rec {
    uint32_t idx;
    uint32_t outcome;      /* capfan_pcapw_outcome */
    uint64_t start;
    uint64_t end;
} capfan_pcapw_rec;

typedef struct capfan_pcapw_stats {
    uint64_t packets;          /* records written (torn ones taken back) */
    uint64_t bytes;            /* packet bytes in those records (after snaplen) */
    uint64_t filtered;         /* rejected by the filter */
    uint64_t skipped_linktype; /* pcap: packets of a link type other than the file's */
    uint64_t torn;             /* overwritten before they could be written: never written */
    uint64_t file_bytes;       /* size of the current file so far (buffered bytes included) */
    uint64_t file_packets;     /* records in the current file */
    uint32_t interfaces;       /* pcapng: IDBs in the current file */
    uint32_t linktype;         /* pcap: the files' link type (0xffffffff until known) */
    uint32_t filter_failed_linktype; /* first link type the filter could not be compiled for
                                        (its packets count as filtered); 0xffffffff = none */
    uint32_t _pad;
} capfan_pcapw_stats;

typedef struct capfan_pcapw capfan_pcapw;

/* A writer; NULL with capfan_last_error() set (e.g. CAPFAN_EINVAL quoting libpcap on a bad
 * filter, CAPFAN_ENOTSUP when built without libpcap and a filter is given). */
capfan_pcapw *capfan_pcapw_new(const capfan_pcapw_opts *o);
/* Free the writer, its buffer and its compiled filters (NULL is fine). */
void capfan_pcapw_free(capfan_pcapw *w);
/* Start a new file: appends its header (pcapng SHB; the pcap header may wait for the first
 * packet to learn the link type) and forgets the previous file's interfaces. */
int capfan_pcapw_begin_file(capfan_pcapw *w);
/* Finish the current file: a pcap header still pending is appended (an empty but valid file). */
void capfan_pcapw_end_file(capfan_pcapw *w);
/* Append records for selected packets from..nsel-1 of batch b read from ring r. Returns the
 * selection index it stopped at: nsel when all were taken, less when the file reached
 * rotate_size (write the buffer, begin a new file, call again from there); -error on failure. */
int64_t capfan_pcapw_add(capfan_pcapw *w, capfan_ring *r, const capfan_batch *b, uint32_t from);
/* Take back the records of the last add for batch descriptors below `torn` (the value of
 * capfan_consumer_torn after the add); returns how many packets were torn. */
uint32_t capfan_pcapw_drop_torn(capfan_pcapw *w, uint32_t torn);
/* Packets of the last add call and what became of them (valid until the next add). */
const capfan_pcapw_rec *capfan_pcapw_records(capfan_pcapw *w, uint32_t *n);
/* The bytes ready to be written; *len gets their count. */
const uint8_t *capfan_pcapw_buffer(capfan_pcapw *w, uint64_t *len);
/* Forget the buffered bytes once the caller wrote them out. */
void capfan_pcapw_clear(capfan_pcapw *w);
/* Copy the counters out. */
void capfan_pcapw_get_stats(capfan_pcapw *w, capfan_pcapw_stats *out);

#ifdef __cplusplus
}
#endif
#endif

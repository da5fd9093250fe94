/* Internal: what every backend implements (not a public header). */
#ifndef CAPFAN_SOURCE_IMPL_H
#define CAPFAN_SOURCE_IMPL_H

#include "source.h"

typedef struct capfan_source_ops {
    const char *kind;
    uint32_t (*linktype)(capfan_source *s, uint32_t port);
    int (*prepare)(capfan_source *s, capfan_producer *p);
    int (*recv)(capfan_source *s, capfan_producer *p, uint32_t max, int64_t timeout_ns);
    void (*stats)(capfan_source *s); /* refresh kernel counters into s->st */
    void (*close)(capfan_source *s);
} capfan_source_ops;

/* Backends embed this as their first member. */
struct capfan_source {
    const capfan_source_ops *ops;
    capfan_source_stats st;
};

uint64_t capfan_now_realtime_ns(void);
uint64_t capfan_now_monotonic_ns(void);

#endif

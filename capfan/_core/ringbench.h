/* C loops behind `capfan bench ring`: a synthetic producer, a C consumer, and the
 * per-consumer-copy baseline (one SPSC shared-memory queue per consumer). */
#ifndef CAPFAN_RINGBENCH_H
#define CAPFAN_RINGBENCH_H

#include <stdint.h>
#include "ring.h"

/* Publish npkts synthetic UDP/IPv4 frames of `size` bytes over `nflows` flows, flushing every
 * `batch`. Returns packets published; *cpu_ns = this thread's CPU time. */
int64_t capfan_bench_produce(capfan_producer *p, uint64_t npkts, uint32_t size, uint32_t nflows,
                             uint32_t batch, uint64_t *cpu_ns);
/* Consume until npkts descriptors were accounted (delivered+dropped+filtered) or the ring stays
 * idle for idle_timeout_ns; reads every delivered packet's first bytes into *checksum.
 * Returns packets delivered; *cpu_ns = this thread's CPU time. */
int64_t capfan_bench_consume(capfan_consumer *c, uint64_t npkts, int64_t idle_timeout_ns,
                             uint64_t *cpu_ns, uint64_t *checksum);

/* Baseline: nqueues SPSC queues of `slots` fixed slots in one shared-memory file. */
int capfan_bench_copyq_create(const char *path, uint32_t nqueues, uint32_t slots, uint32_t slot_bytes);
/* Copy each of npkts frames into every queue (waits while a queue is full). */
int64_t capfan_bench_copyq_produce(const char *path, uint64_t npkts, uint32_t size, uint64_t *cpu_ns);
/* Read npkts frames from queue q. */
int64_t capfan_bench_copyq_consume(const char *path, uint32_t q, uint64_t npkts, uint64_t *cpu_ns,
                                   uint64_t *checksum);

#endif

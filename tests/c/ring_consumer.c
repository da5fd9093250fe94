/* Minimal C consumer: proves a C analyzer needs nothing but capfan's ring.h.
 * usage: ring_consumer RING_PATH NAME COUNT -> prints "<packets> <bytes>" */
#include <stdio.h>
#include <stdlib.h>

#include "ring.h"

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    capfan_consumer_opts o = {.name = argv[2], .policy = CAPFAN_RELIABLE, .stall_budget_us = 10000000};
    capfan_consumer *c = capfan_consumer_attach(argv[1], &o);
    if (!c) {
        fprintf(stderr, "attach: %s\n", capfan_last_error());
        return 1;
    }
    unsigned long long want = strtoull(argv[3], NULL, 10), got = 0, bytes = 0;
    capfan_batch b;
    while (got < want) {
        int n = capfan_consumer_next(c, 1024, 10000000000LL, &b);
        if (n <= 0) break;
        for (uint32_t i = 0; i < b.nsel; i++) {
            const capfan_desc *d = &b.desc[b.sel ? b.sel[i] : i];
            const uint8_t *pkt = b.arena + d->off; /* in place, no copy */
            bytes += d->caplen + (pkt[0] & 0); /* touch the packet */
        }
        got += b.nsel;
        capfan_consumer_release(c, &b);
    }
    printf("%llu %llu\n", got, bytes);
    capfan_consumer_free(c);
    return 0;
}

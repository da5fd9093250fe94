/* Myricom/CSPi SNF backend: one capfan source reads one SNF ring of a port.
 *
 * libsnf is bound at run time (dlopen + dlsym) against capfan's own declaration of the
 * documented API in snf_abi.h, so building capfan needs neither the vendor's header nor its
 * library. The library path is opts.lib_path, else $CAPFAN_SNF_LIB, else the vendor's install
 * directory (/opt/snf/lib/libsnf.so).
 *
 * Version: capfan speaks API 8 (struct layouts depend on it). A library that reports another
 * version through snf_version_api(), or whose snf_init() refuses version 8, is refused with a
 * message naming both versions.
 *
 * Handles: SNF opens a port once per process (snf_open) and then hands out rings by id. capfan
 * sources of one process that read rings of the same (library, port, application id) share one
 * handle, reference-counted; the last one to close closes the port.
 *
 * Several applications: with an application id (snf_set_app_id, before snf_open) the library
 * delivers every packet to each distinct id, so capfan can coexist with another SNF
 * application on the same port, or run two capfan applications on it.
 *
 * Receive: with snf_ring_recv_many/snf_ring_return_many (borrow-many) packets are borrowed in
 * batches, each copied once into the ring arena, then all returned by their data-ring bytes;
 * without them, snf_ring_recv hands over one packet at a time (the next call releases it).
 * Timestamps are the NIC's (ns) and carry CAPFAN_F_HWTS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "source_impl.h"
#include "snf_abi.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNF_DEFAULT_LIB "/opt/snf/lib/libsnf.so"
#define SNF_BATCH 64

typedef struct snf_lib {
    char path[512];
    void *dl;
    capfan_snf_fn_init init;
    capfan_snf_fn_version_api version_api;     /* optional */
    capfan_snf_fn_set_app_id set_app_id;       /* optional (needed only with an app id) */
    capfan_snf_fn_getifaddrs getifaddrs;       /* optional (needed only with ifname) */
    capfan_snf_fn_freeifaddrs freeifaddrs;
    capfan_snf_fn_open open;
    capfan_snf_fn_start start;
    capfan_snf_fn_close close;
    capfan_snf_fn_ring_open_id ring_open_id;
    capfan_snf_fn_ring_close ring_close;
    capfan_snf_fn_ring_recv ring_recv;
    capfan_snf_fn_ring_recv_many ring_recv_many;     /* optional */
    capfan_snf_fn_ring_return_many ring_return_many; /* optional */
    capfan_snf_fn_ring_getstats ring_getstats;
    int initialised;
    struct snf_lib *next;
} snf_lib;

/* One opened port of one application id, shared by the sources of this process. */
typedef struct snf_port {
    snf_lib *lib;
    uint32_t portnum;
    int32_t app_id, num_rings;
    capfan_snf_handle_t h;
    int refs;
    struct snf_port *next;
} snf_port;

typedef struct snf_src {
    struct capfan_source base;
    snf_port *port;
    capfan_snf_ring_t ring;
    int batched;
    int queue;
    uint16_t dport;
    uint32_t snaplen;
    capfan_producer *prod;
    struct capfan_snf_recv_req vec[SNF_BATCH];
} snf_src;

static pthread_mutex_t snf_lock = PTHREAD_MUTEX_INITIALIZER;
static snf_lib *snf_libs;
static snf_port *snf_ports;

static const char *errname(int rc) {
    switch (rc) {
    case EINVAL: return "EINVAL";
    case EBUSY: return "EBUSY";
    case ENOMEM: return "ENOMEM";
    case E2BIG: return "E2BIG";
    case ENXIO: return "ENXIO";
    case ENODEV: return "ENODEV";
    case EAGAIN: return "EAGAIN";
    case EINTR: return "EINTR";
    case ENOENT: return "ENOENT";
    case EPERM: return "EPERM";
    default: return "error";
    }
}

/* Load (once per path) and resolve the library; NULL with the error set. Called locked. */
static snf_lib *lib_load(const char *path) {
    for (snf_lib *l = snf_libs; l; l = l->next)
        if (strcmp(l->path, path) == 0) return l;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *why = dlerror();
        capfan_set_error(CAPFAN_ENOTSUP,
                         "cannot load the SNF library %s (%s); install Myricom/CSPi SNF or point "
                         "CAPFAN_SNF_LIB (or the lib option) at libsnf.so", path, why ? why : "dlopen failed");
        return NULL;
    }
    snf_lib *l = calloc(1, sizeof *l);
    if (!l) {
        dlclose(dl);
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    snprintf(l->path, sizeof l->path, "%s", path);
    l->dl = dl;
    struct { const char *name; void **slot; int required; } syms[] = {
        {"snf_init", (void **)&l->init, 1},
        {"snf_version_api", (void **)&l->version_api, 0},
        {"snf_set_app_id", (void **)&l->set_app_id, 0},
        {"snf_getifaddrs", (void **)&l->getifaddrs, 0},
        {"snf_freeifaddrs", (void **)&l->freeifaddrs, 0},
        {"snf_open", (void **)&l->open, 1},
        {"snf_start", (void **)&l->start, 1},
        {"snf_close", (void **)&l->close, 1},
        {"snf_ring_open_id", (void **)&l->ring_open_id, 1},
        {"snf_ring_close", (void **)&l->ring_close, 1},
        {"snf_ring_recv", (void **)&l->ring_recv, 1},
        {"snf_ring_recv_many", (void **)&l->ring_recv_many, 0},
        {"snf_ring_return_many", (void **)&l->ring_return_many, 0},
        {"snf_ring_getstats", (void **)&l->ring_getstats, 1},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].slot = dlsym(dl, syms[i].name);
        if (!*syms[i].slot && syms[i].required) {
            capfan_set_error(CAPFAN_ENOTSUP, "%s is not a usable SNF library: it lacks %s", path, syms[i].name);
            dlclose(dl);
            free(l);
            return NULL;
        }
    }
    if (!l->ring_recv_many || !l->ring_return_many) l->ring_recv_many = NULL, l->ring_return_many = NULL;
    l->next = snf_libs;
    snf_libs = l;
    return l;
}

/* snf_init with capfan's API version, refusing another version clearly. Called locked. */
static int lib_init(snf_lib *l) {
    if (l->initialised) return 0;
    if (l->version_api) {
        unsigned v = l->version_api();
        if (v != CAPFAN_SNF_API)
            return capfan_set_error(CAPFAN_ENOTSUP,
                                    "SNF API version mismatch: %s speaks API 0x%04x, capfan is written for "
                                    "API 0x%04x (SNF 3.x/5.x); use a matching SNF release", l->path, v, CAPFAN_SNF_API);
    }
    int rc = l->init((uint16_t)CAPFAN_SNF_API);
    if (rc) {
        if (rc == EINVAL)
            return capfan_set_error(CAPFAN_ENOTSUP,
                                    "SNF API version mismatch: %s refused API 0x%04x (snf_init: EINVAL)%s; capfan "
                                    "is written for API 0x%04x", l->path, CAPFAN_SNF_API,
                                    l->version_api ? "" : " and does not report its own version", CAPFAN_SNF_API);
        return capfan_set_error(CAPFAN_ESYS, "snf_init(0x%04x) in %s failed: %s (%d)%s", CAPFAN_SNF_API, l->path,
                                strerror(rc), rc, rc == ENXIO ? " - the SNF library and driver do not match" : "");
    }
    l->initialised = 1;
    return 0;
}

/* Port number of an SNF interface name. Called locked. */
static int port_by_name(snf_lib *l, const char *ifname, uint32_t *portnum) {
    if (!l->getifaddrs || !l->freeifaddrs)
        return capfan_set_error(CAPFAN_ENOTSUP, "%s cannot list its ports (no snf_getifaddrs); give the port number", l->path);
    struct capfan_snf_ifaddrs *list = NULL;
    int rc = l->getifaddrs(&list);
    if (rc) return capfan_set_error(CAPFAN_ESYS, "snf_getifaddrs: %s", strerror(rc));
    char names[256] = "";
    int found = 0;
    for (struct capfan_snf_ifaddrs *a = list; a; a = a->next) {
        if (a->name && strcmp(a->name, ifname) == 0) {
            *portnum = a->portnum;
            found = 1;
            break;
        }
        if (a->name && strlen(names) + strlen(a->name) + 2 < sizeof names) {
            if (names[0]) strcat(names, " ");
            strcat(names, a->name);
        }
    }
    l->freeifaddrs(list);
    if (!found)
        return capfan_set_error(CAPFAN_EINVAL, "%s is not an SNF port (SNF ports: %s)", ifname, names[0] ? names : "none");
    return 0;
}

/* Get (or open) the shared handle of (lib, port, app id). Called locked. */
static snf_port *port_get(snf_lib *l, uint32_t portnum, int32_t app_id, int32_t num_rings, int64_t dataring,
                          int32_t flags) {
    for (snf_port *p = snf_ports; p; p = p->next) {
        if (p->lib != l || p->portnum != portnum || p->app_id != app_id) continue;
        if (num_rings && p->num_rings != num_rings) {
            capfan_set_error(CAPFAN_EINVAL, "SNF port %u (application id %d) is already open in this process "
                             "with %d rings, not %d", portnum, app_id, p->num_rings, num_rings);
            return NULL;
        }
        p->refs++;
        return p;
    }
    if (app_id >= 0) {
        if (!l->set_app_id) {
            capfan_set_error(CAPFAN_ENOTSUP, "%s has no snf_set_app_id: application ids need SNF API 8", l->path);
            return NULL;
        }
        int rc = l->set_app_id(app_id);
        if (rc) {
            capfan_set_error(CAPFAN_EINVAL, "snf_set_app_id(%d): %s", app_id, strerror(rc));
            return NULL;
        }
    }
    if (flags < 0) flags = num_rings > 1 ? CAPFAN_SNF_F_PSHARED : 0;
    capfan_snf_handle_t h = NULL;
    int rc = l->open(portnum, num_rings, NULL, dataring, flags, &h);
    if (rc) {
        const char *hint = rc == EBUSY ? " - the port is open in another process (use an application id, or "
                                         "the same one with shared rings)"
                         : rc == E2BIG ? " - data ring too large"
                         : rc == ENODEV || rc == ENXIO ? " - no such SNF port" : "";
        capfan_set_error(rc == EBUSY ? CAPFAN_EBUSY : CAPFAN_ESYS, "snf_open(port %u, %d rings, app id %d): %s (%s)%s",
                         portnum, num_rings, app_id, strerror(rc), errname(rc), hint);
        return NULL;
    }
    snf_port *p = calloc(1, sizeof *p);
    if (!p) {
        l->close(h);
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    p->lib = l;
    p->portnum = portnum;
    p->app_id = app_id;
    p->num_rings = num_rings;
    p->h = h;
    p->refs = 1;
    p->next = snf_ports;
    snf_ports = p;
    return p;
}

static void port_put(snf_port *p) {
    if (--p->refs > 0) return;
    for (snf_port **pp = &snf_ports; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    p->lib->close(p->h);
    free(p);
}

/* ---------------------------------------------------------------- source ops */
static uint32_t snf_linktype(capfan_source *base, uint32_t port) {
    (void)base; (void)port;
    return 1; /* SNF delivers Ethernet frames */
}

static int snf_prepare(capfan_source *base, capfan_producer *p) {
    snf_src *s = (snf_src *)base;
    capfan_ring_stats rs;
    capfan_ring_stats_get(capfan_producer_ring(p), &rs);
    s->prod = p;
    s->snaplen = rs.snaplen ? rs.snaplen : CAPFAN_MAX_CAPLEN;
    if (s->dport < CAPFAN_PORTS) capfan_producer_set_linktype(p, s->dport, 1);
    return 0;
}

/* Copy one SNF packet into the ring; 1 if published. */
static int publish(snf_src *s, capfan_producer *p, const struct capfan_snf_recv_req *r) {
    capfan_source_stats *st = &s->base.st;
    st->packets++;
    st->bytes += r->length;
    st->hw_timestamps++;
    uint32_t cl = r->length < s->snaplen ? r->length : s->snaplen;
    if (cl < r->length) st->truncated++;
    uint8_t *dst = capfan_producer_reserve(p, cl, r->length, -1);
    if (!dst) {
        st->ring_drops++;
        return 0;
    }
    memcpy(dst, r->pkt_addr, cl);
    capfan_producer_commit(p, r->timestamp, cl, r->length, s->dport, CAPFAN_F_HWTS);
    st->published++;
    return 1;
}

static int recv_error(snf_src *s, const char *fn, int rc) {
    return capfan_set_error(CAPFAN_ESYS, "%s on SNF port %u ring %d: %s (%s)", fn, s->port->portnum, s->queue,
                            strerror(rc), errname(rc));
}

static int snf_recv(capfan_source *base, capfan_producer *p, uint32_t max, int64_t timeout_ns) {
    snf_src *s = (snf_src *)base;
    snf_lib *l = s->port->lib;
    if (p != s->prod) snf_prepare(base, p);
    /* the API waits in ms and returns EAGAIN when nothing came; round waits up */
    int tmo = timeout_ns <= 0 ? 0 : timeout_ns >= 3600000000000ll ? 3600000 : (int)((timeout_ns + 999999) / 1000000);
    int done = 0, rc = 0;
    while ((uint32_t)done < max) {
        if (s->batched) {
            int want = max - (uint32_t)done < SNF_BATCH ? (int)(max - (uint32_t)done) : SNF_BATCH, got = 0;
            struct capfan_snf_ring_qinfo qi;
            rc = l->ring_recv_many(s->ring, done ? 0 : tmo, s->vec, want, &got, &qi);
            if (rc) break;
            uint64_t bytes = 0;
            for (int i = 0; i < got; i++) {
                done += publish(s, p, &s->vec[i]) ? 1 : 0;
                bytes += s->vec[i].length_data;
            }
            if (got) {
                rc = l->ring_return_many(s->ring, (uint32_t)bytes, &qi);
                if (rc) {
                    capfan_producer_flush(p);
                    return recv_error(s, "snf_ring_return_many", rc);
                }
            }
            if (got < want) break;
        } else {
            struct capfan_snf_recv_req r;
            rc = l->ring_recv(s->ring, done ? 0 : tmo, &r);
            if (rc) break;
            done += publish(s, p, &r) ? 1 : 0;
        }
    }
    capfan_producer_flush(p);
    if (rc && rc != EAGAIN && rc != EINTR && done == 0)
        return recv_error(s, s->batched ? "snf_ring_recv_many" : "snf_ring_recv", rc);
    return done;
}

static void snf_stats(capfan_source *base) {
    snf_src *s = (snf_src *)base;
    struct capfan_snf_ring_stats rs;
    memset(&rs, 0, sizeof rs);
    if (s->port->lib->ring_getstats(s->ring, &rs) != 0) return;
    capfan_source_stats *st = &s->base.st;
    st->nic_drops = rs.nic_pkt_dropped + rs.nic_pkt_overflow;
    st->ring_overflows = rs.ring_pkt_overflow;
    st->shared_overflows = rs.snf_pkt_overflow;
    st->kernel_drops = rs.ring_pkt_overflow; /* what this queue lost before capfan saw it */
}

static void snf_close_src(capfan_source *base) {
    snf_src *s = (snf_src *)base;
    pthread_mutex_lock(&snf_lock);
    if (s->ring) s->port->lib->ring_close(s->ring);
    if (s->port) port_put(s->port);
    pthread_mutex_unlock(&snf_lock);
    free(s);
}

static const capfan_source_ops snf_ops = {
    .kind = "snf",
    .linktype = snf_linktype,
    .prepare = snf_prepare,
    .recv = snf_recv,
    .stats = snf_stats,
    .close = snf_close_src,
};

int capfan_snf_batched(capfan_source *s) {
    return s && s->ops == &snf_ops ? ((snf_src *)s)->batched : 0;
}

capfan_source *capfan_snf_open(const capfan_snf_opts *o) {
    if (!o) {
        capfan_set_error(CAPFAN_EINVAL, "SNF options missing");
        return NULL;
    }
    if (o->num_rings < 0 || o->queue < 0 || (o->num_rings && o->queue >= o->num_rings)) {
        capfan_set_error(CAPFAN_EINVAL, "SNF ring %d does not exist: the port is opened with %d rings (0..%d)",
                         o->queue, o->num_rings, o->num_rings - 1);
        return NULL;
    }
    if (o->dataring_size != 0 && o->dataring_size < (1 << 20)) {
        capfan_set_error(CAPFAN_EINVAL, "SNF data ring size %lld bytes is below 1 MiB", (long long)o->dataring_size);
        return NULL;
    }
    const char *path = o->lib_path && *o->lib_path ? o->lib_path : getenv("CAPFAN_SNF_LIB");
    if (!path || !*path) path = SNF_DEFAULT_LIB;
    snf_src *s = calloc(1, sizeof *s);
    if (!s) {
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    s->base.ops = &snf_ops;
    s->queue = o->queue;
    s->dport = o->port;
    pthread_mutex_lock(&snf_lock);
    snf_lib *l = lib_load(path);
    uint32_t portnum = o->portnum;
    if (!l || lib_init(l) || (o->ifname && *o->ifname && port_by_name(l, o->ifname, &portnum))) goto fail;
    s->port = port_get(l, portnum, o->app_id < 0 ? -1 : o->app_id, o->num_rings, o->dataring_size, o->flags);
    if (!s->port) goto fail;
    int rc = l->ring_open_id(s->port->h, o->queue, &s->ring);
    if (rc) {
        s->ring = NULL;
        capfan_set_error(rc == EBUSY ? CAPFAN_EBUSY : CAPFAN_ESYS, "snf_ring_open_id(ring %d of port %u): %s (%s)%s",
                         o->queue, portnum, strerror(rc), errname(rc),
                         rc == EBUSY ? " - another reader has that ring" : "");
        goto fail;
    }
    rc = l->start(s->port->h);
    if (rc) {
        capfan_set_error(CAPFAN_ESYS, "snf_start(port %u): %s (%s)", portnum, strerror(rc), errname(rc));
        goto fail;
    }
    s->batched = o->batch && l->ring_recv_many != NULL;
    pthread_mutex_unlock(&snf_lock);
    return &s->base;
fail:
    if (s->ring) l->ring_close(s->ring);
    if (s->port) port_put(s->port);
    pthread_mutex_unlock(&snf_lock);
    free(s);
    return NULL;
}

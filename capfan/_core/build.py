"""cffi (API mode) build of capfan's C core into the extension module `capfan._capfan_core`."""
import os
import shutil
import subprocess
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["ring.c", "parse.c", "ringbench.c", "source.c"]
# optional parts: (source file, define, headers it needs, libraries)
OPTIONAL = [
    ("src_pcap.c", "CAPFAN_HAVE_PCAP_SOURCE", [], []),
    ("src_afpacket.c", "CAPFAN_HAVE_AFPACKET", [], []),
    ("bpf.c", "CAPFAN_HAVE_LIBPCAP", ["pcap/pcap.h"], ["pcap"]),
    ("src_snf.c", "CAPFAN_HAVE_SNF", [], ["dl"]),  # libsnf is dlopen()ed at run time
    ("src_afxdp.c", "CAPFAN_HAVE_AFXDP", ["xdp/xsk.h", "xdp/libxdp.h", "bpf/libbpf.h"], ["xdp", "bpf"]),
    # Solarflare/AMD ef_vi: only with Onload's etherfabric headers and libciul installed
    ("src_efvi.c", "CAPFAN_HAVE_EFVI", ["etherfabric/vi.h", "etherfabric/pd.h", "etherfabric/memreg.h"], ["ciul"]),
]


def have_headers(headers, include_dirs=(), marker=None):
    """True if the C compiler finds every header (e.g. libxdp-dev is installed); with `marker`,
    whether that macro is defined after including them (None if the headers are missing)."""
    if not headers:
        return True
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    text = "".join(f"#include <{h}>\n" for h in headers)
    if marker:
        text += f"#ifdef {marker}\ncapfan_marker_defined\n#endif\n"
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write(text + "int main(void){return 0;}\n")
    try:
        r = subprocess.run([cc, "-E", *[f"-I{d}" for d in include_dirs], f.name], capture_output=True, text=True)
        if not marker:
            return r.returncode == 0
        return None if r.returncode else "capfan_marker_defined" in r.stdout
    finally:
        os.unlink(f.name)


# Onload installed outside the compiler's default paths: CAPFAN_ONLOAD_PREFIX=DIR uses DIR/include
# and DIR/lib64 or DIR/lib (linked with an rpath). capfan's ef_vi *test emulation* (tests/emul/efvi,
# marked by CAPFAN_EMUL_EF_VI_H) is refused unless CAPFAN_EFVI_TEST_EMULATION=1, which only the tests
# set when they build a throw-away copy of the core: a product build never compiles against it.
EFVI_EMUL_MARKER = "CAPFAN_EMUL_EF_VI_H"


def onload_dirs():
    """(include dirs, library dirs) from $CAPFAN_ONLOAD_PREFIX (empty when unset)."""
    prefix = os.environ.get("CAPFAN_ONLOAD_PREFIX")
    if not prefix:
        return [], []
    libs = [d for d in (os.path.join(prefix, "lib64"), os.path.join(prefix, "lib")) if os.path.isdir(d)]
    return [os.path.join(prefix, "include")], libs


def efvi_usable(headers, include_dirs):
    """(ok, reason) for compiling src_efvi.c: real Onload headers, or the test emulation when allowed."""
    emulated = have_headers(headers, include_dirs, marker=EFVI_EMUL_MARKER)
    if emulated is None:
        return False, f"headers missing ({' '.join(headers)}; install Onload or set CAPFAN_ONLOAD_PREFIX)"
    if emulated and os.environ.get("CAPFAN_EFVI_TEST_EMULATION") != "1":
        return False, "the etherfabric headers found are capfan's TEST EMULATION, not Onload's"
    if emulated:
        print("capfan build: src_efvi.c compiled against capfan's ef_vi TEST EMULATION (tests only, not a NIC)")
    return True, ""


def configure():
    """Pick the optional backends this machine can build; returns (sources, defines, libraries,
    include dirs, library dirs)."""
    sources, defines, libs, built = list(SOURCES), [], ["pthread"], []
    incs, libdirs = [], []
    for src, define, headers, libraries in OPTIONAL:
        if not os.path.exists(os.path.join(HERE, src)):
            continue
        if src == "src_efvi.c":
            e_incs, e_libdirs = onload_dirs()
            ok, why = efvi_usable(headers, e_incs)
        else:
            e_incs, e_libdirs = [], []
            ok, why = have_headers(headers), f"headers missing ({' '.join(headers)})"
        if ok:
            sources.append(src)
            defines.append((define, "1"))
            libs += libraries
            incs += e_incs
            libdirs += e_libdirs
            built.append(src)
        else:
            print(f"capfan build: {src} NOT built: {why}")
    print(f"capfan build: compiled {' '.join(built)}")
    return sources, defines, libs, incs, libdirs

CDEF = """
typedef struct capfan_desc {
    uint64_t seq; uint64_t ts_ns; uint32_t off; uint16_t caplen; uint16_t wirelen;
    uint32_t hash; uint16_t port; uint16_t flags;
} capfan_desc;
typedef struct capfan_geometry {
    uint32_t ndesc; uint64_t arena_bytes; uint32_t max_consumers; uint32_t linktype;
    uint32_t snaplen; uint32_t full_policy;
} capfan_geometry;
typedef struct capfan_event { uint64_t ts_ns; uint32_t kind; uint32_t slot; uint64_t arg; char name[8]; } capfan_event;
typedef struct capfan_batch {
    uint64_t first_seq; uint32_t count; uint32_t nsel;
    const capfan_desc *desc; const uint32_t *sel; const uint8_t *arena;
} capfan_batch;
typedef struct capfan_consumer_opts {
    const char *name; uint32_t policy; uint64_t stall_budget_us; uint32_t spin_us;
    const char *group; uint16_t group_member; uint16_t group_size; uint32_t start;
} capfan_consumer_opts;
typedef struct capfan_slot_stats {
    uint32_t index, state, policy, pid, sleeping, spin_us;
    uint16_t group_size, group_member, alive, _pad;
    uint64_t cursor, attach_seq, delivered, dropped, filtered, torn, stall_budget_ns, holding_since_ns;
    uint64_t demotions, resumes;
    char name[32]; char group[32];
} capfan_slot_stats;
typedef struct capfan_ring_stats {
    uint64_t head, tail, generation, dropped_full, bytes, blocked_ns, producer_pid, heartbeat_ns;
    uint64_t arena_used, demotions, created_ns;
    uint32_t ndesc, max_consumers, linktype, snaplen, full_policy, producer_alive, nconsumers, hugepages;
    uint64_t arena_bytes, file_bytes;
} capfan_ring_stats;
typedef struct capfan_pkt_info {
    uint16_t flags, vlan, inner_vlan, l3_off, l4_off;
    uint8_t ip_version, proto;
    uint16_t sport, dport, ethertype;
    uint8_t bad, tcp_flags;
    uint32_t frag_id;
    uint16_t frag_off, pflags;
    uint32_t ip_len;
    uint8_t src[16], dst[16];
} capfan_pkt_info;
typedef struct capfan_ring capfan_ring;
typedef struct capfan_producer capfan_producer;
typedef struct capfan_consumer capfan_consumer;

const char *capfan_last_error(void);
int capfan_last_error_code(void);
int capfan_ring_create(const char *path, const capfan_geometry *g, uint32_t mode, int gid);
capfan_ring *capfan_ring_open(const char *path);
void capfan_ring_close(capfan_ring *r);
int capfan_ring_stats_get(capfan_ring *r, capfan_ring_stats *out);
int capfan_ring_slot_get(capfan_ring *r, uint32_t i, capfan_slot_stats *out);
uint64_t capfan_ring_event_count(capfan_ring *r);
int capfan_ring_events(capfan_ring *r, capfan_event *out, uint32_t n);
uint32_t capfan_ring_port_linktype(capfan_ring *r, uint32_t port);
const capfan_desc *capfan_ring_desc(capfan_ring *r);
uint32_t capfan_desc_wirelen(const capfan_desc *d, const uint8_t *arena);
const uint8_t *capfan_ring_arena(capfan_ring *r);

capfan_producer *capfan_producer_open(const char *path);
void capfan_producer_close(capfan_producer *p);
void capfan_producer_free(capfan_producer *p);
capfan_ring *capfan_producer_ring(capfan_producer *p);
uint8_t *capfan_producer_reserve(capfan_producer *p, uint32_t caplen, uint32_t wirelen, int64_t timeout_ns);
int capfan_producer_set_linktype(capfan_producer *p, uint32_t port, uint32_t linktype);
void capfan_producer_commit(capfan_producer *p, uint64_t ts_ns, uint32_t caplen, uint32_t wirelen,
                            uint16_t port, uint16_t flags);
void capfan_producer_flush(capfan_producer *p);
int64_t capfan_producer_publish(capfan_producer *p, const uint8_t *buf, const uint64_t *offs,
                                const uint32_t *caplens, const uint32_t *wirelens,
                                const uint64_t *ts_ns, uint32_t n, uint16_t port);
uint64_t capfan_producer_dropped(capfan_producer *p);
void capfan_producer_set_external(capfan_producer *p, int on);
int capfan_producer_reserve_desc(capfan_producer *p, int64_t timeout_ns);
void capfan_producer_commit_at(capfan_producer *p, uint32_t off, uint64_t ts_ns, uint32_t caplen,
                               uint32_t wirelen, uint16_t port, uint16_t flags);
uint64_t capfan_producer_reclaim(capfan_producer *p, uint64_t want);
uint64_t capfan_producer_head(capfan_producer *p);
uint64_t capfan_producer_tail(capfan_producer *p);

capfan_consumer *capfan_consumer_attach(const char *path, const capfan_consumer_opts *o);
void capfan_consumer_detach(capfan_consumer *c, int keep);
void capfan_consumer_free(capfan_consumer *c);
int capfan_consumer_next(capfan_consumer *c, uint32_t max, int64_t timeout_ns, capfan_batch *b);
uint32_t capfan_consumer_torn(capfan_consumer *c, const capfan_batch *b);
uint32_t capfan_consumer_release(capfan_consumer *c, capfan_batch *b);
uint64_t capfan_consumer_generation(capfan_consumer *c);
uint64_t capfan_consumer_producer_generation(capfan_consumer *c, int *alive);
int capfan_consumer_slot(capfan_consumer *c);
capfan_ring *capfan_consumer_ring(capfan_consumer *c);
int capfan_consumer_stats(capfan_consumer *c, capfan_slot_stats *out);

int capfan_parse(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, capfan_pkt_info *info);
uint32_t capfan_flow_hash(const uint8_t *pkt, uint32_t caplen, uint32_t linktype, uint16_t *flags);

/* ringbench.c: C loops for `capfan bench ring` (see that file) */
int64_t capfan_bench_produce(capfan_producer *p, uint64_t npkts, uint32_t size, uint32_t nflows,
                             uint32_t batch, uint64_t *cpu_ns);
int64_t capfan_bench_consume(capfan_consumer *c, uint64_t npkts, int64_t idle_timeout_ns,
                             uint64_t *cpu_ns, uint64_t *checksum);
int capfan_bench_copyq_create(const char *path, uint32_t nqueues, uint32_t slots, uint32_t slot_bytes);
int64_t capfan_bench_copyq_produce(const char *path, uint64_t npkts, uint32_t size, uint64_t *cpu_ns);
int64_t capfan_bench_copyq_consume(const char *path, uint32_t q, uint64_t npkts, uint64_t *cpu_ns,
                                   uint64_t *checksum);
"""

SOURCE_CDEF = """
typedef struct capfan_source_stats {
    uint64_t packets, bytes, published, ring_drops, kernel_drops, kernel_freezes, malformed, truncated;
    uint64_t hw_timestamps, xdp_rx_invalid, xdp_rx_ring_full, xdp_fill_empty, loops_done, file_offset, file_bytes;
    uint32_t zerocopy, xdp_mode, eof, _pad;
    uint64_t nic_drops, ring_overflows, shared_overflows;
} capfan_source_stats;
typedef struct capfan_source capfan_source;
const char *capfan_source_kind(capfan_source *s);
uint32_t capfan_source_linktype(capfan_source *s, uint32_t port);
int capfan_source_prepare(capfan_source *s, capfan_producer *p);
int capfan_source_recv(capfan_source *s, capfan_producer *p, uint32_t max, int64_t timeout_ns);
int64_t capfan_source_run(capfan_source *s, capfan_producer *p, uint64_t max_packets, int64_t duration_ns);
int capfan_source_get_stats(capfan_source *s, capfan_source_stats *st);
void capfan_source_close(capfan_source *s);
typedef struct capfan_pcap_opts { double speed; uint32_t loops; uint16_t port_base; } capfan_pcap_opts;
capfan_source *capfan_pcap_open(const char *path, const capfan_pcap_opts *o);
typedef struct capfan_afpacket_opts {
    const char *ifname; uint32_t block_size; uint32_t block_count; uint32_t block_timeout_ms;
    int32_t fanout_mode; uint16_t fanout_group; uint16_t fanout_flags; const char *bpf;
    int32_t promisc; int32_t hw_timestamps; uint16_t port;
} capfan_afpacket_opts;
capfan_source *capfan_afpacket_open(const capfan_afpacket_opts *o);
typedef struct capfan_afxdp_opts {
    const char *ifname; uint32_t queue; uint32_t frame_size; uint32_t rx_size; int32_t xdp_mode;
    int32_t bind_mode; int32_t busy_poll; uint32_t busy_poll_us; uint32_t busy_poll_budget; uint16_t port;
} capfan_afxdp_opts;
capfan_source *capfan_afxdp_open(const capfan_afxdp_opts *o, capfan_producer *p);
int capfan_afxdp_cleanup(const char *ifname);
typedef struct capfan_snf_opts {
    const char *lib_path; const char *ifname; uint32_t portnum; int32_t num_rings; int32_t queue;
    int64_t dataring_size; int32_t app_id; int32_t flags; int32_t batch; uint16_t port;
} capfan_snf_opts;
capfan_source *capfan_snf_open(const capfan_snf_opts *o);
int capfan_snf_batched(capfan_source *s);
typedef struct capfan_efvi_opts {
    const char *ifname; int32_t rss_vis; int32_t rxq_size; int32_t evq_size; int32_t hw_timestamps; int32_t merge;
    const char *filters; uint16_t port; int32_t wait; int32_t jumbo; uint64_t jumbo_bytes; uint32_t spin_us;
} capfan_efvi_opts;
typedef struct capfan_efvi_counters {
    uint64_t discards[8];
    uint64_t no_desc_trunc, resets, jumbo, rx_multi, hwts_unsynced, reposted, held_back;
    uint64_t jumbo_reassembled, jumbo_no_room, primes, wakeups;
} capfan_efvi_counters;
capfan_source *capfan_efvi_open(const capfan_efvi_opts *o, capfan_producer *p);
int capfan_efvi_counters_get(capfan_source *s, capfan_efvi_counters *out);
int capfan_efvi_emulated(void);
const char *capfan_source_backends(void);
uint8_t *capfan_producer_arena(capfan_producer *p, uint64_t *len);
"""

BPF_CDEF = """
typedef struct capfan_bpf capfan_bpf;
capfan_bpf *capfan_bpf_compile(const char *expr, uint32_t linktype, uint32_t snaplen);
int capfan_bpf_match(const capfan_bpf *f, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen);
void capfan_bpf_free(capfan_bpf *f);
"""

# Components that carry their own cffi declarations in `<name>.cdef` beside `<name>.h`
# (kept in step with the header by hand: cffi cannot parse headers with macros/inlines).
COMPONENTS = ["flowmeter", "pcapwrite"]


def components():
    """(sources, cdef text, #include lines) of the components present in the tree."""
    srcs, cdef, incs = [], "", ""
    for name in COMPONENTS:
        if not os.path.exists(os.path.join(HERE, name + ".c")):
            continue
        srcs.append(name + ".c")
        with open(os.path.join(HERE, name + ".cdef")) as f:
            cdef += f.read()
        incs += f'#include "{name}.h"\n'
    return srcs, cdef, incs


_sources, _defines, _libs, _incdirs, _libdirs = configure()
_csrcs, _ccdef, _cincs = components()
_sources += _csrcs
ffibuilder = FFI()
ffibuilder.cdef(CDEF + SOURCE_CDEF + (BPF_CDEF if os.path.exists(os.path.join(HERE, "bpf.h")) else "") + _ccdef)
ffibuilder.set_source(
    "capfan._capfan_core",
    '#include "ring.h"\n#include "parse.h"\n#include "ringbench.h"\n#include "source.h"\n'
    + ('#include "bpf.h"\n' if os.path.exists(os.path.join(HERE, "bpf.h")) else "") + _cincs,
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in _sources],
    include_dirs=[os.path.relpath(HERE)] + _incdirs,
    library_dirs=_libdirs,
    runtime_library_dirs=_libdirs,
    define_macros=_defines,
    extra_compile_args=["-std=c11", "-O3", "-Wall", "-Wno-unused-parameter", "-D_GNU_SOURCE"],
    libraries=_libs,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

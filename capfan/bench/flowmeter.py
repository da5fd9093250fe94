"""`capfan bench flowmeter`: packets per CPU-second of the C flow meter against the same
bidirectional flow metering written with dpkt and with scapy, all measured in one run.

Workload: a deterministic synthetic capture built with numpy from a seed (Ethernet, IPv4 and
IPv6, TCP with SYN / SYN-ACK / ACK / FIN-ACK and UDP, optional VLAN tags, both directions of
every flow, a 64-byte-heavy size mix or IMIX), or a real Ethernet capture with ``--pcap``.

Methods (each round runs all of them on the same packets):

* ``flowmeter``         the production path: the capture is replayed into a shared-memory ring
                        (Producer.publish_arrays) and a reliable ring Consumer hands every batch
                        to FlowTable.add_batch; flush + drain at the end are measured too
* ``flowmeter-arrays``  FlowTable.add_packets on numpy arrays, no ring (the meter alone)
* ``dpkt``              per-packet Python: dpkt.ethernet.Ethernet + a dict keyed by the
                        canonical flow key, on a prefix of the capture (it is slow)
* ``scapy``             the same metering with scapy's Ether() dissection, on a shorter prefix

Time is CPU time of the metering thread (time.thread_time), never wall time: the machine may
be shared. Rates are packets per CPU-second, so the baselines' shorter prefixes do not bias
them. The baselines get their packets as a ready list of bytes (no file or ring reading
measured), which favours them. Ratios are medians of same-round pairs.

Correctness is checked in the same run: the C flow table (through the ring) and the dpkt table
must hold the same flows with the same per-direction packets, IP bytes, frame bytes, TCP
flags and first/last timestamps on dpkt's prefix (timeouts are set so nothing is split), and
the scapy table must equal a dpkt table of scapy's prefix.
"""
from __future__ import annotations

import os
import socket
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np

from capfan import errors
from capfan.bench.report import Target, cpu_model, no_nan, targets_table
from capfan.bench.report import fmt as _f

TARGET_VS_DPKT = 80.0             # flow meter packets/CPU-s >= 80x the dpkt meter's
TARGET_MPPS = 5.0                 # flow meter >= 5 Mpps per core (CPU-second)

#: method -> description; the order is the table's row order
METHODS = {
    "flowmeter": "C FlowTable.add_batch on ring batches (replayed capture read in place), flush + drain",
    "flowmeter-arrays": "C FlowTable.add_packets on numpy arrays, no ring",
    "dpkt": "per-packet Python: dpkt.ethernet.Ethernet parse + dict of canonical flow keys",
    "scapy": "per-packet Python: scapy Ether() dissection + dict of canonical flow keys",
}
DEFAULT_METHODS = tuple(METHODS)
C_METHODS = ("flowmeter", "flowmeter-arrays")

#: captured frame sizes (bytes) and their shares; a frame is never shorter than its headers
SIZE_MIXES = {
    "mix64": ((64, 0.80), (128, 0.06), (256, 0.04), (576, 0.04), (1514, 0.06)),
    "imix": ((64, 7 / 12), (576, 4 / 12), (1514, 1 / 12)),   # simple IMIX 7:4:1
}
MIN_FRAME, MAX_FRAME = 60, 9018

T0_NS = 1_700_000_000 * 10**9     # first synthetic timestamp
PKT_GAP_NS = 1_000                # synthetic capture averages 1 Mpps
BATCH = 8192                      # ring consumer batch and add_packets slice
DRAIN_EVERY = 32                  # add_packets slices between drains (the ring path drains per chunk)
STALL_BUDGET_US = 30_000_000      # the bench's reliable consumer must never be demoted
IDLE_TIMEOUT_S = 10.0             # nothing arriving for this long: the producer side failed
NEVER_S = 10**8                   # "no timeout" for idle/active timeouts (~3 years)
WARMUP = 500                      # packets each baseline meters untimed before the rounds

V4_SHARE, TCP_SHARE, VLAN_SHARE = 0.7, 0.75, 0.1
SERVER_PORTS = np.array([443, 80, 53, 8080, 22, 123, 993, 5060], dtype=np.int64)
SERVER_PORT_P = np.array([0.45, 0.2, 0.1, 0.08, 0.05, 0.04, 0.04, 0.04])
NSERVERS = 4096

# flowFlags bits that mean the C meter keyed or counted packets in a way the baselines do not
# attempt (fragments, tunnels, MPLS, ICMP errors, IPv6 extension headers, malformed headers)
_EXOTIC = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 9)
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


@dataclass
class Settings:
    """Knobs shared by every run of one bench invocation."""
    packets: int = 2_000_000
    flows: int = 100_000
    sizes: str = "mix64"
    seed: int = 1
    dpkt_packets: int = 200_000
    scapy_packets: int = 20_000
    repeat: int = 3
    methods: tuple = DEFAULT_METHODS
    pcap: str | None = None
    ndesc: int = 1 << 18          # bench ring descriptors
    arena_bytes: int = 256 << 20  # bench ring packet arena


# ---------------------------------------------------------------- workload

@dataclass
class Workload:
    """A capture held in memory: packet bytes back to back plus per-packet arrays."""
    buf: np.ndarray               # uint8, every frame back to back
    offs: np.ndarray              # uint64 offset of each frame in buf
    caplens: np.ndarray           # uint32
    wirelens: np.ndarray          # uint32
    ts_ns: np.ndarray             # uint64, non-decreasing
    linktype: int = 1
    description: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.caplens)

    def packet_list(self, n: int) -> list[tuple[int, int, bytes]]:
        """The first n packets as (ts_ns, wirelen, bytes): what the Python baselines iterate."""
        mv = memoryview(self.buf)
        n = min(n, len(self))
        return [(ts, wl, bytes(mv[o:o + cl])) for ts, wl, o, cl in zip(
            self.ts_ns[:n].tolist(), self.wirelens[:n].tolist(), self.offs[:n].tolist(), self.caplens[:n].tolist())]


def size_mix(text: str) -> tuple[str, np.ndarray, np.ndarray]:
    """'mix64', 'imix' or comma-separated frame sizes -> (label, sizes, probabilities)."""
    key = text.strip().lower()
    if key in SIZE_MIXES:
        sizes, p = zip(*SIZE_MIXES[key])
        return key, np.array(sizes, dtype=np.int64), np.array(p) / sum(p)
    try:
        sizes = [int(v) for v in key.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(MIN_FRAME <= s <= MAX_FRAME for s in sizes):
        raise errors.ConfigError("sizes", f"{text!r} is not a size mix: use {', '.join(SIZE_MIXES)} or "
                                          f"comma-separated frame sizes of {MIN_FRAME}..{MAX_FRAME} bytes")
    return ",".join(map(str, sizes)), np.array(sizes, dtype=np.int64), np.full(len(sizes), 1 / len(sizes))


def synthesize(packets: int, flows: int, sizes: str = "mix64", seed: int = 1) -> Workload:
    """A deterministic synthetic Ethernet capture of `packets` frames in `flows` bidirectional
    flows (IPv4/IPv6, TCP/UDP, some VLAN-tagged), interleaved in time like concurrent traffic."""
    if flows < 1 or packets < flows:
        raise errors.ConfigError("flows", f"need 1 <= flows <= packets (every flow has a packet); got "
                                          f"{flows:,} flows for {packets:,} packets")
    if flows > 1 << 24:
        raise errors.ConfigError("flows", f"at most {1 << 24:,} flows (client addresses are numbered)")
    label, size_values, size_p = size_mix(sizes)
    rng = np.random.default_rng(seed)
    fl = _flows(rng, flows)
    # packets per flow: one each plus a heavy-tailed share of the rest (a few elephants)
    weights = rng.pareto(1.2, flows) + 1.0
    counts = 1 + rng.multinomial(packets - flows, weights / weights.sum())
    fid = np.repeat(np.arange(flows), counts)
    # each flow lives in its own window of the capture; packets are interleaved by time
    start = rng.random(flows) * 0.9
    span = rng.random(flows) * (1.0 - start)
    key = start[fid] + rng.random(packets) * span[fid]
    order = np.argsort(key, kind="stable")
    fid, key = fid[order], key[order]
    rank = _rank_in_flow(fid, counts)
    ts = (T0_NS + key * (packets * PKT_GAP_NS)).astype(np.uint64)
    pk = _packet_roles(rng, fid, rank, counts, fl["tcp"])
    hdr = 14 + 4 * (fl["vlan"][fid] > 0) + np.where(fl["v6"][fid], 40, 20) + np.where(fl["tcp"][fid], 20, 8)
    lens = np.maximum(rng.choice(size_values, size=packets, p=size_p), hdr).astype(np.uint32)
    offs = np.zeros(packets, dtype=np.uint64)
    np.cumsum(lens[:-1], out=offs[1:])
    buf = np.zeros(int(offs[-1]) + int(lens[-1]), dtype=np.uint8)
    _write_headers(buf, offs, lens, fid, pk, fl)
    n4 = int((~fl["v6"]).sum())
    ntcp = int(fl["tcp"].sum())
    info = {"kind": "synthetic", "seed": seed, "packets": packets, "flows": flows, "sizes": label,
            "bytes": int(buf.size), "mean_frame": round(buf.size / packets, 1),
            "flows_ipv4": n4, "flows_ipv6": flows - n4, "flows_tcp": ntcp, "flows_udp": flows - ntcp,
            "flows_vlan": int((fl["vlan"] > 0).sum()), "max_flow_packets": int(counts.max())}
    desc = (f"synthetic capture (seed {seed}): {packets:,} packets, {flows:,} flows "
            f"({n4:,} IPv4 / {flows - n4:,} IPv6, {ntcp:,} TCP / {flows - ntcp:,} UDP, "
            f"{info['flows_vlan']:,} VLAN-tagged), sizes {label} (mean {info['mean_frame']} B)")
    return Workload(buf, offs, lens, lens.copy(), ts, 1, desc, info)


def _flows(rng, n: int) -> dict:
    """Per-flow properties: version, protocol, VLAN, addresses (16-byte, IPv4 mapped), ports.
    Client addresses are numbered, so every flow has a distinct key."""
    v6 = rng.random(n) >= V4_SHARE
    tcp = rng.random(n) < TCP_SHARE
    vlan = np.where(rng.random(n) < VLAN_SHARE, rng.integers(1, 4095, n), 0)
    f = np.arange(n, dtype=np.int64)
    client = np.zeros((n, 16), dtype=np.uint8)
    client[:, 10:12] = 0xFF                                   # ::ffff:10.x.y.z for IPv4
    client[:, 12] = 10
    client[:, 13], client[:, 14], client[:, 15] = (f >> 16) & 0xFF, (f >> 8) & 0xFF, f & 0xFF
    c6 = np.zeros((n, 16), dtype=np.uint8)
    c6[:, 0] = 0xFD
    c6[:, 2:12] = rng.integers(0, 256, (n, 10))
    c6[:, 13:16] = client[:, 13:16]
    client = np.where(v6[:, None], c6, client)
    pool4 = np.zeros((NSERVERS, 16), dtype=np.uint8)
    pool4[:, 10:12] = 0xFF
    pool4[:, 12:14] = (198, 18)                               # 198.18.0.0/15 benchmark range
    pool4[:, 14:16] = rng.integers(0, 256, (NSERVERS, 2))
    pool6 = np.zeros((NSERVERS, 16), dtype=np.uint8)
    pool6[:, 0:4] = (0x20, 0x01, 0x0D, 0xB8)
    pool6[:, 8:16] = rng.integers(0, 256, (NSERVERS, 8))
    s = rng.integers(0, NSERVERS, n)
    server = np.where(v6[:, None], pool6[s], pool4[s])
    return {"v6": v6, "tcp": tcp, "vlan": vlan, "client": client, "server": server,
            "cport": rng.integers(1024, 65536, n), "sport": rng.choice(SERVER_PORTS, n, p=SERVER_PORT_P)}


def _rank_in_flow(fid: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Index of every packet within its flow, in time order."""
    o = np.argsort(fid, kind="stable")
    first = np.cumsum(counts) - counts
    rank = np.empty(len(fid), dtype=np.int64)
    rank[o] = np.arange(len(fid)) - first[fid[o]]
    return rank


def _packet_roles(rng, fid, rank, counts, tcp) -> dict:
    """Direction and TCP flags of every packet: SYN from the client, SYN-ACK back, ACK / PSH-ACK
    either way, FIN-ACK from each side as a TCP flow's last two packets (nothing after them, so
    no meter can split a flow on them)."""
    n = counts[fid]
    from_client = (rank == 0) | ((rank != 1) & (rng.random(len(fid)) < 0.6))
    fin_c = (n >= 4) & (rank == n - 2)
    fin_s = (n >= 4) & (rank == n - 1)
    from_client = (from_client | fin_c) & ~fin_s
    flags = np.where(rng.random(len(fid)) < 0.3, 0x18, 0x10)
    flags = np.where(rank == 0, 0x02, np.where(rank == 1, 0x12, flags))
    flags = np.where(fin_c | fin_s, 0x11, flags)
    return {"from_client": from_client, "flags": np.where(tcp[fid], flags, 0)}


def _put(h: np.ndarray, col: int, values, nbytes: int) -> None:
    """Write integers big-endian into columns col..col+nbytes of the header matrix h."""
    values = np.asarray(values, dtype=np.int64)
    for k in range(nbytes):
        h[:, col + k] = (values >> (8 * (nbytes - 1 - k))) & 0xFF


def _write_headers(buf, offs, lens, fid, pk, fl, chunk: int = 1 << 18) -> None:
    """Write Ethernet [VLAN] IPv4/IPv6 TCP/UDP headers of every frame into buf (payload stays 0).
    Frames of one shape (tag, version, protocol) share a layout and are written together."""
    shape = (fl["vlan"][fid] > 0) * 4 + fl["v6"][fid] * 2 + fl["tcp"][fid]
    for s in np.unique(shape):
        tagged, v6, tcp = bool(s & 4), bool(s & 2), bool(s & 1)
        idx_all = np.flatnonzero(shape == s)
        for lo in range(0, len(idx_all), chunk):
            idx = idx_all[lo:lo + chunk]
            h = _headers(idx, tagged, v6, tcp, lens, fid, pk, fl)
            buf[offs[idx, None].astype(np.int64) + np.arange(h.shape[1])] = h


def _headers(idx, tagged: bool, v6: bool, tcp: bool, lens, fid, pk, fl) -> np.ndarray:
    """Header matrix (one row per frame) of frames idx that all have the same shape."""
    f = fid[idx]
    fc = pk["from_client"][idx][:, None]
    src = np.where(fc, fl["client"][f], fl["server"][f])
    dst = np.where(fc, fl["server"][f], fl["client"][f])
    sport = np.where(fc[:, 0], fl["cport"][f], fl["sport"][f])
    dport = np.where(fc[:, 0], fl["sport"][f], fl["cport"][f])
    l2 = 18 if tagged else 14
    l3 = 40 if v6 else 20
    h = np.zeros((len(idx), l2 + l3 + (20 if tcp else 8)), dtype=np.uint8)
    h[:, 0:6] = (0x02, 0, 0, 0, 0, 0x02)                      # locally administered MACs
    h[:, 6:12] = (0x02, 0, 0, 0, 0, 0x01)
    etype = 0x86DD if v6 else 0x0800
    if tagged:
        _put(h, 12, 0x8100, 2)
        _put(h, 14, fl["vlan"][f], 2)
    _put(h, l2 - 2, etype, 2)
    frame = lens[idx].astype(np.int64)
    proto = 6 if tcp else 17
    if v6:
        h[:, l2] = 0x60
        _put(h, l2 + 4, frame - l2 - 40, 2)                   # payload length
        h[:, l2 + 6], h[:, l2 + 7] = proto, 64
        h[:, l2 + 8:l2 + 24], h[:, l2 + 24:l2 + 40] = src, dst
    else:
        h[:, l2] = 0x45
        _put(h, l2 + 2, frame - l2, 2)                        # total length
        _put(h, l2 + 4, idx & 0xFFFF, 2)                      # identification
        h[:, l2 + 6] = 0x40                                   # don't fragment
        h[:, l2 + 8], h[:, l2 + 9] = 64, proto
        h[:, l2 + 12:l2 + 16], h[:, l2 + 16:l2 + 20] = src[:, 12:], dst[:, 12:]
    t = l2 + l3
    _put(h, t, sport, 2)
    _put(h, t + 2, dport, 2)
    if tcp:
        _put(h, t + 4, idx * 1460, 4)                         # sequence number (any value)
        h[:, t + 12] = 0x50
        h[:, t + 13] = pk["flags"][idx]
        _put(h, t + 14, 65535, 2)
    else:
        _put(h, t + 4, frame - t, 2)
    return h


def load_pcap(path: str) -> Workload:
    """A pcap/pcapng capture read into memory through capfan's own replay source (so every
    format the product reads works; timestamps keep nanoseconds)."""
    from capfan import ring  # noqa: PLC0415
    from capfan.sources.pcap import PcapSource  # noqa: PLC0415

    if not os.path.isfile(path):
        raise errors.ConfigError("pcap", f"no capture file {path!r}")
    name = _tmp_ring("load")
    ring.create(name, ndesc=1 << 14, arena_bytes=256 << 20)
    frames, ts, wl = [], [], []
    try:
        with PcapSource(path) as src, ring.Consumer(name, "load", stall_budget_us=STALL_BUDGET_US) as c, \
                ring.Producer(name) as p:
            lt = src.linktype()
            if lt != 1:
                raise errors.ConfigError("pcap", f"{path}: link type {lt}; the dpkt and scapy baselines "
                                                 "meter Ethernet captures (link type 1) only")
            while True:
                # 1024 frames of at most 64 KiB fit the arena: the producer never waits for us
                done = src.run(p, max_packets=1024, duration=5.0)
                while (b := c.next(timeout=0)) is not None:
                    d = b.desc
                    ts.append(d["ts_ns"].copy())
                    wl.append(b.wirelens())
                    frames.extend(bytes(b.packet(i)) for i in range(len(b)))
                if done < 0:
                    break
    finally:
        ring.remove(name)
    if not frames:
        raise errors.ConfigError("pcap", f"{path}: no packets")
    caplens = np.fromiter((len(x) for x in frames), dtype=np.uint32, count=len(frames))
    offs = np.zeros(len(frames), dtype=np.uint64)
    np.cumsum(caplens[:-1], out=offs[1:])
    buf = np.frombuffer(b"".join(frames), dtype=np.uint8)
    info = {"kind": "pcap", "path": path, "packets": len(frames), "bytes": int(buf.size),
            "mean_frame": round(buf.size / len(frames), 1)}
    return Workload(buf, offs, caplens, np.concatenate(wl), np.concatenate(ts), 1,
                    f"capture {path}: {len(frames):,} packets (mean {info['mean_frame']} B)", info)


# ---------------------------------------------------------------- C flow meter runs

def flow_table(max_flows: int = 1 << 20):
    """A FlowTable whose timeouts never split a flow of the bench (idle/active never expire;
    a FIN-ended flow lingers 1 s as in production, and nothing follows the FINs here)."""
    try:
        from capfan.flowtable import FlowTable  # noqa: PLC0415 - only the C methods need it
    except ImportError as e:
        raise errors.CapfanError(f"the C flow meter is not available ({e}); build it with "
                                 "`python setup.py build_ext --inplace` in the capfan checkout") from None

    return FlowTable(max_flows=max(max_flows, 1 << 20), idle_timeout=NEVER_S, active_timeout=NEVER_S,
                     end_linger=1.0, fragment_timeout=30.0, max_fragments=65536, decap=())


def drain_all(ft) -> np.ndarray:
    """Every ended record the table holds (drain may hand them out in several calls)."""
    parts = []
    while True:
        r = ft.drain()
        if not len(r):
            break
        parts.append(r)
    return np.concatenate(parts) if parts else ft.drain()


def _tmp_ring(kind: str) -> str:
    """A ring name no other bench run uses."""
    return f"bench-flowmeter-{kind}-{os.getpid()}-{time.monotonic_ns()}"


def _chunks(w: Workload, n: int, cfg: Settings) -> list[tuple[int, int]]:
    """Slices of the first n packets that fit in the bench ring at once (a quarter of the arena,
    half the descriptors), so publishing a slice never waits for the consumer."""
    out, lo = [], 0
    ends = np.cumsum(w.caplens[:n].astype(np.int64) + 64)     # + room for alignment per packet
    room, most = cfg.arena_bytes // 4, cfg.ndesc // 2
    while lo < n:
        base = ends[lo - 1] if lo else 0
        hi = min(int(np.searchsorted(ends, base + room, side="right")), lo + most, n)
        if hi <= lo:
            raise errors.ConfigError("arena", f"a {int(w.caplens[lo])}-byte frame does not fit a quarter of "
                                              f"the {cfg.arena_bytes >> 20} MiB bench ring arena; use a bigger --arena")
        out.append((lo, hi))
        lo = hi
    return out


def meter_ring(w: Workload, n: int, cfg: Settings) -> dict:
    """Replay the first n packets into a fresh ring and meter them from a ring Consumer with
    FlowTable.add_batch, as the flowmeter analyzer does. Only the consumer side (next +
    add_batch, then flush + drain) is timed; publishing is not."""
    from capfan import ring  # noqa: PLC0415

    ft = flow_table(2 * w.info.get("flows", 0))
    name = _tmp_ring("ring")
    ring.create(name, ndesc=cfg.ndesc, arena_bytes=cfg.arena_bytes, linktype=w.linktype)
    cpu = metered = batches = 0
    parts = []
    try:
        with ring.Consumer(name, "flowmeter", policy="reliable", stall_budget_us=STALL_BUDGET_US,
                           batch=BATCH) as c, ring.Producer(name) as p:
            for lo, hi in _chunks(w, n, cfg):
                done = p.publish_arrays(w.buf, w.offs[lo:hi], w.caplens[lo:hi], w.wirelens[lo:hi], w.ts_ns[lo:hi])
                if done != hi - lo:
                    raise RuntimeError(f"the ring took {done} of {hi - lo} packets")
                got, t0 = 0, time.thread_time_ns()
                while got < hi - lo:
                    b = c.next(timeout=IDLE_TIMEOUT_S)
                    if b is None:
                        raise RuntimeError(f"ring consumer saw nothing for {IDLE_TIMEOUT_S} s")
                    metered += ft.add_batch(b)
                    got += b.count
                    batches += 1
                b.release()
                parts.append(drain_all(ft))        # as the analyzer does on its ticks
                cpu += time.thread_time_ns() - t0
            t0 = time.thread_time_ns()
            ft.flush()
            parts.append(drain_all(ft))
            cpu += time.thread_time_ns() - t0
            records = np.concatenate(parts)
            delivered = c.stats()["delivered"]
    finally:
        ring.remove(name)
    if delivered != n:
        raise RuntimeError(f"ring consumer got {delivered} of {n} packets")
    return {"packets": n, "cpu_ns": cpu, "metered": int(metered), "records": records, "batches": batches,
            "stats": ft.stats()}


def meter_arrays(w: Workload, n: int) -> dict:
    """Meter the first n packets with FlowTable.add_packets in BATCH-sized slices (no ring)."""
    ft = flow_table(2 * w.info.get("flows", 0))
    metered = 0
    parts = []
    t0 = time.thread_time_ns()
    for k, lo in enumerate(range(0, n, BATCH)):
        hi = min(lo + BATCH, n)
        metered += ft.add_packets(w.buf, w.offs[lo:hi], w.caplens[lo:hi], wirelens=w.wirelens[lo:hi],
                                  ts_ns=w.ts_ns[lo:hi], linktype=w.linktype, port=0)
        if k % DRAIN_EVERY == DRAIN_EVERY - 1:
            parts.append(drain_all(ft))
    ft.flush()
    parts.append(drain_all(ft))
    cpu = time.thread_time_ns() - t0
    records = np.concatenate(parts)
    return {"packets": n, "cpu_ns": cpu, "metered": int(metered), "records": records, "stats": ft.stats()}


# ---------------------------------------------------------------- Python baselines
#
# Both keep the same state per flow as the C meter: a list
#   [first ts, last ts, packets a->b, packets b->a, IP bytes a->b, IP bytes b->a,
#    frame bytes a->b, frame bytes b->a, TCP flags a->b, TCP flags b->a]
# under the canonical key (outer VLAN, inner VLAN, IP version, protocol, a, port a, b, port b)
# where (a, port a) <= (b, port b): one dict lookup per packet, no per-packet allocation beyond
# what the parser itself does. IP bytes are the IPv4 total length / IPv6 payload length + 40;
# frame bytes the wire length, as in the flow records.

def meter_dpkt(packets: list[tuple[int, int, bytes]]) -> tuple[dict, int]:
    """Flow table of (ts_ns, wirelen, frame) packets parsed with dpkt; (table, unparsable)."""
    import dpkt  # noqa: PLC0415

    ethernet, ip4, ip6 = dpkt.ethernet.Ethernet, dpkt.ip.IP, dpkt.ip6.IP6
    tcp_t, udp_t, unpack_error = dpkt.tcp.TCP, dpkt.udp.UDP, dpkt.UnpackError
    table: dict = {}
    bad = 0
    for ts, wirelen, frame in packets:
        try:
            eth = ethernet(frame)
        except unpack_error:
            bad += 1
            continue
        ip = eth.data
        cls = ip.__class__
        if cls is ip4:
            ver, iplen = 4, ip.len
        elif cls is ip6:
            ver, iplen = 6, ip.plen + 40
        else:
            continue
        vlan = ivlan = 0
        tags = getattr(eth, "vlan_tags", None)  # set by dpkt only on tagged frames
        if tags:
            vlan = tags[0].id
            if len(tags) > 1:
                ivlan = tags[1].id
        l4 = ip.data
        c4 = l4.__class__
        if c4 is tcp_t:
            sp, dp, fl = l4.sport, l4.dport, l4.flags & 0xFF
        elif c4 is udp_t:
            sp, dp, fl = l4.sport, l4.dport, 0
        else:
            sp = dp = fl = 0
        src, dst = ip.src, ip.dst
        if (src, sp) <= (dst, dp):
            key, d = (vlan, ivlan, ver, ip.p, src, sp, dst, dp), 0
        else:
            key, d = (vlan, ivlan, ver, ip.p, dst, dp, src, sp), 1
        st = table.get(key)
        if st is None:
            st = table[key] = [ts, ts, 0, 0, 0, 0, 0, 0, 0, 0]
        st[1] = ts
        st[2 + d] += 1
        st[4 + d] += iplen
        st[6 + d] += wirelen
        st[8 + d] |= fl
    return table, bad


def meter_scapy(packets: list[tuple[int, int, bytes]]) -> tuple[dict, int]:
    """Flow table of (ts_ns, wirelen, frame) packets dissected with scapy; (table, unparsable)."""
    from scapy.layers.inet import IP, TCP, UDP  # noqa: PLC0415
    from scapy.layers.inet6 import IPv6  # noqa: PLC0415
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether  # noqa: PLC0415

    tags_t = (Dot1Q, Dot1AD)
    table: dict = {}
    bad = 0
    for ts, wirelen, frame in packets:
        try:
            pkt = Ether(frame)
        except Exception:  # noqa: BLE001 - scapy raises many types on garbage
            bad += 1
            continue
        layer = pkt.payload
        vlan = ivlan = 0
        if isinstance(layer, tags_t):
            vlan, layer = layer.vlan, layer.payload
            if isinstance(layer, tags_t):
                ivlan, layer = layer.vlan, layer.payload
        cls = layer.__class__
        if cls is IP:
            ver, iplen, proto = 4, layer.len, layer.proto
        elif cls is IPv6:
            ver, iplen, proto = 6, layer.plen + 40, layer.nh
        else:
            continue
        l4 = layer.payload
        c4 = l4.__class__
        if c4 is TCP:
            sp, dp, fl = l4.sport, l4.dport, int(l4.flags) & 0xFF
        elif c4 is UDP:
            sp, dp, fl = l4.sport, l4.dport, 0
        else:
            sp = dp = fl = 0
        src, dst = layer.src, layer.dst   # text; the comparison normalises addresses
        if (src, sp) <= (dst, dp):
            key, d = (vlan, ivlan, ver, proto, src, sp, dst, dp), 0
        else:
            key, d = (vlan, ivlan, ver, proto, dst, dp, src, sp), 1
        st = table.get(key)
        if st is None:
            st = table[key] = [ts, ts, 0, 0, 0, 0, 0, 0, 0, 0]
        st[1] = ts
        st[2 + d] += 1
        st[4 + d] += iplen
        st[6 + d] += wirelen
        st[8 + d] |= fl
    return table, bad


# ---------------------------------------------------------------- agreement

@dataclass
class Agreement:
    """Result of comparing two flow tables."""
    what: str
    packets: int
    flows_a: int
    flows_b: int
    same: int = 0
    differ: int = 0
    only_a: int = 0
    only_b: int = 0
    excluded: int = 0
    examples: list = field(default_factory=list)
    error: str | None = None      # the check itself could not run

    @property
    def ok(self) -> bool:
        """Same flows, same counters."""
        return self.error is None and self.differ == 0 and self.only_a == 0 and self.only_b == 0 and self.same > 0


def _addr16(a) -> bytes:
    """16-byte form of an address given as 4/16 raw bytes or as text."""
    if isinstance(a, str):
        return socket.inet_pton(socket.AF_INET6, a) if ":" in a else _V4_MAPPED + socket.inet_aton(a)
    a = bytes(a)
    return _V4_MAPPED + a if len(a) == 4 else a


def _canonical(vlan, ivlan, ver, proto, a, ap, b, bp, ab: tuple, ba: tuple, first, last):
    """(key, value) with the lower endpoint first and the counters ordered to match."""
    a, b = _addr16(a), _addr16(b)
    if (a, ap) > (b, bp):
        a, ap, b, bp, ab, ba = b, bp, a, ap, ba, ab
    return (vlan, ivlan, ver, proto, a, ap, b, bp), (ab, ba, first, last)


def table_flows(table: dict) -> dict:
    """Baseline table -> {canonical key: ((pk, ip, l2, flags) a->b, same b->a, first, last)}."""
    out = {}
    for (vlan, ivlan, ver, proto, a, ap, b, bp), s in table.items():
        k, v = _canonical(vlan, ivlan, ver, proto, a, ap, b, bp, (s[2], s[4], s[6], s[8]),
                          (s[3], s[5], s[7], s[9]), s[0], s[1])
        out[k] = v
    return out


def record_flows(records: np.ndarray) -> tuple[dict, set, int]:
    """Flow records -> (canonical flows, keys of exotic flows to leave out, duplicate keys)."""
    out, exotic, dup = {}, set(), 0
    for r in records.tolist():  # tuples in FLOW_DTYPE field order
        (start, end, _rs, _re, pk, rpk, octs, rocts, l2, rl2, src, dst, _h, sp, dp, vlan, ivlan, _port,
         flags, ver, proto, tf, rtf, _reason, _pad) = r
        k, v = _canonical(vlan, ivlan, ver, proto, src, sp, dst, dp, (pk, octs, l2, tf), (rpk, rocts, rl2, rtf),
                          start, end)
        if k in out:
            dup += 1
        out[k] = v
        if flags & _EXOTIC or proto not in (6, 17):
            exotic.add(k)
    return out, exotic, dup


def compare(what: str, packets: int, a: dict, b: dict, exclude: set = frozenset(), dup: int = 0) -> Agreement:
    """Compare two canonical flow tables, leaving out keys in `exclude` and flows without ports
    (flows the baselines cannot key like the C meter: fragments, ICMP, exotic encapsulations)."""
    def keep(k):
        return k not in exclude and k[3] in (6, 17) and not (k[5] == 0 and k[7] == 0)

    ka = {k for k in a if keep(k)}
    kb = {k for k in b if keep(k)}
    g = Agreement(what, packets, len(a) + dup, len(b), excluded=len(a) - len(ka) + len(b) - len(kb))
    g.only_a, g.only_b = len(ka - kb) + dup, len(kb - ka)
    for k in ka & kb:
        if a[k] == b[k]:
            g.same += 1
        else:
            g.differ += 1
            if len(g.examples) < 3:
                g.examples.append({"key": _key_text(k), "a": _value_text(a[k]), "b": _value_text(b[k])})
    for k in list(ka - kb)[:2] + list(kb - ka)[:2]:
        g.examples.append({"key": _key_text(k), "only in": "a" if k in ka else "b"})
    return g


def _key_text(k) -> str:
    """Readable canonical key."""
    import ipaddress  # noqa: PLC0415

    def addr(x):
        return str(ipaddress.IPv6Address(x).ipv4_mapped or ipaddress.IPv6Address(x))

    vlan, ivlan, ver, proto, a, ap, b, bp = k
    return f"vlan {vlan}/{ivlan} v{ver} proto {proto} {addr(a)}:{ap} <-> {addr(b)}:{bp}"


def _value_text(v) -> str:
    """Readable per-direction counters of a canonical flow."""
    ab, ba, first, last = v
    return f"a->b (pkts, ip B, frame B, tcp flags) {ab}, b->a {ba}, first {first}, last {last}"


# ---------------------------------------------------------------- runs and rounds

@dataclass
class MethodRun:
    """One method measured once."""
    method: str
    round: int
    packets: int = 0
    cpu_ns: int = 0
    metered: int = 0
    flows: int = 0
    unparsable: int = 0
    error: str | None = None

    @property
    def mpps(self) -> float:
        """Packets per CPU-microsecond = millions of packets per CPU-second."""
        return self.packets * 1e3 / self.cpu_ns if self.cpu_ns else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready form including the rate."""
        return {**asdict(self), "mpps_per_cpu_s": self.mpps}


def prefix_sizes(w: Workload, cfg: Settings) -> dict:
    """Packets each method meters: the whole capture for C, prefixes for the baselines."""
    n = len(w)
    return {"flowmeter": n, "flowmeter-arrays": n, "dpkt": min(cfg.dpkt_packets, n),
            "scapy": min(cfg.scapy_packets, n)}


def run_method(method: str, w: Workload, cfg: Settings, rnd: int, lists: dict) -> tuple[MethodRun, object]:
    """Measure one method once; returns the run and its flow table (records or dict)."""
    n = prefix_sizes(w, cfg)[method]
    r = MethodRun(method, rnd, n)
    try:
        if method == "flowmeter":
            out = meter_ring(w, n, cfg)
        elif method == "flowmeter-arrays":
            out = meter_arrays(w, n)
        else:
            fn = meter_dpkt if method == "dpkt" else meter_scapy
            t0 = time.thread_time_ns()
            table, bad = fn(lists[method])
            out = {"cpu_ns": time.thread_time_ns() - t0, "metered": n - bad, "records": table, "unparsable": bad}
        r.cpu_ns, r.metered, r.unparsable = out["cpu_ns"], out["metered"], out.get("unparsable", 0)
        r.flows = len(out["records"])
        return r, out["records"]
    except Exception as e:  # noqa: BLE001 - one broken method must not hide the others' results
        r.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        return r, None


def check_agreement(w: Workload, cfg: Settings, lists: dict, dpkt_table=None, scapy_table=None) -> list[Agreement]:
    """The C flow table (ring path) vs dpkt on dpkt's prefix; scapy vs dpkt on scapy's prefix."""
    sizes = prefix_sizes(w, cfg)
    out = []
    n = sizes["dpkt"]
    if dpkt_table is None:
        dpkt_table = meter_dpkt(lists["dpkt"])[0]
    ref = table_flows(dpkt_table)
    c, exotic, dup = record_flows(meter_ring(w, n, cfg)["records"])
    out.append(compare("C flow table (ring) vs dpkt", n, c, ref, exotic, dup))
    if "scapy" in cfg.methods:
        m = sizes["scapy"]
        if scapy_table is None:
            scapy_table = meter_scapy(lists["scapy"])[0]
        out.append(compare("scapy vs dpkt", m, table_flows(scapy_table), table_flows(meter_dpkt(lists["dpkt"][:m])[0]),
                           exotic))
    return out


def run_bench(w: Workload, cfg: Settings, progress=None) -> tuple[list[MethodRun], list[Agreement]]:
    """Every method in every round (interleaved), then the agreement check."""
    sizes = prefix_sizes(w, cfg)
    lists = {m: w.packet_list(sizes[m]) for m in ("dpkt", "scapy") if m in cfg.methods or m == "dpkt"}
    # imports and the parsers' lazy set-up (scapy builds its layer caches on first use) are
    # not metering: run each baseline once on a few packets before anything is timed
    for m, fn in (("dpkt", meter_dpkt), ("scapy", meter_scapy)):
        if m in lists:
            fn(lists[m][:WARMUP])
    runs, tables = [], {}
    total, i = cfg.repeat * len(cfg.methods), 0
    for rnd in range(cfg.repeat):
        for m in cfg.methods:
            t0 = time.monotonic()
            r, table = run_method(m, w, cfg, rnd, lists)
            runs.append(r)
            if rnd == 0 and m in ("dpkt", "scapy"):
                tables[m] = table
            i += 1
            if progress:
                progress(i, total, r, time.monotonic() - t0)
    try:
        agree = check_agreement(w, cfg, lists, tables.get("dpkt"), tables.get("scapy"))
    except Exception as e:  # noqa: BLE001 - report it as a failed check, not a traceback
        agree = [Agreement("C flow table (ring) vs dpkt", 0, 0, 0, error=f"{type(e).__name__}: {e}")]
    return runs, agree


# ---------------------------------------------------------------- summary

@dataclass
class Row:
    """One method's medians over the rounds."""
    method: str
    packets: int
    rounds: int
    cpu_s: float
    mpps: float
    ns_per_pkt: float
    flows: int
    vs_dpkt: float
    vs_scapy: float
    errors: list


def _median(xs) -> float:
    """Median of the measured values (NaN left out); NaN if none."""
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _paired(runs: list[MethodRun], num: str, den: str) -> float:
    """Median over rounds of num's rate / den's rate in the same round."""
    by = {(r.method, r.round): r for r in runs if r.error is None}
    return _median([by[(num, k)].mpps / by[(den, k)].mpps for (m, k) in by if m == num and (den, k) in by])


def summarize(runs: list[MethodRun]) -> list[Row]:
    """One row per method, in METHODS order."""
    rows = []
    for m in dict.fromkeys(r.method for r in runs):
        ok = [r for r in runs if r.method == m and r.error is None]
        mpps = _median([r.mpps for r in ok])
        first = next(r for r in runs if r.method == m)
        rows.append(Row(m, first.packets, len(ok), _median([r.cpu_ns / 1e9 for r in ok]), mpps,
                        1e3 / mpps if mpps == mpps else float("nan"), ok[0].flows if ok else 0,
                        _paired(runs, m, "dpkt") if m != "dpkt" else float("nan"),
                        _paired(runs, m, "scapy") if m != "scapy" else float("nan"),
                        [r.error for r in runs if r.method == m and r.error]))
    return rows


def targets(rows: list[Row]) -> list[Target]:
    """>= 80x dpkt and >= 5 Mpps per core, both for the production (ring) path."""
    fm = next((r for r in rows if r.method == "flowmeter" and r.rounds), None)
    have_dpkt = any(r.method == "dpkt" and r.rounds for r in rows)
    x = fm.vs_dpkt if fm and have_dpkt else float("nan")
    mpps = fm.mpps if fm else float("nan")
    return [
        Target(f"flow meter >= {TARGET_VS_DPKT:.0f}x dpkt (packets per CPU-second)", _f(x, "{:.0f}x"),
               None if x != x else x >= TARGET_VS_DPKT, "" if x == x else "flowmeter or dpkt not run"),
        Target(f"flow meter >= {TARGET_MPPS:g} Mpps per core", _f(mpps, "{:.2f} Mpps"),
               None if mpps != mpps else mpps >= TARGET_MPPS, "ring path, one consumer thread's CPU time"),
    ]


def agreement_ok(agree: list[Agreement]) -> bool:
    """Every comparison matched."""
    return bool(agree) and all(a.ok for a in agree)


def results_ok(runs: list[MethodRun], agree: list[Agreement]) -> bool:
    """No run failed and the tables agree: what makes the bench exit 0."""
    return agreement_ok(agree) and all(r.error is None for r in runs)


# ---------------------------------------------------------------- report

def machine_info() -> dict:
    """What the numbers were measured on."""
    import platform  # noqa: PLC0415
    from importlib import metadata  # noqa: PLC0415

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    model = cpu_model()
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "numpy": np.__version__, "dpkt": version("dpkt"),
            "scapy": version("scapy")}


def results_table(rows: list[Row]):
    """rich Table of the methods with rates and ratios."""
    from rich.table import Table  # noqa: PLC0415

    t = Table(title="flow metering, packets per CPU-second", title_justify="left")
    for col in ("method", "packets", "CPU s", "Mpps per\nCPU-second", "ns/pkt", "flows", "x dpkt", "x scapy"):
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for r in rows:
        if not r.rounds:
            t.add_row(r.method, f"{r.packets:,}", "[red]error[/red]", "", "", "", "", "")
            continue
        t.add_row(r.method, f"{r.packets:,}", _f(r.cpu_s, "{:.3f}"), _f(r.mpps, "{:.3f}"), _f(r.ns_per_pkt, "{:.0f}"),
                  f"{r.flows:,}", _f(r.vs_dpkt, "{:.1f}x", ""), _f(r.vs_scapy, "{:.1f}x", ""))
    return t


def agreement_lines(agree: list[Agreement]) -> list[str]:
    """One line per comparison plus examples of differences."""
    out = []
    for a in agree:
        if a.error:
            out.append(f"[red]agree: NO - {a.what}: the check could not run: {a.error}[/red]")
            continue
        head = (f"agree: {'yes' if a.ok else 'NO'} - {a.what} on the first {a.packets:,} packets: "
                f"{a.flows_a:,} vs {a.flows_b:,} flows, {a.same:,} identical (packets, IP bytes, frame bytes, "
                f"TCP flags per direction, first/last ts)")
        if not a.ok:
            head += f", {a.differ:,} differ, {a.only_a:,} only left, {a.only_b:,} only right"
        if a.excluded:
            head += f", {a.excluded:,} flows without ports or with fragments/tunnels left out"
        out.append(f"[green]{head}[/green]" if a.ok else f"[red]{head}[/red]")
        out += [f"    {e}" for e in a.examples if not a.ok]
    return out


def render(console, rows: list[Row], ts: list[Target], agree: list[Agreement], header: str) -> None:
    """Print the whole report: header, results, legend, agreement, targets."""
    console.print(header)
    console.print(results_table(rows))
    for r in rows:
        for e in dict.fromkeys(x.splitlines()[0] for x in r.errors):
            console.print(f"[red]{r.method}: {e}[/red]")
    console.print("methods:")
    for r in rows:
        console.print(f"  {r.method:<17} {METHODS.get(r.method, '')}")
    console.print(LEGEND)
    for line in agreement_lines(agree):
        console.print(line)
    console.print(targets_table(ts))


LEGEND = (
    "columns (medians over rounds): CPU s = CPU time of the metering thread (time.thread_time) for "
    "`packets` packets; Mpps per CPU-second = packets / CPU s, i.e. what one core sustains; x dpkt / "
    "x scapy = median over rounds of the rate over that baseline's rate in the same round. The C "
    "methods meter the whole capture, the Python baselines a prefix (rates do not depend on the count); "
    "the baselines get their packets as a ready list of bytes (reading is not measured), the ring path "
    "pays for reading the ring."
)


def report_dict(runs, rows, ts, agree, info, settings: dict, workload: dict) -> dict:
    """Everything measured, for --json (NaN becomes null)."""
    return no_nan({"settings": settings, "machine": info, "workload": workload,
                    "rows": [asdict(r) for r in rows], "targets": [asdict(t) for t in ts],
                    "agreement": [{**asdict(a), "ok": a.ok} for a in agree], "agreement_ok": agreement_ok(agree),
                    "ok": results_ok(runs, agree), "runs": [r.to_dict() for r in runs]})


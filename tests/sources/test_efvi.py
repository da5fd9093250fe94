"""ef_vi backend contract tests (capfan/_core/src_efvi.c).

src_efvi.c is compiled here, with the C core files it needs, against capfan's own ef_vi test
emulation (tests/emul/efvi: its own declarations of the API subset, not Onload's headers) into a
test shared library, driven through ctypes on a ring created with capfan.ring, and read back
with capfan.ring.Consumer. The emulation replays a pcap and injects discards, jumbo frames,
no-descriptor truncation, resets and unsynchronised timestamps; the tests compare what arrives
in the ring (and the backend's counters) with what it injected.

The "real" parametrization needs Onload's etherfabric headers and libciul; its oracles (known
traffic, injected faults) exist only in the emulation, so on such a host it compiles src_efvi.c
against the real headers and skips the traffic checks with that reason. Nothing is faked.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from capfan import ring as ringlib
from tests import frames as fr

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "capfan" / "_core"
EMUL = ROOT / "tests" / "emul" / "efvi"
CORE_SRCS = ["ring.c", "parse.c", "source.c", "src_efvi.c"]
REAL_HEADER = Path("/usr/include/etherfabric/vi.h")
NO_REAL = "Onload ef_vi headers not found: no Solarflare library on this machine"
NEEDS_EMUL = "needs the emulation's controlled traffic and injected faults (a real NIC's traffic is not known in advance)"
T0_NS = 1_700_000_000_123_456_789
F_HWTS, F_HWTS_SYNC, F_TRUNCATED = 1, 2, 4
# EF_EVENT_RX_DISCARD_* reasons in the order the emulation declares them
CSUM_BAD, MCAST_MISMATCH, CRC_BAD, TRUNC, RIGHTS, EV_ERROR, OTHER = range(7)


def _cc():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build the ef_vi test library")
    return cc


def _compile(out: Path, include: list[str], extra_srcs: list[Path], libs: list[str]):
    cmd = [_cc(), "-shared", "-fPIC", "-std=c11", "-O1", "-g", "-Wall", "-Wno-unused-parameter", "-D_GNU_SOURCE",
           "-DCAPFAN_HAVE_EFVI", *[f"-I{d}" for d in include], f"-I{CORE}", "-o", str(out),
           *[str(CORE / s) for s in CORE_SRCS], *map(str, extra_srcs), "-lpthread", *libs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    return out


@pytest.fixture(scope="session")
def emul_lib(tmp_path_factory):
    """src_efvi.c + ring/parse/source + the emulation, as one test shared library."""
    d = tmp_path_factory.mktemp("emul_efvi")
    return _compile(d / "libcapfan_efvi_emul.so", [str(EMUL / "include")], [EMUL / "emul_efvi.c"], [])


@pytest.fixture(params=["emulation", "real"])
def backend(request):
    if request.param == "real" and not REAL_HEADER.exists():
        pytest.skip(NO_REAL)
    return request.param


class Opts(ctypes.Structure):
    _fields_ = [("ifname", ctypes.c_char_p), ("rss_vis", ctypes.c_int32), ("rxq_size", ctypes.c_int32),
                ("evq_size", ctypes.c_int32), ("hw_timestamps", ctypes.c_int32), ("merge", ctypes.c_int32),
                ("filters", ctypes.c_char_p), ("port", ctypes.c_uint16), ("wait", ctypes.c_int32),
                ("jumbo", ctypes.c_int32), ("jumbo_bytes", ctypes.c_uint64), ("spin_us", ctypes.c_uint32)]


class Counters(ctypes.Structure):
    _fields_ = [("discards", ctypes.c_uint64 * 8)] + [(n, ctypes.c_uint64) for n in (
        "no_desc_trunc", "resets", "jumbo", "rx_multi", "hwts_unsynced", "reposted", "held_back",
        "jumbo_reassembled", "jumbo_no_room", "primes", "wakeups")]


class Stats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "packets", "bytes", "published", "ring_drops", "kernel_drops", "kernel_freezes", "malformed", "truncated",
        "hw_timestamps", "xdp_rx_invalid", "xdp_rx_ring_full", "xdp_fill_empty", "loops_done", "file_offset",
        "file_bytes")] + [(n, ctypes.c_uint32) for n in ("zerocopy", "xdp_mode", "eof", "_pad")] + [
        (n, ctypes.c_uint64) for n in ("nic_drops", "ring_overflows", "shared_overflows")]


class Driver:
    """One emulated NIC + the ef_vi source publishing into ring `name` (a fresh library copy per
    test: the emulation's wire is process-global state)."""

    n = 0

    def __init__(self, so: Path, tmp: Path, ring_name: str, **kw):
        Driver.n += 1  # a new file is a new load: a fresh emulated wire (dlopen dedups by path)
        copy = tmp / f"libcapfan_efvi{Driver.n}.so"
        shutil.copy(so, copy)
        self.lib = lib = ctypes.CDLL(str(copy), mode=ctypes.RTLD_LOCAL)
        vp = ctypes.c_void_p
        lib.capfan_producer_open.restype = vp
        lib.capfan_producer_open.argtypes = [ctypes.c_char_p]
        lib.capfan_efvi_open.restype = vp
        lib.capfan_efvi_open.argtypes = [ctypes.POINTER(Opts), vp]
        lib.capfan_source_prepare.argtypes = [vp, vp]
        lib.capfan_source_recv.argtypes = [vp, vp, ctypes.c_uint32, ctypes.c_int64]
        lib.capfan_source_get_stats.argtypes = [vp, ctypes.POINTER(Stats)]
        lib.capfan_efvi_counters_get.argtypes = [vp, ctypes.POINTER(Counters)]
        lib.capfan_source_close.argtypes = [vp]
        lib.capfan_producer_close.argtypes = [vp]
        lib.capfan_last_error.restype = ctypes.c_char_p
        for f in ("discards",):
            getattr(lib, f"capfan_efvi_emul_{f}").argtypes = [ctypes.c_int]
        for f in ("discards", "resets", "truncs", "jumbo", "delivered", "unsynced", "filters"):
            getattr(lib, f"capfan_efvi_emul_{f}").restype = ctypes.c_uint64
        self.p = lib.capfan_producer_open(ringlib.ring_path(ring_name).encode())
        assert self.p, lib.capfan_last_error()
        o = dict(ifname=b"emul0", rss_vis=0, rxq_size=-1, evq_size=-1, hw_timestamps=1, merge=0,
                 filters=None, port=0, wait=0, jumbo=0, jumbo_bytes=0, spin_us=0)
        o.update(kw)
        if isinstance(o["filters"], str):
            o["filters"] = o["filters"].encode()
        self.opts = Opts(**o)
        self.s = lib.capfan_efvi_open(ctypes.byref(self.opts), self.p)
        if not self.s:
            self.err = lib.capfan_last_error().decode()
            return
        assert lib.capfan_source_prepare(self.s, self.p) == 0, lib.capfan_last_error()

    def step(self, timeout_ns=0) -> int:
        n = self.lib.capfan_source_recv(self.s, self.p, 4096, timeout_ns)
        assert n >= 0, self.lib.capfan_last_error()
        return n

    def run(self, max_idle=200) -> int:
        """Receive until the emulated wire is exhausted (and nothing more arrives)."""
        total, idle = 0, 0
        while idle < max_idle:
            n = self.step(1_000_000)
            total += n
            idle = 0 if n else idle + 1
            if not n and self.lib.capfan_efvi_emul_done():
                break
        return total

    def stats(self) -> Stats:
        st = Stats()
        self.lib.capfan_source_get_stats(self.s, ctypes.byref(st))
        return st

    def counters(self) -> Counters:
        c = Counters()
        assert self.lib.capfan_efvi_counters_get(self.s, ctypes.byref(c)) == 0
        return c

    def emul(self, what, *a) -> int:
        return getattr(self.lib, f"capfan_efvi_emul_{what}")(*a)

    def close(self):
        if getattr(self, "s", None):
            self.lib.capfan_source_close(self.s)
            self.s = None
        if self.p:
            self.lib.capfan_producer_close(self.p)
            self.p = None


def write_pcap_ns(path, frames_ts):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for ts, frame in frames_ts:
            f.write(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)


def traffic(n=300, size=60, jumbo_every=0, jumbo_size=9000):
    out = []
    for k in range(n):
        big = jumbo_every and k % jumbo_every == jumbo_every - 1
        # jumbo payloads vary byte by byte: a misplaced piece in reassembly shows
        pay = struct.pack("!I", k) + (bytes((k * 31 + i) & 0xFF for i in range(jumbo_size)) if big
                                      else b"j" * (size + (k * 7) % 300))
        out.append((T0_NS + k * 1003, fr.udp4(f"10.0.{k % 50}.1", f"10.1.{k % 7}.2", 1000 + k % 50, 53, pay)))
    return out


@pytest.fixture
def setup(backend, emul_lib, ring_dir, tmp_path, monkeypatch):
    """Returns make(frames, ring geometry..., **opts) -> (Driver, frames)."""
    if backend == "real":
        pytest.skip(NEEDS_EMUL)
    for var in ("CAPFAN_EFVI_EMUL_DISCARD_EVERY", "CAPFAN_EFVI_EMUL_RESET_AT", "CAPFAN_EFVI_EMUL_UNSYNC_EVERY",
                "CAPFAN_EFVI_EMUL_BUF_LEN"):
        monkeypatch.delenv(var, raising=False)
    drivers = []

    def make(frames, env=None, ndesc=1 << 12, arena=8 << 20, full_policy="block", ring=None, **kw):
        pcap = tmp_path / "wire.pcap"
        write_pcap_ns(pcap, frames)
        monkeypatch.setenv("CAPFAN_EFVI_EMUL_PCAP", str(pcap))
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, str(v))
        name = ring or f"efvi{len(drivers)}"
        if ring is None:
            ringlib.create(name, ndesc=ndesc, arena_bytes=arena, full_policy=full_policy)
        d = Driver(emul_lib, tmp_path, name, **kw)
        drivers.append(d)
        return d, name

    yield make
    for d in drivers:
        d.close()


def drain(consumer, want=None, timeout=0.05):
    """Every (ts, flags, port, wirelen, bytes) the consumer can read now."""
    out = []
    while True:
        b = consumer.next(timeout=timeout)
        if b is None or len(b) == 0:
            break
        desc = b.desc
        for i in range(len(b)):
            out.append((int(desc["ts_ns"][i]), int(desc["flags"][i]), int(desc["port"][i]),
                        int(desc["wirelen"][i]), bytes(b.packet(i))))
        b.release()
    return out


# ---------------------------------------------------------------- build

def test_product_build_lists_efvi_only_with_headers():
    """build.py compiles src_efvi.c only where Onload's headers are found."""
    src = (CORE / "build.py").read_text()
    assert '("src_efvi.c", "CAPFAN_HAVE_EFVI", ["etherfabric/vi.h"' in src
    ns: dict = {"__file__": str(CORE / "build.py")}
    exec(compile(src.split("def configure")[0], "build_probe", "exec"), ns)  # imports, OPTIONAL, have_headers
    if not REAL_HEADER.exists():
        assert not ns["have_headers"](["etherfabric/vi.h"])


def test_compiles_against_real_headers(backend, tmp_path):
    """On an Onload host, src_efvi.c compiles and links against the real etherfabric headers and libciul."""
    if backend == "emulation":
        pytest.skip("the emulation build is covered by every other test")
    _compile(tmp_path / "libcapfan_efvi_real.so", [], [], ["-lciul"])


# ---------------------------------------------------------------- traffic

def test_every_packet_once_with_hw_timestamp(setup):
    frames = traffic(400)
    d, name = setup(frames, env={"CAPFAN_EFVI_EMUL_UNSYNC_EVERY": 37})
    c = ringlib.Consumer(name, "check", policy="reliable")
    got = []
    while True:
        n = d.run(max_idle=5)
        got += drain(c)
        if d.emul("done") and n == 0:
            break
    got += drain(c)
    assert [g[4] for g in got] == [f for _, f in frames]
    assert [g[0] for g in got] == [ts for ts, _ in frames]
    unsynced = [i for i, g in enumerate(got) if not g[1] & F_HWTS_SYNC]
    assert all(g[1] & F_HWTS for g in got)
    assert unsynced == [i for i in range(len(frames)) if (i + 1) % 37 == 0]
    assert [g[3] for g in got] == [len(f) for _, f in frames]
    st, cn = d.stats(), d.counters()
    assert st.published == st.packets == len(frames) and st.hw_timestamps == len(frames)
    assert cn.hwts_unsynced == len(unsynced) == d.emul("unsynced")
    assert d.emul("filters") == 1  # default sniff-promisc


def test_discard_counters_match_injected(setup):
    frames = traffic(500)
    d, name = setup(frames, env={"CAPFAN_EFVI_EMUL_DISCARD_EVERY": 7})
    c = ringlib.Consumer(name, "check")
    got = []
    while not d.emul("done"):
        d.run(max_idle=5)
        got += drain(c)
    got += drain(c)
    cn = d.counters()
    injected = [d.emul("discards", r) for r in range(8)]
    assert sum(injected) == len(frames) // 7
    assert list(cn.discards) == injected
    assert injected[CSUM_BAD] and injected[CRC_BAD] and injected[TRUNC] and injected[MCAST_MISMATCH] and injected[OTHER]
    kept = [f for i, (_, f) in enumerate(frames) if (i + 1) % 7]
    assert [g[4] for g in got] == kept


def test_jumbo_cut_to_first_buffer_and_counted(setup):
    """jumbo = 0 (truncate): a multi-buffer frame is published from its first buffer, flagged."""
    frames = traffic(120, jumbo_every=10, jumbo_size=5000)
    d, name = setup(frames, jumbo=0)
    c = ringlib.Consumer(name, "check")
    d.run()
    got = drain(c)
    assert len(got) == len(frames)
    st, cn = d.stats(), d.counters()
    assert cn.jumbo == d.emul("jumbo") == 12 and st.truncated == 12
    for (ts, f), g in zip(frames, got):
        assert g[0] == ts and g[3] == len(f)
        if len(f) > 2048 - 16:
            assert g[1] & F_TRUNCATED and g[4] == f[:2048 - 16]
        else:
            assert g[4] == f and not g[1] & F_TRUNCATED


def test_jumbo_reassembled_byte_identical(setup):
    """jumbo = 1: frames spanning 2..5 buffers (SOP|CONT ... final) are copied whole into the
    jumbo area: the ring holds the original bytes, not truncated, with the first buffer's
    timestamp; the buffers go back to the NIC."""
    sizes = [2500, 4000, 6000, 9000, 8200]  # 2, 2, 3, 5 and 5 buffers of 2048 (16 of prefix)
    frames = [(ts, f if len(f) < 2000 else f[:42] + bytes((i * 7 + k) & 0xFF for i in range(sizes[k % 5])))
              for k, (ts, f) in enumerate(traffic(150, jumbo_every=5, jumbo_size=2500))]
    d, name = setup(frames, jumbo=1, env={"CAPFAN_EFVI_EMUL_UNSYNC_EVERY": 10})
    c = ringlib.Consumer(name, "check")
    d.run()
    got = drain(c)
    assert [g[4] for g in got] == [f for _, f in frames]
    assert [g[3] for g in got] == [len(f) for _, f in frames]
    assert [g[0] for g in got] == [ts for ts, _ in frames]
    assert not any(g[1] & F_TRUNCATED for g in got)
    assert [bool(g[1] & F_HWTS_SYNC) for g in got] == [(i + 1) % 10 != 0 for i in range(len(frames))]
    st, cn = d.stats(), d.counters()
    njumbo = sum(1 for _, f in frames if len(f) + 16 > 2048)
    assert cn.jumbo == cn.jumbo_reassembled == d.emul("jumbo") == njumbo == 30
    assert cn.jumbo_no_room == 0 and st.truncated == 0 and st.published == len(frames)


def test_jumbo_area_held_by_a_consumer_falls_back_to_truncation(setup):
    """A reliable consumer holding reassembled frames: once the jumbo area is full the next jumbo
    frames are published cut to their first buffer (counted), nothing held is overwritten, and
    after the consumer catches up reassembly resumes in the freed space."""
    frames = traffic(80, jumbo_every=2, jumbo_size=9000)  # 40 jumbo frames of ~9 KB
    # a 64 KiB jumbo area: 7 frames of 9 KB fit
    d, name = setup(frames, jumbo=1, jumbo_bytes=64 << 10, ndesc=1 << 10, arena=1 << 20)
    c = ringlib.Consumer(name, "holder", policy="reliable", stall_budget_us=60_000_000)

    def recv_some():
        assert d.lib.capfan_source_recv(d.s, d.p, 12, 1_000_000) >= 0

    while d.stats().published < 6:
        recv_some()
    held = c.next(timeout=0.5)
    assert held is not None and len(held) >= 6
    snap = [bytes(held.packet(i)) for i in range(len(held))]
    assert snap == [f for _, f in frames[:len(snap)]]
    for _ in range(200):
        if d.counters().jumbo_no_room >= 3:
            break
        recv_some()
    cn = d.counters()
    assert cn.jumbo_no_room >= 3 and 3 <= cn.jumbo_reassembled <= 7
    assert [bytes(held.packet(i)) for i in range(len(held))] == snap  # the jumbo area was not reused
    held.release()
    got = drain(c)  # catching up frees the jumbo area
    before = d.counters().jumbo_reassembled
    d.run()
    got += drain(c)
    cn = d.counters()
    assert cn.jumbo_reassembled > before + 3, "reassembly resumes once the area is free"
    assert cn.jumbo_reassembled + cn.jumbo_no_room == cn.jumbo == 40
    assert len(snap) + len(got) == len(frames)
    cut = 0
    for (ts, f), g in zip(frames[len(snap):], got, strict=True):
        if g[1] & F_TRUNCATED:
            cut += 1
            assert g[4] == f[:2048 - 16] and g[3] == len(f)
        else:
            assert g[4] == f
    assert cut == cn.jumbo_no_room == d.stats().truncated


def test_no_descriptor_truncation(setup):
    """A jumbo frame needing more buffers than the RX queue holds is cut (RX_NO_DESC_TRUNC)."""
    frames = traffic(30, jumbo_every=5, jumbo_size=8000)
    d, name = setup(frames, rxq_size=2)
    c = ringlib.Consumer(name, "check")
    d.run()
    got = drain(c)
    cn = d.counters()
    assert cn.no_desc_trunc == d.emul("truncs") == 6
    assert len(got) == len(frames)
    assert [g[0] for g in got] == [ts for ts, _ in frames]


def test_rx_multi_merged_events(setup):
    frames = traffic(300)
    d, name = setup(frames, merge=1, env={"CAPFAN_EFVI_EMUL_DISCARD_EVERY": 11})
    c = ringlib.Consumer(name, "check")
    d.run()
    got = drain(c)
    cn = d.counters()
    assert cn.rx_multi > 0 and cn.rx_multi < len(frames)
    assert [g[4] for g in got] == [f for i, (_, f) in enumerate(frames) if (i + 1) % 11]
    assert sum(cn.discards) == len(frames) // 11


def test_reset_reposts_and_loses_nothing_waiting(setup):
    frames = traffic(200)
    d, name = setup(frames, env={"CAPFAN_EFVI_EMUL_RESET_AT": 90})
    c = ringlib.Consumer(name, "check")
    d.run()
    got = drain(c)
    assert d.counters().resets == d.emul("resets") == 1
    assert [g[4] for g in got] == [f for _, f in frames]


def test_rss_vi_set_spreads_by_flow(setup):
    frames = traffic(400)
    d, name = setup(frames, rss_vis=4, port=10, filters="all-unicast,all-multicast")
    c = ringlib.Consumer(name, "check")
    d.run()
    got = drain(c)
    assert sorted(g[4] for g in got) == sorted(f for _, f in frames)
    by_port = {}
    for g in got:
        by_port.setdefault(g[2], set()).add(g[4][26:38])  # addresses + ports: one flow, one VI
    assert set(by_port) <= {10, 11, 12, 13} and len(by_port) > 1
    flows = [fl for s in by_port.values() for fl in s]
    assert len(flows) == len(set(flows))
    assert d.emul("filters") == 2


def test_filters_from_config(setup):
    d, _ = setup(traffic(5), filters="udp:10.0.0.1:53,tcp:10.0.0.1:80:10.9.9.9:4000,sniff")
    assert d.emul("filters") == 3
    d2, _ = setup(traffic(5), filters="udp:nothost:53")
    assert not d2.s and "bad ef_vi filter" in d2.err
    d3, _ = setup(traffic(5), filters="everything")
    assert not d3.s and "unknown ef_vi filter" in d3.err


def test_buffers_reclaimed_only_after_consumer_release(setup):
    """A reliable consumer holding a batch keeps its buffers from the NIC: their bytes stay intact
    and the backend stops (block) instead of reposting them."""
    frames = traffic(600)
    # arena of 64 buffers, plenty of descriptors: buffers are the scarce resource
    d, name = setup(frames, ndesc=1 << 10, arena=64 * 2048, rxq_size=16)
    c = ringlib.Consumer(name, "holder", policy="reliable", stall_budget_us=60_000_000)
    d.run(max_idle=20)
    held = c.next(timeout=0.5)
    assert held is not None and len(held) > 0
    snapshot = [bytes(held.packet(i)) for i in range(len(held))]
    first_n = len(held)
    for _ in range(50):
        d.step(1_000_000)
    assert [bytes(held.packet(i)) for i in range(len(held))] == snapshot  # never overwritten
    assert d.counters().held_back > 0
    assert not d.emul("done")
    assert snapshot == [f for _, f in frames[:first_n]]
    held.release()
    got = [g[4] for g in drain(c)]
    while not d.emul("done"):
        d.run(max_idle=5)
        got += [g[4] for g in drain(c)]
    got += [g[4] for g in drain(c)]
    assert snapshot + got == [f for _, f in frames]


def test_restarted_producer_keeps_buffers_a_consumer_holds(setup):
    """After the capture restarts on the same ring, packets a reliable consumer still holds keep
    their buffers: the new source does not post them to the NIC."""
    first = traffic(40)
    d, name = setup(first, ndesc=1 << 10, arena=64 * 2048, rxq_size=16)
    c = ringlib.Consumer(name, "holder", policy="reliable", stall_budget_us=60_000_000)
    d.run(max_idle=20)
    held = c.next(timeout=0.5, max_packets=8)
    assert held is not None and len(held) == 8
    snapshot = [bytes(held.packet(i)) for i in range(len(held))]
    d.close()
    second = [(ts, f[:-4] + b"NEW!") for ts, f in traffic(300, size=200)]
    d2, _ = setup(second, ring=name, rxq_size=16)
    for _ in range(40):
        d2.step(1_000_000)
    assert [bytes(held.packet(i)) for i in range(len(held))] == snapshot
    assert snapshot == [f for _, f in first[:8]]

"""SNF backend contract tests (capfan/_core/src_snf.c, capfan.sources.snf).

Every test runs against the capfan-owned emulation of the public SNF API (tests/emul/snf,
compiled here with cc into a shared library) and, when $CAPFAN_SNF_LIB names a real Myricom/CSPi
libsnf, against that library too. Tests whose oracle is the traffic the emulation replays from
a pcap (exactly-once delivery, injected drops and overflows, version games) cannot be checked on
a real port and say so when skipped there; nothing is faked.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capfan import errors
from capfan import ring as ringlib
from capfan.sources import open_source
from capfan.sources.snf import SnfSource
from tests import frames as fr
from tests.netns import veth  # noqa: F401 - fixture

EMUL_SRC = Path(__file__).resolve().parents[1] / "emul" / "snf" / "emul_snf.c"
REAL_LIB = os.environ.get("CAPFAN_SNF_LIB")
NEEDS_EMUL = "needs the emulation's controlled traffic (a real port's traffic is not known in advance)"
T0_NS = 1_700_000_000_123_456_789


@pytest.fixture(scope="session")
def emul_builds(tmp_path_factory):
    """The emulation compiled three times: complete, without borrow-many receive, without
    snf_version_api."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build the SNF emulation")
    d = tmp_path_factory.mktemp("emul_snf")
    out = {}
    for name, extra in (("many", []), ("single", ["-DEMUL_NO_RECV_MANY"]), ("noversion", ["-DEMUL_NO_VERSION_API"])):
        so = d / f"libsnf-{name}.so"
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(so), str(EMUL_SRC), "-lpthread"] + extra,
                       check=True)
        out[name] = so
    return out


@pytest.fixture(params=["emulation", "real"])
def backend(request):
    """'emulation', or 'real' when CAPFAN_SNF_LIB names a Myricom library."""
    if request.param == "real" and not REAL_LIB:
        pytest.skip("CAPFAN_SNF_LIB not set: no Myricom library on this machine")
    return request.param


class Emul:
    """A fresh copy of the emulation library (a new file is a new load: fresh wire and handles)."""

    def __init__(self, builds, tmp_path, monkeypatch):
        self.builds, self.tmp, self.mp = builds, tmp_path, monkeypatch
        self.n = 0
        for var in ("SNF_APP_ID", "SNF_NUM_RINGS", "SNF_FLAGS", "SNF_DATARING_SIZE", "CAPFAN_SNF_EMUL_API",
                    "CAPFAN_SNF_EMUL_DROP_EVERY", "CAPFAN_SNF_EMUL_BURST"):
            monkeypatch.delenv(var, raising=False)

    def lib(self, variant="many") -> str:
        self.n += 1
        path = self.tmp / f"copy{self.n}" / "libsnf.so"
        path.parent.mkdir()
        shutil.copy(self.builds[variant], path)
        return str(path)

    def wire(self, frames_ts) -> None:
        path = self.tmp / "wire.pcap"
        write_pcap_ns(path, frames_ts)
        self.mp.setenv("CAPFAN_SNF_EMUL_PCAP", str(path))


@pytest.fixture
def emul(backend, emul_builds, tmp_path, monkeypatch):
    if backend == "real":
        pytest.skip(NEEDS_EMUL)
    return Emul(emul_builds, tmp_path, monkeypatch)


def write_pcap_ns(path, frames_ts):
    """Ethernet pcap with nanosecond timestamps; frames_ts is [(ts_ns, frame)]."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for ts, frame in frames_ts:
            f.write(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)


def traffic(nflows=24, per_flow=8, size=60):
    """Distinct frames of many flows, both directions, IPv4/IPv6 and a few non-IP frames."""
    out, k = [], 0
    for f in range(nflows):
        for i in range(per_flow):
            pay = struct.pack("!II", f, i) + b"p" * (size + (k * 7) % 200)
            a, b = f"10.0.{f}.1", f"10.1.{f}.2"
            sp, dp = 1000 + f, 80 + f % 3
            if f % 4 == 3:
                frame = fr.tcp6(f"2001:db8::{f:x}:1", f"2001:db8::{f:x}:2", sp, dp, pay) if i % 2 == 0 else \
                    fr.tcp6(f"2001:db8::{f:x}:2", f"2001:db8::{f:x}:1", dp, sp, pay)
            else:
                frame = fr.udp4(a, b, sp, dp, pay) if i % 2 == 0 else fr.udp4(b, a, dp, sp, pay)
            out.append((T0_NS + k * 1003, frame))
            k += 1
    for j in range(5):  # non-IP (ARP ethertype)
        out.append((T0_NS + k * 1003, fr.ether(b"\x00\x01" + bytes([j]) * 26, ethertype=0x0806)))
        k += 1
    return out


def flow_key(frame: bytes):
    """Direction-free flow key (the two endpoints, sorted) for the RSS check."""
    info = fr_parse(frame)
    return tuple(sorted(info)) if info else ("non-ip",)


def fr_parse(frame: bytes):
    et = struct.unpack("!H", frame[12:14])[0]
    if et == 0x0800:
        ip = frame[14:]
        ihl = (ip[0] & 0xF) * 4
        sp, dp = struct.unpack("!HH", ip[ihl:ihl + 4])
        return [(ip[12:16], sp), (ip[16:20], dp)]
    if et == 0x86DD:
        ip = frame[14:]
        sp, dp = struct.unpack("!HH", ip[40:44])
        return [(ip[8:24], sp), (ip[24:40], dp)]
    return None


class Reader:
    """A ring + producer + reliable consumer for one SNF source."""

    def __init__(self, name, src):
        ringlib.create(name, ndesc=1 << 14, arena_bytes=16 << 20)
        self.consumer = ringlib.Consumer(name, "check", policy="reliable", stall_budget_us=30_000_000)
        self.producer = ringlib.Producer(name)
        self.src = src
        self.got = []  # (ts_ns, port, flags, frame)

    def pump(self, quiet=2, duration=0.02, limit=10.0):
        """Receive until `quiet` runs in a row publish nothing."""
        idle, end = 0, time.monotonic() + limit
        while idle < quiet and time.monotonic() < end:
            n = self.src.run(self.producer, duration=duration)
            self.drain()
            idle = idle + 1 if n == 0 else 0
        return self.got

    def drain(self):
        while (b := self.consumer.next(timeout=0)) is not None:
            d = b.desc
            for i in range(len(b)):
                self.got.append((int(d["ts_ns"][i]), int(d["port"][i]), int(d["flags"][i]), bytes(b.packet(i))))
            b.release()

    def close(self):
        self.producer.close()
        self.consumer.close()
        self.src.close()


def capture(lib, nrings, tag, **opts):
    """Open every ring of a port (app options in opts), then read them all; per-ring packets."""
    readers = [Reader(f"{tag}{q}", SnfSource(0, queue=q, num_rings=nrings, lib=lib, **opts)) for q in range(nrings)]
    try:
        got = [r.pump() for r in readers]
        stats = [r.src.stats() for r in readers]
        batched = [r.src.batched for r in readers]
    finally:
        for r in readers:
            r.close()
    return got, stats, batched


# ---------------------------------------------------------------------------------------------

def test_every_packet_once_with_timestamp_both_receive_paths(emul, ring_dir):
    """Each pcap packet arrives exactly once over 4 rings, with its hardware timestamp; the
    borrow-many path and the one-at-a-time path give identical per-ring results."""
    wire = traffic()
    emul.wire(wire)
    results = {}
    for variant in ("many", "single"):
        got, stats, batched = capture(emul.lib(variant), 4, f"r{variant}")
        assert batched == [variant == "many"] * 4
        results[variant] = got
        seen = collections.Counter(frame for ring in got for (_ts, _p, _f, frame) in ring)
        assert seen == collections.Counter(frame for _ts, frame in wire), "every packet exactly once"
        ts_of = {frame: ts for ts, frame in wire}
        for q, ring in enumerate(got):
            for ts, port, flags, frame in ring:
                assert ts == ts_of[frame] and port == q and flags & ringlib.F_HWTS
            assert [ts for ts, *_ in ring] == sorted(ts for ts, *_ in ring), "wire order kept within a ring"
        assert sum(s["packets"] for s in stats) == len(wire) == sum(s["published"] for s in stats)
        assert all(s["hw_timestamps"] == s["packets"] for s in stats)
        assert all(s["kernel_drops"] == s["ring_overflows"] == s["nic_drops"] == 0 for s in stats)
    assert results["many"] == results["single"]


def test_rss_keeps_both_directions_of_a_flow_in_one_ring(emul, ring_dir):
    wire = traffic()
    emul.wire(wire)
    got, _stats, _ = capture(emul.lib(), 4, "rss")
    ring_of = {}
    for q, ring in enumerate(got):
        for *_x, frame in ring:
            key = flow_key(frame)
            if key != ("non-ip",):
                assert ring_of.setdefault(key, q) == q, f"flow {key} split over rings"
    assert len(ring_of) == 24
    assert sum(1 for ring in got if ring) >= 3, "flows are spread over the rings"


def test_second_application_id_sees_all_traffic(emul, ring_dir):
    """Two capfan applications (ids 1 and 2, different ring counts) on one port: each gets it all."""
    wire = traffic()
    emul.wire(wire)
    lib = emul.lib()
    app1 = [Reader(f"a1r{q}", SnfSource(0, queue=q, num_rings=2, app_id=1, lib=lib)) for q in range(2)]
    app2 = Reader("a2r0", SnfSource("snf0", queue=0, num_rings=1, app_id=2, lib=lib))
    try:
        assert "application id 2" in app2.src.describe() and "snf0" in app2.src.describe()
        got1 = [f for r in app1 for (*_x, f) in r.pump()]
        got2 = [f for (*_x, f) in app2.pump()]
    finally:
        for r in app1 + [app2]:
            r.close()
    want = collections.Counter(f for _ts, f in wire)
    assert collections.Counter(got1) == want
    assert collections.Counter(got2) == want


def test_same_application_twice_is_refused_by_the_library(emul, ring_dir):
    """Opening the same ring of the same application id twice is refused with a clear error."""
    emul.wire(traffic(2, 2))
    lib = emul.lib()
    with SnfSource(0, queue=0, num_rings=2, app_id=5, lib=lib):
        with pytest.raises(errors.CapfanError, match=r"ring 0 of port 0.*another reader"):
            SnfSource(0, queue=0, num_rings=2, app_id=5, lib=lib)
        with pytest.raises(errors.CapfanError, match=r"already open in this process with 2 rings, not 4"):
            SnfSource(0, queue=1, num_rings=4, app_id=5, lib=lib)


@pytest.mark.parametrize("api,pattern", [
    ("0x0003", r"speaks API 0x0003, capfan is written for API 0x0008"),
    ("0x0108", r"speaks API 0x0108, capfan is written for API 0x0008"),
])
def test_version_mismatch_is_refused(emul, ring_dir, api, pattern):
    emul.wire(traffic(1, 1))
    emul.mp.setenv("CAPFAN_SNF_EMUL_API", api)
    with pytest.raises(errors.SourceNotSupported, match=pattern):
        SnfSource(0, lib=emul.lib())


def test_version_refused_by_snf_init(emul, ring_dir):
    """A library without snf_version_api: snf_init's EINVAL (other major version) is reported."""
    emul.wire(traffic(1, 1))
    emul.mp.setenv("CAPFAN_SNF_EMUL_API", "0x0208")
    with pytest.raises(errors.SourceNotSupported, match=r"refused API 0x0008 \(snf_init: EINVAL\) and does not "
                                                         r"report its own version"):
        SnfSource(0, lib=emul.lib("noversion"))
    emul.mp.setenv("CAPFAN_SNF_EMUL_API", "0x0008")
    with SnfSource(0, lib=emul.lib("noversion")) as src:
        assert src.batched


def test_numeric_ifname_is_a_port_number(emul, ring_dir):
    emul.wire(traffic(1, 1))
    with SnfSource(ifname="0", lib=emul.lib()) as src:
        assert src.options["board"] == 0 and src.options["ifname"] is None
    with pytest.raises(errors.CapfanError, match=r"eth9 is not an SNF port \(SNF ports: snf0\)"):
        open_source("snf", ifname="eth9", lib=emul.lib())


def test_missing_library_names_path_and_env_var(backend, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "libsnf.so"
    with pytest.raises(errors.SourceNotSupported, match=rf"{missing}.*CAPFAN_SNF_LIB"):
        SnfSource(0, lib=str(missing))
    monkeypatch.setenv("CAPFAN_SNF_LIB", str(missing))
    with pytest.raises(errors.SourceNotSupported, match=rf"{missing}.*CAPFAN_SNF_LIB"):
        open_source("snf", board=0)


def test_not_an_snf_library(backend, tmp_path):
    bogus = tmp_path / "libsnf.so"
    src = tmp_path / "x.c"
    src.write_text("int not_snf(void) { return 0; }\n")
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", "-o", str(bogus), str(src)], check=True)
    with pytest.raises(errors.SourceNotSupported, match=r"not a usable SNF library: it lacks snf_init"):
        SnfSource(0, lib=str(bogus))


def test_ring_overflow_counts_what_could_not_be_queued(emul, ring_dir):
    """A 1 MiB data ring and a reader that starts late: the emulation queues what fits, the rest
    overflows; capfan reports exactly that many in ring_overflows/kernel_drops."""
    wire = traffic(nflows=16, per_flow=100, size=700)  # ~1.6 MB of data ring
    emul.wire(wire)
    cap, used, fits, lost = 1 << 20, 0, [], 0
    for _ts, frame in wire:  # the emulation's documented accounting (length_data per packet)
        ld = (len(frame) + 12 + 15) & ~15
        if used + ld > cap:
            lost += 1
        else:
            used += ld
            fits.append(frame)
    assert lost > 100
    for variant in ("many", "single"):
        got, stats, _ = capture(emul.lib(variant), 1, f"ov{variant}", data_ring_size="1M")
        assert [f for (*_x, f) in got[0]] == fits
        assert stats[0]["ring_overflows"] == stats[0]["kernel_drops"] == lost
        assert stats[0]["published"] == len(wire) - lost


def test_injected_nic_drops_are_counted_exactly(emul, ring_dir):
    wire = traffic()
    emul.wire(wire)
    emul.mp.setenv("CAPFAN_SNF_EMUL_DROP_EVERY", "7")
    got, stats, _ = capture(emul.lib(), 2, "drop")
    kept = [f for i, (_ts, f) in enumerate(wire) if (i + 1) % 7]
    assert collections.Counter(f for ring in got for (*_x, f) in ring) == collections.Counter(kept)
    assert all(s["nic_drops"] == len(wire) // 7 for s in stats), "port-wide, the same on each ring"
    assert all(s["kernel_drops"] == 0 for s in stats)


def test_paced_wire_and_empty_ring_timeout(emul, ring_dir):
    """With the wire trickling (a few packets per receive call) nothing is lost or repeated, and
    an empty ring returns after the timeout (EAGAIN) with 0 packets."""
    wire = traffic(4, 4)
    emul.wire(wire)
    emul.mp.setenv("CAPFAN_SNF_EMUL_BURST", "3")
    r = Reader("pace", SnfSource(0, lib=emul.lib()))
    try:
        got = r.pump(quiet=3)
        assert [f for (*_x, f) in got] == [f for _ts, f in wire]
        t = time.monotonic()
        assert r.src.run(r.producer, duration=0.05) == 0
        assert time.monotonic() - t < 2
    finally:
        r.close()


def test_option_validation(backend):
    with pytest.raises(errors.SourceError, match="queue=4.*4 ring"):
        SnfSource(0, queue=4, num_rings=4)
    with pytest.raises(errors.SourceError, match="data_ring_size.*at least 1M"):
        SnfSource(0, data_ring_size="64K")
    with pytest.raises(errors.SourceError, match="unknown snf option"):
        SnfSource(0, rings=3)
    with pytest.raises(errors.SourceError, match="app_id"):
        SnfSource(0, app_id=-3)


def test_real_library_receives_with_hardware_timestamps(backend, ring_dir):
    """On a real port: ring 0 opens, whatever arrives in 2 s carries a hardware timestamp, and the
    counters are readable."""
    if backend != "real":
        pytest.skip("runs against a real Myricom library only (the emulation is covered above)")
    r = Reader("real", SnfSource(int(os.environ.get("CAPFAN_SNF_PORT", "0")), lib=REAL_LIB))
    try:
        r.src.run(r.producer, duration=2.0)
        r.drain()
        assert all(flags & ringlib.F_HWTS for _ts, _p, flags, _f in r.got)
        st = r.src.stats()
        assert st["packets"] == st["published"] + st["ring_drops"]
    finally:
        r.close()


# ---------------------------------------------------------------- live wire: a veth in a namespace

@pytest.fixture
def quiet_veth(veth):  # noqa: F811
    """The test's veth pair without IPv6 chatter; tcpreplay sends from the peer end."""
    if shutil.which("tcpreplay") is None:
        pytest.fail("tcpreplay is needed by the capture tests (apt-get install tcpreplay)")
    veth.quiet()
    return veth


@pytest.mark.privileged
def test_capture_cli_from_a_veth_fed_emulation(emul, ring_dir, quiet_veth, tmp_path):
    """`capfan capture snf0 --source snf` in a test namespace, the emulated SNF port fed by the
    namespace's veth ($CAPFAN_SNF_EMUL_IFACE): every frame tcpreplay sends from the peer end
    arrives in the ring exactly once, with the kernel's receive time as its hardware timestamp."""
    v = quiet_veth
    marker = b"CAPFAN-SNF-VETH"
    sent = [fr.udp4(f"10.9.{i % 30}.1", f"10.8.{i % 7}.2", 3000 + i % 30, 4789, marker + struct.pack("!I", i) +
                    b"v" * (i % 200)) for i in range(400)]
    write_pcap_ns(tmp_path / "send.pcap", [(T0_NS + i * 1000, f) for i, f in enumerate(sent)])
    ringlib.create("veth", ndesc=1 << 12, arena_bytes=8 << 20)
    c = ringlib.Consumer("veth", "check", policy="reliable", stall_budget_us=30_000_000)
    env = dict(os.environ, CAPFAN_SNF_EMUL_IFACE=v.cap_if, CAPFAN_RING_DIR=ring_dir)
    env.pop("CAPFAN_SNF_EMUL_PCAP", None)
    proc = v.popen(v.cap_ns, sys.executable, "-m", "capfan", "capture", "snf0", "--source", "snf", "--ring", "veth",
                   "--no-create", "--json", "-q", "-o", f"lib={emul.lib()}", "-o", "num_rings=1", env=env,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("capturing: snf on snf0"), line + proc.stderr.read()
        t_send = time.time_ns()
        v.send_pcap(str(tmp_path / "send.pcap"), rate_pps=20000)
        got, end = [], time.monotonic() + 20
        while sum(1 for g in got if marker in g[1]) < len(sent) and time.monotonic() < end:
            b = c.next(timeout=0.2)
            if b is None:
                continue
            d = b.desc
            got += [(int(d["ts_ns"][i]), bytes(b.packet(i)), int(d["flags"][i])) for i in range(len(b))]
            b.release()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    mine = [g for g in got if marker in g[1]]
    assert collections.Counter(g[1] for g in mine) == collections.Counter(sent), "every sent frame exactly once"
    assert [g[1] for g in mine] == sent, "in wire order (one ring)"
    assert all(g[2] & ringlib.F_HWTS and t_send - 10**9 < g[0] < time.time_ns() for g in mine)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["published"] >= len(sent) and summary["kernel_drops"] == summary["nic_drops"] == 0


def test_agent_config_source_snf(emul, ring_dir, tmp_path):
    """An agent config with source = "snf" and num_rings = 2: one capture process per SNF ring
    (each opens the port itself), recorders on both rings, together every emulated packet once."""
    from tests.agents.agentrun import AgentRun, consumers  # noqa: PLC0415

    wire = traffic()
    emul.wire(wire)
    cfg = {"agent": {"drain_timeout": 20},
           "capture": [{"source": "snf", "interface": "snf0", "name": "sn",
                        "options": {"num_rings": 2, "lib": emul.lib()}}],
           "analyzer": [{"name": "rec", "analyzer": "recorder", "policy": "reliable", "start": "oldest",
                         "options": {"prefix": "{consumer}"}}]}
    a = AgentRun(tmp_path, cfg, ring_dir)
    try:
        a.start()
        a.wait_status(lambda s: sum(consumers(s, f"sn.q{q}").get("rec", {}).get("delivered", 0) for q in (0, 1))
                      == len(wire), 60, "the recorders delivered every packet")
        st = a.status()
        assert sorted((q["ring"], q["source"]) for q in st["queues"]) == [("sn.q0", "snf"), ("sn.q1", "snf")]
        assert a.stop() == 0, a.log()
    finally:
        a.kill()
    got = a.recorded_frames("sn.q0", "rec") + a.recorded_frames("sn.q1", "rec")
    assert collections.Counter(got) == collections.Counter(f for _ts, f in wire)
    assert a.recorded_frames("sn.q0", "rec") and a.recorded_frames("sn.q1", "rec"), "RSS used both rings"

"""ef_vi as a capture source, end to end: `capfan capture --source efvi` and capfan.sources.efvi.

This machine (and CI) has no Onload, so the product build has no ef_vi layer: selecting it must
fail with what to install. To exercise the real Python -> cffi -> src_efvi.c path anyway, a
session fixture builds a *throw-away copy* of capfan whose C core is compiled against capfan's
ef_vi TEST EMULATION (tests/emul/efvi, installed into a temporary prefix as include/ +
lib/libciul.so, selected with CAPFAN_ONLOAD_PREFIX and allowed with CAPFAN_EFVI_TEST_EMULATION=1)
and runs that copy in subprocesses (first on PYTHONPATH). The emulation replays a pcap as NIC
events; the ring is read here with capfan.ring.Consumer and compared with what was sent.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capfan import errors
from capfan import ring as ringlib
from capfan.sources import backends_built, open_source
from tests import frames as fr
from tests.agents.agentrun import AgentRun, consumers

ROOT = Path(__file__).resolve().parents[2]
EMUL = ROOT / "tests" / "emul" / "efvi"
T0_NS = 1_700_000_000_000_000_000
F_HWTS, F_HWTS_SYNC, F_TRUNCATED = 1, 2, 4
# the emulation's discard reasons cycle in this order (emul_efvi.c)
INJECTED_REASONS = ("csum_bad", "crc_bad", "trunc", "mcast_mismatch", "other")


def _cc():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or pytest.fail("no C compiler (cc)")


@pytest.fixture(scope="session")
def emul_prefix(tmp_path_factory):
    """A fake 'Onload install': the emulation's headers and the emulation as lib/libciul.so."""
    d = tmp_path_factory.mktemp("efvi_prefix")
    shutil.copytree(EMUL / "include", d / "include")
    (d / "lib").mkdir()
    subprocess.run([_cc(), "-shared", "-fPIC", "-O2", "-Wall", "-D_GNU_SOURCE", f"-I{EMUL / 'include'}",
                    "-o", str(d / "lib" / "libciul.so"), str(EMUL / "emul_efvi.c"), "-lpthread"], check=True)
    return d


def _build_env(prefix, allow: bool) -> dict:
    env = dict(os.environ, CAPFAN_ONLOAD_PREFIX=str(prefix))
    env.pop("CAPFAN_EFVI_TEST_EMULATION", None)
    if allow:
        env["CAPFAN_EFVI_TEST_EMULATION"] = "1"
    return env


@pytest.fixture(scope="session")
def emul_site(emul_prefix, tmp_path_factory):
    """A copy of the capfan package whose C core has src_efvi.c built against the emulation."""
    site = tmp_path_factory.mktemp("efvi_site")
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.o")
    shutil.copytree(ROOT / "capfan", site / "capfan", ignore=ignore)
    shutil.copytree(ROOT / "agents", site / "capfan" / "agents", ignore=ignore)
    shutil.copytree(ROOT / "collector", site / "capfan" / "collector", ignore=ignore)
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'capfan/_core'); import build; "
                        "build.ffibuilder.compile(tmpdir='.')"], cwd=site, env=_build_env(emul_prefix, True),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compiled against capfan's ef_vi TEST EMULATION" in r.stdout
    assert "src_efvi.c" in r.stdout.split("capfan build: compiled")[1]
    return site


def write_pcap_ns(path, frames_ts):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for ts, frame in frames_ts:
            f.write(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)


def traffic(n, start_ns=T0_NS, gap_ns=1003, jumbo_every=0, jumbo_size=9000):
    out = []
    for k in range(n):
        big = jumbo_every and k % jumbo_every == jumbo_every - 1
        pay = struct.pack("!I", k) + (bytes((k + i) & 0xFF for i in range(jumbo_size)) if big
                                      else b"e" * (40 + (k * 13) % 400))
        out.append((start_ns + k * gap_ns, fr.udp4(f"10.2.{k % 40}.1", f"10.3.{k % 5}.2", 2000 + k % 40, 53, pay)))
    return out


class Wire:
    """The emulated wire (a pcap) and the environment a subprocess running the test build needs."""

    def __init__(self, site, tmp_path, ring_dir):
        self.site, self.tmp, self.ring_dir = site, tmp_path, ring_dir

    def env(self, frames, **emul) -> dict:
        pcap = self.tmp / "wire.pcap"
        write_pcap_ns(pcap, frames)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPFAN_EFVI_EMUL_")}
        env.update(PYTHONPATH=str(self.site), CAPFAN_RING_DIR=self.ring_dir, CAPFAN_EFVI_EMUL_PCAP=str(pcap))
        env.update({f"CAPFAN_EFVI_EMUL_{k.upper()}": str(v) for k, v in emul.items()})
        return env

    def capture(self, frames, ring, *args, emul=None, timeout=60):
        """Run `capfan capture emul0 --source efvi` of the test build to completion; (summary, stderr)."""
        r = subprocess.run([sys.executable, "-m", "capfan", "capture", "emul0", "--source", "efvi", "--ring", ring,
                            "--json", "-q", *args], env=self.env(frames, **(emul or {})), capture_output=True,
                           text=True, timeout=timeout, cwd=self.tmp)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout), r.stderr


@pytest.fixture
def wire(emul_site, tmp_path, ring_dir):
    return Wire(emul_site, tmp_path, ring_dir)


def drain(consumer, timeout=0.2):
    """(ts_ns, flags, port, wirelen, bytes) of everything readable now."""
    out = []
    while (b := consumer.next(timeout=timeout)) is not None and len(b):
        d = b.desc
        for i in range(len(b)):
            out.append((int(d["ts_ns"][i]), int(d["flags"][i]), int(d["port"][i]), int(d["wirelen"][i]),
                        bytes(b.packet(i))))
        b.release()
    return out


# ---------------------------------------------------------------- this build (no Onload)

def test_product_build_without_onload_refuses_efvi_with_what_to_install():
    """Here the core has no ef_vi layer: backends_built says so, selecting efvi says how to get it."""
    if "efvi" in backends_built():
        pytest.skip("this capfan was built with Onload's ef_vi headers: the no-Onload error cannot occur")
    with pytest.raises(errors.SourceNotSupported, match=r"built without ef_vi.*etherfabric.*libciul.*"
                                                        r"CAPFAN_ONLOAD_PREFIX.*rebuild"):
        open_source("efvi", ifname="eth0")
    r = subprocess.run([sys.executable, "-m", "capfan", "capture", "--help"], capture_output=True, text=True)
    assert "efvi" in r.stdout and "not in this build" in " ".join(r.stdout.split())
    r = subprocess.run([sys.executable, "-m", "capfan", "capture", "eth0", "--ring", "x", "--source", "efvi"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "built without ef_vi" in r.stderr and "CAPFAN_ONLOAD_PREFIX" in r.stderr


def test_product_build_refuses_the_test_emulation(emul_prefix):
    """Pointing the product build at the emulation's headers does not compile ef_vi in, unless the
    tests' explicit CAPFAN_EFVI_TEST_EMULATION=1 is set."""
    probe = [sys.executable, "-c", "import sys; sys.path.insert(0, 'capfan/_core'); import build"]
    r = subprocess.run(probe, cwd=ROOT, env=_build_env(emul_prefix, False), capture_output=True, text=True)
    assert "src_efvi.c NOT built: the etherfabric headers found are capfan's TEST EMULATION" in r.stdout
    assert "src_efvi.c" not in r.stdout.split("capfan build: compiled")[1]
    r = subprocess.run(probe, cwd=ROOT, env=_build_env(emul_prefix, True), capture_output=True, text=True)
    assert "src_efvi.c" in r.stdout.split("capfan build: compiled")[1]


def test_real_nic_receives_with_hardware_timestamps(ring_dir):
    """On a Solarflare/AMD host (capfan built with Onload, CAPFAN_EFVI_IFACE naming the NIC): 2 s
    of `--source efvi` capture run and stop cleanly, and the counters add up."""
    iface = os.environ.get("CAPFAN_EFVI_IFACE")
    if "efvi" not in backends_built() or not iface:
        pytest.skip("needs capfan built with Onload's ef_vi and CAPFAN_EFVI_IFACE naming a Solarflare/AMD NIC")
    r = subprocess.run([sys.executable, "-m", "capfan", "capture", iface, "--source", "efvi", "--ring", "real",
                        "--duration", "2", "--json", "-q"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["packets"] == s["published"] + s["ring_drops"] and s["hw_timestamps"] <= s["published"]


# ---------------------------------------------------------------- the test build (emulation)

def test_test_build_lists_efvi_and_marks_the_emulation(wire):
    r = subprocess.run([sys.executable, "-c", "import capfan, capfan.sources as s, capfan.sources.efvi as e; "
                        "print(capfan.__file__, s.backends_built(), e.emulated())"], env=wire.env([]),
                       capture_output=True, text=True, cwd=wire.tmp)
    assert r.returncode == 0, r.stderr
    path, rest = r.stdout.split(" ", 1)
    assert path.startswith(str(wire.site)) and "'efvi'" in rest and rest.strip().endswith("True")
    r = subprocess.run([sys.executable, "-m", "capfan", "capture", "--help"], env=wire.env([]), capture_output=True,
                       text=True, cwd=wire.tmp)
    assert "efvi" in r.stdout and "not in this build" not in " ".join(r.stdout.split())


def test_capture_cli_every_packet_once_with_timestamps_and_discard_counters(wire):
    """`capfan capture --source efvi`: every frame the emulated NIC delivered is in the ring once,
    in order, with its hardware timestamp and sync flag; discards by reason are in the summary."""
    frames = traffic(700)
    kept = [(i, ts, f) for i, (ts, f) in enumerate(frames) if (i + 1) % 9]
    ringlib.create("efv", ndesc=1 << 12, arena_bytes=8 << 20)
    c = ringlib.Consumer("efv", "check", policy="reliable", stall_budget_us=60_000_000)
    summary, err = wire.capture(frames, "efv", "--no-create", "--count", str(len(kept)),
                                emul={"discard_every": 9, "unsync_every": 25})
    got = drain(c)
    assert "TEST EMULATION" in err and "efvi on emul0: 1 VI" in err
    assert [g[4] for g in got] == [f for _, _, f in kept]
    assert [g[0] for g in got] == [ts for _, ts, _ in kept]
    assert all(g[1] & F_HWTS for g in got)
    assert [bool(g[1] & F_HWTS_SYNC) for g in got] == [(i + 1) % 25 != 0 for i, _, _ in kept]
    assert [g[3] for g in got] == [len(f) for _, _, f in kept]
    ndisc = len(frames) // 9
    want = {r: sum(1 for k in range(ndisc) if INJECTED_REASONS[k % 5] == r) for r in INJECTED_REASONS}
    assert {r: summary[f"discard_{r}"] for r in INJECTED_REASONS} == want
    assert summary["malformed"] == ndisc and summary["published"] == len(kept) == summary["packets"]
    assert summary["hw_timestamps"] == len(kept) and summary["source"] == "efvi"


def test_jumbo_frames_reassembled_whole_through_the_cli(wire):
    """9000-byte frames span 5 emulated buffers (SOP|CONT ... final): the ring holds each one
    whole and byte-identical; with jumbo=truncate they are cut to the first buffer, flagged."""
    frames = traffic(90, jumbo_every=6, jumbo_size=9000)
    njumbo = 90 // 6
    ringlib.create("jum", ndesc=1 << 10, arena_bytes=8 << 20)
    c = ringlib.Consumer("jum", "check", policy="reliable", stall_budget_us=60_000_000)
    summary, _ = wire.capture(frames, "jum", "--no-create", "--count", str(len(frames)))
    got = drain(c)
    assert [g[4] for g in got] == [f for _, f in frames]
    assert [g[3] for g in got] == [len(f) for _, f in frames]
    assert not any(g[1] & F_TRUNCATED for g in got)
    assert summary["jumbo"] == summary["jumbo_reassembled"] == njumbo and summary["truncated"] == 0
    c.close()

    ringlib.create("jtr", ndesc=1 << 10, arena_bytes=8 << 20)
    c = ringlib.Consumer("jtr", "check", policy="reliable", stall_budget_us=60_000_000)
    summary, err = wire.capture(frames, "jtr", "--no-create", "--count", str(len(frames)), "-o", "jumbo=truncate")
    got = drain(c)
    assert "jumbo truncate" in err
    for (ts, f), g in zip(frames, got, strict=True):
        if len(f) > 2048 - 16:
            assert g[1] & F_TRUNCATED and g[4] == f[:2048 - 16] and g[3] == len(f)
        else:
            assert g[4] == f
    assert summary["truncated"] == njumbo and summary["jumbo_reassembled"] == 0


def test_rss_vi_set_through_the_source_class(wire):
    """capfan.sources.open_source('efvi', rss_vis=4) in the test build: flows spread over ports
    port..port+3, every frame once."""
    frames = traffic(400)
    script = r"""
import json, sys
from capfan import ring
from capfan.sources import open_source
ring.create("rss", ndesc=4096, arena_bytes=8 << 20)
src = open_source("efvi", ifname="emul0", rss_vis=4, port=20, filters="all-unicast,all-multicast")
p = ring.Producer("rss")
n = 0
while n < int(sys.argv[1]):
    n += src.run(p, duration=0.05)
print(json.dumps({"stats": src.stats(), "describe": src.describe()}))
p.close(); src.close()
"""
    r = subprocess.run([sys.executable, "-c", script, str(len(frames))], env=wire.env(frames), capture_output=True,
                       text=True, timeout=60, cwd=wire.tmp)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "VI set of 4 (ports 20-23)" in out["describe"]
    c = ringlib.Consumer("rss", "late", policy="reliable", start="oldest")
    got = drain(c)
    assert sorted(g[4] for g in got) == sorted(f for _, f in frames)
    ports = {}
    for g in got:
        ports.setdefault(g[4][26:38], set()).add(g[2])
    assert all(len(p) == 1 for p in ports.values()), "one flow, one VI"
    assert {p for s in ports.values() for p in s} <= {20, 21, 22, 23} and len({p for s in ports.values() for p in s}) > 1
    assert out["stats"]["published"] == len(frames)


def test_option_errors_name_the_option(wire):
    script = r"""
from capfan import errors
from capfan.sources import open_source
for kw in ({"wait": "sometimes"}, {"jumbo": "maybe"}, {"filters": "udp:1.2.3.4"}, {"queue": 3}, {"rss_vis": 99}):
    try:
        open_source("efvi", ifname="emul0", **kw)
    except errors.SourceError as e:
        print(type(e).__name__, "|", e)
"""
    r = subprocess.run([sys.executable, "-c", script], env=wire.env([]), capture_output=True, text=True, cwd=wire.tmp)
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout + r.stderr
    assert "wait='sometimes'" in lines[0] and "poll, interrupt" in lines[0]
    assert "jumbo='maybe'" in lines[1] and "reassemble, truncate" in lines[1]
    assert "filters" in lines[2] and "udp|tcp:HOST:PORT" in lines[2]
    assert "queue=3" in lines[3] and "rss_vis" in lines[3]
    assert "rss_vis=99" in lines[4]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu_and_latency(wire, wait: str):
    """A capture whose wire goes quiet for 2.5 s: (CPU seconds used over 1.5 s of that quiet,
    arrival-to-ring latencies of the frames after it, frames seen)."""
    first = traffic(20, start_ns=T0_NS, gap_ns=1_000_000)
    second = traffic(20, start_ns=T0_NS + 3_000_000_000, gap_ns=1_000_000)
    second = [(ts, f[:-1] + b"Z") for ts, f in second]
    ringlib.create(f"idle{wait}", ndesc=1 << 10, arena_bytes=4 << 20)
    c = ringlib.Consumer(f"idle{wait}", "check", policy="reliable", stall_budget_us=60_000_000)
    env = wire.env(first + second, pace=1)
    proc = subprocess.Popen([sys.executable, "-m", "capfan", "capture", "emul0", "--source", "efvi", "--ring",
                             f"idle{wait}", "--no-create", "-q", "--json", "--count", "40", "-o", f"wait={wait}",
                             "-o", "spin_us=0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=wire.tmp)
    try:
        got, lat = [], []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            got += drain(c, timeout=0.1)
        assert len(got) == 20, proc.stderr.read() if proc.poll() is not None else "first burst missing"
        time.sleep(0.3)  # past the burst, into the quiet
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(1.5)
        idle_cpu = _cpu_s(proc.pid) - cpu0
        assert time.monotonic() - t0 < 2.2, "the quiet window was missed"
        while len(got) < 40 and time.monotonic() < deadline:
            b = c.next(timeout=0.5)
            if b is None or not len(b):
                continue
            now = time.time_ns()
            d = b.desc
            for i in range(len(b)):
                lat.append((now - int(d["ts_ns"][i])) / 1e9)
                got.append(bytes(b.packet(i)))
            b.release()
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        return idle_cpu, lat, got, json.loads(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_interrupt_wait_sleeps_when_idle_and_wakes_on_arrival(wire):
    """wait=interrupt: while no frame arrives the capture sleeps on the driver fd (little CPU),
    and frames arriving after the quiet reach the ring within milliseconds of their arrival.
    The same capture with wait=poll keeps polling (measurably more CPU): the probe can tell."""
    idle_cpu, lat, got, summary = _idle_cpu_and_latency(wire, "interrupt")
    assert len(got) == 40 and len(lat) == 20
    assert idle_cpu < 0.1, f"idle interrupt-mode capture used {idle_cpu:.3f} s CPU in 1.5 s"
    assert max(lat) < 0.1, f"arrival-to-consumer latency up to {max(lat) * 1e3:.1f} ms"
    assert summary["primes"] > 0 and summary["wakeups"] > 0 and summary["published"] == 40
    poll_cpu, _lat, got, summary = _idle_cpu_and_latency(wire, "poll")
    assert len(got) == 40 and summary["primes"] == 0
    assert poll_cpu > max(0.05, 3 * idle_cpu), (poll_cpu, idle_cpu)


# ---------------------------------------------------------------- the agent

@pytest.fixture
def emul_netns():
    """A network namespace holding an interface named emul0 (one end of a veth pair), so the
    agent's host checks find the interface the emulation serves; deleted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the agent test needs root (CI runs as root): network namespaces")
    ns = f"cfefvi-{os.getpid()}-{time.monotonic_ns() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "emul0", "type", "veth", "peer", "name", "emul0p"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "emul0", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


class EmulAgentRun(AgentRun):
    """`capfan agent` of the ef_vi test build (first on PYTHONPATH) in the namespace, with the
    emulated wire in its environment."""

    def __init__(self, *a, env: dict, **kw):
        super().__init__(*a, **kw)
        self.env = env

    def start(self, *args):
        """Start the agent of the test build."""
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "capfan", "agent", "-c", self.path, *args]
        self._err = open(self.errpath, "w")
        # cwd: not the repository, whose capfan/ would shadow the test build on sys.path
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, env=self.env, text=True,
                                     cwd=self.tmp)
        return self


@pytest.mark.privileged
def test_agent_config_source_efvi(wire, emul_netns, tmp_path, ring_dir):
    """An agent config with source = "efvi" (a VI set of 2, interrupt wait): the capture worker of
    the test build publishes every emulated frame once, a recorder analyzer writes them all."""
    frames = traffic(300, jumbo_every=50)
    cfg = {"agent": {"drain_timeout": 20},
           "capture": [{"source": "efvi", "interface": "emul0", "name": "ef", "ring": {"ndesc": 4096, "arena": "8M"},
                        "options": {"rss_vis": 2, "wait": "interrupt", "filters": "all-unicast,all-multicast"}}],
           "analyzer": [{"name": "rec", "analyzer": "recorder", "policy": "reliable", "start": "oldest",
                         "options": {"prefix": "{consumer}"}}]}
    a = EmulAgentRun(tmp_path, cfg, ring_dir, ns=emul_netns, env=wire.env(frames))
    try:
        a.start()
        a.wait_status(lambda s: consumers(s, "ef.q0").get("rec", {}).get("delivered") == len(frames), 60,
                      "the recorder delivered every frame")
        st = a.status()
        q = [q for q in st["queues"] if q["ring"] == "ef.q0"][0]
        assert q["source"] == "efvi" and q["published"] == len(frames)
        assert a.stop() == 0, a.log()
    finally:
        a.kill()
    got = a.recorded_frames("ef.q0", "rec")
    assert sorted(got) == sorted(f for _, f in frames)

"""Smoke test of `capfan bench capture`: tiny counts; checks the tables/JSON structure and exact
accounting (captured + drops == sent for every live method, every record read/published/
delivered by the replay methods), and that namespaces, rings, replay files and XDP programs are
gone afterwards, also after Ctrl-C and SIGTERM. Correctness only, never speed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from capfan.bench import capture as C
from capfan.bench import netns as N
from capfan.bench.cli import bench

pytestmark = pytest.mark.privileged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def root_and_tools():
    """Root and the generator are required (a failure, never a skip), like the capture tests."""
    if os.geteuid() != 0:
        pytest.fail("the capture bench tests need root (CI runs as root)")
    reason = C.live_skip_reason(C.Settings())
    if reason:
        pytest.fail(reason)


@pytest.fixture
def clean(ring_dir, monkeypatch):
    """Rings and replay files go to a private tmpfs directory; every VethPair the bench makes is
    recorded. Afterwards the directory must be empty and every namespace gone."""
    pairs = []

    class Recorded(N.VethPair):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            pairs.append(self)

    monkeypatch.setattr(N, "VethPair", Recorded)
    monkeypatch.setattr(C, "_temp_dir", lambda: ring_dir)
    yield pairs
    leftovers = os.listdir(ring_dir)
    assert leftovers == [], f"bench left files behind: {leftovers}"
    for v in pairs:
        assert not v.exists(), f"bench left namespace {v.cap_ns} or {v.gen_ns} behind"


def test_replay_reads_publishes_and_delivers_every_record(clean):
    cfg = C.Settings(replay_packets=20_000, sizes=(64, 1500), rounds=1, methods=tuple(C.REPLAY_METHODS))
    runs = C.run_replay(cfg)
    assert {(r.method, r.size) for r in runs} == {(m, s) for m in C.REPLAY_METHODS for s in (64, 1500)}
    for r in runs:
        assert r.error is None, r.error
        assert r.complete(), r
        assert r.done == r.packets > 0 and r.wall_ns > 0 and r.cpu_ns > 0
        if r.method.startswith("replay"):
            assert r.published == r.packets == C.replay_packets_for(r.size, 20_000) and r.ring_drops == 0
        if r.method == "replay-c":
            assert r.delivered == r.packets and r.consumer_dropped == 0 and r.consumer_cpu_ns > 0
    assert next(r for r in runs if r.method == "python-read").packets == 20_000 // C.PY_SHARE
    rows = C.summarize_replay(runs)
    assert all(r.complete and r.repeats == 1 for r in rows)
    assert all(r.vs_tcpdump > 0 for r in rows if r.method != "tcpdump-read")
    ts = C.replay_targets(rows)
    assert [t.ok in (True, False) for t in ts] == [True, True]


def test_pcap_file_is_what_tcpdump_reads(tmp_path):
    path = str(tmp_path / "f.pcap")
    C.write_pcap(path, 100, 1000, chunk=300)
    assert C.read_pcap_python(path, 10**9) == (1000, 100 * 1000)
    out = subprocess.run(["tcpdump", "-r", path, "-n", "-c", "3"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count("UDP, length 58") == 3, out.stdout + out.stderr


def test_live_captured_plus_drops_equals_sent(clean):
    cfg = C.Settings(packets=3000, sizes=(64, 1500), rates=(0, 20_000), rounds=1, methods=tuple(C.LIVE_METHODS))
    runs = C.run_live(cfg)
    assert len(clean) == 1
    assert {(r.method, r.size, r.rate) for r in runs} == {
        (m, s, rt) for m in C.LIVE_METHODS for s in (64, 1500) for rt in (0, 20_000)}
    for r in runs:
        assert r.error is None, r.error
        assert r.sent == r.trafgen_sent == r.counters["gen_tx_packets"] == 3000, r  # only the generator sent
        assert r.captured + r.drops == r.sent, r  # exact accounting
        assert r.unaccounted == 0 and r.complete()
        assert r.cpu_ns > 0 and r.send_s > 0
        if r.method.startswith("afxdp"):
            assert r.mode in ("skb copy", "native copy", "native zero-copy"), r.mode
            assert r.mode.startswith("skb") == (r.method == "afxdp-skb")
    paced = [r for r in runs if r.rate == 20_000]
    assert all(10_000 < r.gen_pps < 30_000 for r in paced), [r.gen_pps for r in paced]  # tbf pacing works
    rows = C.summarize_live(runs)
    assert len(rows) == len(runs)
    assert all(r.vs_tcpdump > 0 for r in rows if r.method != "tcpdump")
    ts = C.live_targets(rows, list(C.LIVE_METHODS), cfg.rates, None)
    assert len(ts) == 3 * (1 + 2)  # per capfan method: vs tcpdump, 0 drops at each rate
    assert all(t.ok in (True, False) for t in ts)


def test_afxdp_run_leaves_no_xdp_program(ring_dir, tmp_path):
    v = N.VethPair().up()
    try:
        conf = str(tmp_path / "udp64.cfg")
        with open(conf, "w") as f:
            f.write(C.trafgen_config(64))
        env = C._child_env(str(tmp_path / "run"))
        for method in ("afxdp", "afxdp-skb"):
            r = C.live_one(v, method, 64, 20_000, 500, conf, env, C.capture_cpus(True))
            assert r.error is None and r.captured + r.drops == r.sent == 500, r
            assert not v.xdp_attached(), f"{method} left its XDP program on {v.cap_if}"
        assert os.listdir(ring_dir) == []
    finally:
        v.down()
    assert not v.exists()


def test_cli_prints_tables_and_writes_json(clean, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench, ["capture", "--packets", "2000", "--replay-packets", "20000", "--sizes", "64",
                                     "--rates", "max,20k", "--rounds", "1", "--json", str(out), "-q"])
    assert res.exit_code == 0, res.output
    for text in ("replay: pcap file -> ring", "live: 64-byte frames", "targets", "tcpdump-read", "afpacket",
                 "afxdp-skb", "x tcpdump", ">= 10 Mpps on one core", "captures >= tcpdump", "0 drops at",
                 "accounting: every replay"):
        assert text in res.output, text
    assert "PASS" in res.output or "MISS" in res.output
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data) >= {"settings", "machine", "replay_rows", "live_rows", "targets", "replay_runs",
                         "live_runs", "accounting_ok"}
    assert data["accounting_ok"] is True
    assert data["settings"]["rates"] == [0, 20_000] and data["settings"]["sizes"] == [64]
    assert len(data["replay_runs"]) == len(C.REPLAY_METHODS)
    assert len(data["live_runs"]) == 2 * len(C.LIVE_METHODS)
    for run in data["live_runs"]:
        assert run["captured"] + run["drops"] == run["sent"] == 2000 and run["complete"]


def test_without_root_only_the_replay_runs(clean, monkeypatch):
    monkeypatch.setattr(N, "is_root", lambda: False)
    res = CliRunner().invoke(bench, ["capture", "--methods", "replay,afpacket", "--replay-packets", "5000",
                                     "--sizes", "64", "--rounds", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert "needs root" in res.output and "only the replay part ran" in res.output
    assert "replay: pcap file -> ring" in res.output and "live: 64-byte" not in res.output
    assert clean == []  # no namespace was even created


def test_cli_rejects_bad_options():
    res = CliRunner().invoke(bench, ["capture", "--sizes", "64,9000"])
    assert res.exit_code != 0 and "60..1514" in res.output
    res = CliRunner().invoke(bench, ["capture", "--rates", "max,fast"])
    assert res.exit_code != 0 and "rate 'fast'" in res.output
    res = CliRunner().invoke(bench, ["capture", "--methods", "afpacket,nope"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_ctrl_c_deletes_the_namespaces(clean, monkeypatch):
    seen = []

    def interrupted(v, *a, **kw):
        seen.append(v.exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "live_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.run_live(C.Settings(packets=10, sizes=(64,), rates=(0,), rounds=1, methods=("afpacket",)))
    assert seen == [True] and len(clean) == 1  # it was up, and the fixture checks it is gone


def test_sigterm_mid_capture_cleans_up(ring_dir, tmp_path):
    """A slow live run killed with SIGTERM: capture, trafgen, namespaces, ring all go."""
    before = set(N.sh("ip", "netns", "list").stdout.split())
    env = dict(os.environ, CAPFAN_RING_DIR=ring_dir, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-c", "from capfan.cli import main; main()", "bench", "capture",
                          "--methods", "afpacket", "--packets", "100000", "--rates", "5000", "--sizes", "64",
                          "--rounds", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        new = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _capfan_rings(ring_dir):
            time.sleep(0.05)  # the capture's ring exists: trafgen is (about to be) sending
        new = {n for n in N.sh("ip", "netns", "list").stdout.split() if n.startswith("capfan-bench-")} - before
        assert new and _capfan_rings(ring_dir), "the live run did not start"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    left = set(N.sh("ip", "netns", "list").stdout.split()) & new
    assert not left, f"namespaces left after SIGTERM: {left}"
    assert os.listdir(ring_dir) == []
    tags = [n.rsplit("-", 1)[1] for n in new]
    procs = N.sh("ps", "-eo", "args").stdout
    assert not [t for t in tags if t in procs], f"a capture or trafgen process outlived the bench:\n{procs}"


def _capfan_rings(d):
    return [n for n in os.listdir(d) if n.startswith("capfan.")]

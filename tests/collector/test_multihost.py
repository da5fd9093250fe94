"""Sensors and a collector on separate hosts (one network namespace each, real sockets):
`capfan agent` on each sensor replays a pcap and exports over CURVE to `capfan collect`.

- the collector's merged flows equal the union of the tshark oracle tables of the pcaps, and a
  flow present in both sensors' pcaps is counted once (with both sensors as observers);
- kill -9 of the collector mid-stream, then a restart on the same store: exact totals, nothing
  lost, nothing stored twice;
- an agent with a key the collector does not list is refused and nothing of it is stored.
"""
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from tests.agents.agentrun import REPO, AgentRun
from tests.analyzers.oracle import _canon, oracle_table, run_oracle
from tests.collector.collectorrun import CollectorRun
from tests.conftest import ring_dir, wait_for  # noqa: F401 - fixture
from tests.frames import udp4
from tests.multihost import lab  # noqa: F401 - fixture

pytestmark = [pytest.mark.privileged, pytest.mark.slow]
PORT = 5557
T0_US = 1_760_000_000 * 1_000_000


def write_pcap(path, timed_frames):
    """Ethernet pcap (µs) of (t_us, frame) pairs, in time order."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, fr in sorted(timed_frames, key=lambda x: x[0]):
            f.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(fr), len(fr)) + fr)
    return str(path)


def flows(prefix, n, packets, t0_us, gap_us=1000, size=100):
    """n UDP flows (both directions), `packets` frames each, interleaved from t0_us."""
    out = []
    for i in range(packets):
        for f in range(n):
            a, b = f"10.{prefix}.{f // 200}.{f % 200 + 1}", f"192.0.2.{f % 200 + 1}"
            sport, dport = 30000 + f, 53 + f % 5
            fr = udp4(a, b, sport, dport, bytes([i & 0xFF]) * (size + f)) if i % 3 else \
                udp4(b, a, dport, sport, bytes([i & 0xFF]) * (size + 2 * f))
            out.append((t0_us + (i * n + f) * gap_us, fr))
    return out


def keys(tmp, *names):
    """`capfan keys gen` for each name; {name: (public file, secret file)}."""
    d = os.path.join(str(tmp), "keys")
    out = {}
    for n in names:
        r = subprocess.run([sys.executable, "-m", "capfan", "keys", "gen", n, "--dir", d], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
        assert r.returncode == 0, r.stderr
        out[n] = (os.path.join(d, f"{n}.key"), os.path.join(d, f"{n}.key_secret"))
    return out


def agent_cfg(pcap, name, endpoint, k, collector_pub, speed="max", **meter):
    """A sensor: replay `pcap`, meter it, export over CURVE to `endpoint`."""
    return {"agent": {"name": name, "exit_when_done": True},
            "metrics": {"enabled": False},
            "export": {"collectors": [endpoint], "key": k[1], "server_key": collector_pub, "drain_timeout": 60,
                       "health_interval": 1},
            "capture": [{"source": "pcap", "file": pcap, "name": "rp", "options": {"speed": speed}}],
            "analyzer": [{"analyzer": "flowmeter", "options": {"idle_timeout": 3600, "active_timeout": 0,
                                                               **meter}}]}


def collector_flows(col) -> dict:
    """The collector's merged flows on the oracle's key space: key -> [pkts_ab, bytes_ab, pkts_ba, bytes_ba]."""
    out = {}
    for r in col.get("/api/flows?limit=100000")["flows"]:
        key, fwd = _canon(str(r["vlan"]) if r["vlan"] else "", r["proto"], r["src"], r["sport"], r["dst"], r["dport"])
        c = [r["packets"], r["bytes"], r["reverse_packets"], r["reverse_bytes"]]
        out[key] = c if fwd else c[2:] + c[:2]
        out[key + ("observers",)] = r["observers"]
    return out


def expected(*pcaps) -> dict:
    """Union of the oracle tables (a flow in several pcaps counted once: its counts agree)."""
    out = {}
    for p in pcaps:
        for key, v in oracle_table(run_oracle(p)).items():
            assert key not in out or out[key] == v["c"], (key, out[key], v["c"])
            out[key] = v["c"]
    return out


def test_two_sensors_merge_into_the_oracle_union_and_shared_flows_count_once(lab, ring_dir, tmp_path):
    common = flows(99, 1, 30, T0_US + 500)          # one flow both sensors see, same packets, same times
    p1 = write_pcap(tmp_path / "s1.pcap", flows(1, 25, 12, T0_US) + common)
    p2 = write_pcap(tmp_path / "s2.pcap", flows(2, 30, 10, T0_US) + common)
    k = keys(tmp_path, "collector", "s1", "s2")
    col = CollectorRun(tmp_path, f"tcp://0.0.0.0:{PORT}", ns=lab.collector,
                       security={"mode": "curve", "server_key": k["collector"][1],
                                 "authorized_keys": [k["s1"][0], k["s2"][0]]}).start()
    agents = []
    try:
        for i, (pcap, name) in enumerate(((p1, "s1"), (p2, "s2")), 1):
            d = tmp_path / name
            d.mkdir()
            cfg = agent_cfg(pcap, name, f"tcp://{lab.ip(i)}:{PORT}", k[name], k["collector"][0])
            cfg["agent"]["run_dir"] = str(d / "run")
            cfg["export"]["spool_dir"] = str(d / "spool")
            rings = os.path.join(ring_dir, name)   # each host has its own /dev/shm
            os.makedirs(rings)
            agents.append(AgentRun(d, cfg, rings, ns=lab.sensors[i - 1], name=name).start())
        for a in agents:
            assert a.wait(120) == 0, a.log()
            assert "not yet acknowledged" not in a.log()      # the spool drained before the agent left
        want = expected(p1, p2)
        got = wait_for(lambda: (g := collector_flows(col)) and
                       sum(1 for key in g if key[-1] != "observers") == len(want) and g, 30, 0.5)
        assert got, (col.get("/api/health"), col.log(), [a.log() for a in agents])
        assert {key: c for key, c in got.items() if key[-1] != "observers"} == want
        shared = [key for key in want if "10.99.0.1" in key]
        assert len(shared) == 1 and got[shared[0] + ("observers",)] == ["s1", "s2"]
        totals = col.get("/api/totals")
        assert totals["flows"] == len(want) == 25 + 30 + 1
        assert totals["packets"] == sum(c[0] + c[2] for c in want.values())
        health = col.get("/api/health")
        assert {h["host"] for h in health["store"]} == {"s1", "s2"}
        assert health["intake"]["denied_unauthenticated"] == 0
        # the health stream arrived too: per queue counters of each sensor
        q = [h for h in health["store"] if h["host"] == "s1" and h.get("source") == "rp.q0"]
        assert q and q[0]["rx_packets"] == 25 * 12 + 30 and q[0]["kernel_drops"] == 0
    finally:
        for a in agents:
            a.kill()
        assert col.stop() == 0, col.log()


def test_collector_killed_mid_stream_loses_and_duplicates_nothing(lab, ring_dir, tmp_path):
    # 200 short flows over ~6 s at 1x; each ends 1 s after its last packet, so records stream out
    # during the replay and the collector dies with batches in flight
    timed = []
    for f in range(200):
        start = T0_US + f * 30_000
        for i in range(6):
            a, b = f"10.7.{f // 200}.{f % 200 + 1}", "192.0.2.77"
            fr = udp4(a, b, 40000 + f, 123, b"x" * (60 + i)) if i % 2 == 0 else udp4(b, a, 123, 40000 + f, b"y" * 80)
            timed.append((start + i * 5_000, fr))
    pcap = write_pcap(tmp_path / "s.pcap", timed)
    k = keys(tmp_path, "collector", "s1")
    sec = {"mode": "curve", "server_key": k["collector"][1], "authorized_keys": [k["s1"][0]]}
    col = CollectorRun(tmp_path, f"tcp://0.0.0.0:{PORT}", ns=lab.collector, security=sec).start()
    d = tmp_path / "s1"
    d.mkdir()
    cfg = agent_cfg(pcap, "s1", f"tcp://{lab.ip(1)}:{PORT}", k["s1"], k["collector"][0], speed="1x",
                    idle_timeout=1.0)
    cfg["agent"]["run_dir"], cfg["export"]["spool_dir"] = str(d / "run"), str(d / "spool")
    a = AgentRun(d, cfg, ring_dir, ns=lab.sensors[0], name="s1").start()
    col2 = None
    try:
        wait_for(lambda: col.get("/api/health")["intake"]["journaled"] >= 3, 30, 0.2)
        col.proc.send_signal(signal.SIGKILL)
        col.proc.wait()
        time.sleep(1.0)                         # the agent spools meanwhile
        col2 = CollectorRun(tmp_path, f"tcp://0.0.0.0:{PORT}", ns=lab.collector, security=sec).start()
        assert a.wait(120) == 0, a.log()
        want = expected(pcap)
        got = wait_for(lambda: (g := collector_flows(col2)) and
                       sum(1 for key in g if key[-1] != "observers") == len(want) and g, 30, 0.5)
        assert got, col2.get("/api/health")
        assert {key: c for key, c in got.items() if key[-1] != "observers"} == want
        assert col2.get("/api/totals")["packets"] == len(timed)
        h = col2.get("/api/health")
        host = [x for x in h["store"] if x["host"] == "s1" and x.get("source") is None][0]
        flow_records = sum(x["records"] for x in h["store"] if x["host"] == "s1" and x.get("source") == "rp.q0/flowmeter")
        assert flow_records == 200    # one record per flow: none lost, none stored twice
        assert host["batches"] >= 2
    finally:
        a.kill()
        if col2 is not None:
            col2.stop()
        col.kill()


def test_agent_with_an_unknown_key_is_refused(lab, ring_dir, tmp_path):
    pcap = write_pcap(tmp_path / "s.pcap", flows(5, 3, 4, T0_US))
    k = keys(tmp_path, "collector", "s1", "stranger")
    col = CollectorRun(tmp_path, f"tcp://0.0.0.0:{PORT}", ns=lab.collector,
                       security={"mode": "curve", "server_key": k["collector"][1],
                                 "authorized_keys": [k["s1"][0]]}).start()
    d = tmp_path / "stranger"
    d.mkdir()
    cfg = agent_cfg(pcap, "intruder", f"tcp://{lab.ip(1)}:{PORT}", k["stranger"], k["collector"][0])
    cfg["agent"]["run_dir"], cfg["export"]["spool_dir"] = str(d / "run"), str(d / "spool")
    cfg["export"]["drain_timeout"] = 3
    a = AgentRun(d, cfg, ring_dir, ns=lab.sensors[0], name="intruder").start()
    try:
        assert a.wait(120) == 0, a.log()
        # nothing acknowledged: the batches stay in the agent's spool for a later, authorized run
        assert "not yet acknowledged" in a.log()
        assert len(os.listdir(d / "spool" / "intruder" / "outgoing")) >= 1
        h = col.get("/api/health")
        assert h["intake"]["denied_unauthenticated"] >= 1 and h["intake"]["received"] == 0
        assert h["store"] == [] and col.get("/api/totals")["flows"] == 0
    finally:
        a.kill()
        col.stop()

"""route = "flow-hash" end to end: two `capfan agent` sensors replay the bundled sample capture
(IPv4, IPv6, a VLAN) into two real `capfan collect` processes on loopback. Each collector holds
exactly the flows whose canonical key hashes to it, both sensors' observations of a flow meet on
one collector, the union equals what one collector gets with route = "all", and a collector that
is down at first gets its share from the agents' spools later: nothing lost, nothing twice."""
import os
import signal
import time

import numpy as np
import pytest

from capfan import records
from capfan.flowkey import flow_shard
from tests.agents.agentrun import REPO, AgentRun, replay_pcap
from tests.agents.test_exporter import free_port
from tests.collector.collectorrun import CollectorRun
from tests.collector.test_multihost import T0_US, write_pcap
from tests.frames import udp4
from tests.conftest import ring_dir, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
SAMPLE = os.path.join(REPO, "capfan", "samples", "sample.pcap")
SENSORS = ("s1", "s2")


def agent(tmp, ring_dir, name, pcap, collectors, run, speed="max", idle_timeout=3600, **export):
    """A sensor replaying `pcap` (by default as fast as it can, metering every flow until the end),
    exporting in plain text."""
    d = tmp / f"{name}-{run}"
    d.mkdir()
    rings = os.path.join(ring_dir, name)
    os.makedirs(rings, exist_ok=True)
    cfg = {"agent": {"name": name, "exit_when_done": True, "run_dir": str(d / "run")},
           "metrics": {"enabled": False},
           "export": {"collectors": collectors, "security": "plain", "health_interval": 0.5,
                      "spool_dir": str(tmp / "spool"), **export},
           "capture": [{"source": "pcap", "file": pcap, "name": "rp", "options": {"speed": speed}}],
           "analyzer": [{"analyzer": "flowmeter", "options": {"idle_timeout": idle_timeout, "active_timeout": 0}}]}
    return AgentRun(d, cfg, rings, name=name).start()


def run_sensors(tmp, ring_dir, pcap, collectors, run, **export):
    """Both sensors, to completion; their logs."""
    agents = [agent(tmp / name, ring_dir, name, pcap, collectors, run, **export) for name in SENSORS]
    try:
        for a in agents:
            assert a.wait(120) == 0, a.log()
        return [a.log() for a in agents]
    finally:
        for a in agents:
            a.kill()


def settled(col):
    """True once the collector loaded everything in its journal (and got something)."""
    h = col.get("/api/health")
    last = h["journal"]["last"]
    return last is not None and h["loader"]["checkpoint"] == list(last)


def flow_records(col):
    """Flow records the collector stored from sensor s1's flow meter."""
    return sum(x["records"] for x in col.get("/api/health")["store"]
               if x["host"] == "s1" and x.get("source") == "rp.q0/flowmeter")


def canon(row):
    """The canonical key (vlan, proto, lower endpoint, higher endpoint) of an API flow row."""
    a = (records.pack_address(row["src"]), row["sport"])
    b = (records.pack_address(row["dst"]), row["dport"])
    return (row["vlan"], row["proto"], *sorted([a, b]))


def flows_of(col) -> dict:
    """canonical key -> the collector's merged flow rows of that key."""
    out = {}
    for r in col.get("/api/flows?limit=100000")["flows"]:
        out.setdefault(canon(r), []).append(r)
    return out


def shard_of(rows, n):
    """flow_shard of API rows (records rebuilt from their key fields)."""
    rec = records.empty(len(rows))
    for i, r in enumerate(rows):
        rec[i]["sourceIPAddress"] = np.void(records.pack_address(r["src"]))
        rec[i]["destinationIPAddress"] = np.void(records.pack_address(r["dst"]))
        rec[i]["sourceTransportPort"], rec[i]["destinationTransportPort"] = r["sport"], r["dport"]
        rec[i]["protocolIdentifier"], rec[i]["vlanId"] = r["proto"], r["vlan"]
    return flow_shard(rec, n)


def test_flow_hash_splits_flows_over_two_collectors(tmp_path, ring_dir):
    for name in SENSORS:
        (tmp_path / "all" / name).mkdir(parents=True)
        (tmp_path / "hash" / name).mkdir(parents=True)
    ref = CollectorRun(tmp_path, "tcp://127.0.0.1:0", name="ref").start()
    col_a = CollectorRun(tmp_path, "tcp://127.0.0.1:0", name="col-a").start()
    port_b = free_port()
    cols_hash = [col_a.endpoint, f"tcp://127.0.0.1:{port_b}"]
    col_b = None
    try:
        # the reference: one collector, every batch
        run_sensors(tmp_path / "all", ring_dir, SAMPLE, [ref.endpoint], "1", drain_timeout=60)
        assert wait_for(lambda: settled(ref), 30, 0.2), ref.get("/api/health")
        want = flows_of(ref)
        assert len(want) > 20
        assert any(k[0] for k in want) and any(not k[2][0].startswith(b"\0" * 10 + b"\xff\xff") for k in want)
        assert all(r["observers"] == list(SENSORS) for rows in want.values() for r in rows)

        # flow-hash over [a, b] while b is down: a gets its share, b's parts stay in the spools
        logs = run_sensors(tmp_path / "hash", ring_dir, SAMPLE, cols_hash, "1", route="flow-hash", drain_timeout=2)
        assert all("not yet acknowledged" in log for log in logs)
        assert wait_for(lambda: settled(col_a), 30, 0.2), col_a.get("/api/health")
        # b comes up; the same sensors run again (nothing new to replay) and drain their spools
        col_b = CollectorRun(tmp_path, f"tcp://127.0.0.1:{port_b}", name="col-b").start()
        empty = replay_pcap(tmp_path, [], name="empty.pcap")
        logs = run_sensors(tmp_path / "hash", ring_dir, empty, cols_hash, "2", route="flow-hash", drain_timeout=60)
        assert not any("not yet acknowledged" in log for log in logs), logs
        assert wait_for(lambda: settled(col_b) and settled(col_a), 30, 0.2)
        got = [flows_of(col_a), flows_of(col_b)]

        assert not set(got[0]) & set(got[1])                   # disjoint by canonical key
        assert {**got[0], **got[1]} == want                    # together: what one collector has
        assert got[0] and got[1]
        for i, g in enumerate(got):                            # each flow where flow_shard says
            rows = [r for rs in g.values() for r in rs]
            assert shard_of(rows, 2).tolist() == [i] * len(rows)
        # both sensors' observations of each flow met on one collector, and none was stored twice
        assert all(r["observers"] == list(SENSORS) and r["n_observations"] == 2
                   for g in got for rows in g.values() for r in rows)
        t = [c.get("/api/totals") for c in (ref, col_a, col_b)]
        assert t[1]["packets"] + t[2]["packets"] == t[0]["packets"] and t[1]["flows"] + t[2]["flows"] == t[0]["flows"]
        for c in (col_a, col_b):
            h = c.get("/api/health")
            assert h["intake"]["rejected_malformed"] == 0
            # health records (not flows) went to both collectors from both sensors
            assert {x["host"] for x in h["store"] if x.get("source") == "rp.q0"} == set(SENSORS)
    finally:
        for c in (ref, col_a, col_b):
            if c is not None:
                c.stop()


def test_flow_hash_collector_killed_mid_stream_loses_and_duplicates_nothing(tmp_path, ring_dir):
    # 200 short flows over ~6 s at 1x; each ends 1 s after its last packet, so records stream out
    # during the replay and collector b dies with parts in flight
    timed = []
    for f in range(200):
        start = T0_US + f * 30_000
        for i in range(6):
            a, b = f"10.7.{f // 100}.{f % 100 + 1}", "192.0.2.77"
            fr = udp4(a, b, 40000 + f, 123, b"x" * (60 + i)) if i % 2 == 0 else udp4(b, a, 123, 40000 + f, b"y" * 80)
            timed.append((start + i * 5_000, fr))
    pcap = write_pcap(tmp_path / "s.pcap", timed)
    ports = [free_port(), free_port()]
    col_a = CollectorRun(tmp_path, f"tcp://127.0.0.1:{ports[0]}", name="col-a").start()
    col_b = CollectorRun(tmp_path, f"tcp://127.0.0.1:{ports[1]}", name="col-b").start()
    col_b2 = None
    (tmp_path / "s1").mkdir()
    a = agent(tmp_path / "s1", ring_dir, "s1", pcap, [f"tcp://127.0.0.1:{p}" for p in ports], "1",
              speed="1x", idle_timeout=1.0, route="flow-hash", drain_timeout=60)
    try:
        assert wait_for(lambda: flow_records(col_b) >= 5, 30, 0.1), a.log()  # flows stream in, then b dies
        col_b.proc.send_signal(signal.SIGKILL)
        col_b.proc.wait()
        time.sleep(1.0)                               # a keeps receiving; b's parts wait in the spool
        col_b2 = CollectorRun(tmp_path, f"tcp://127.0.0.1:{ports[1]}", name="col-b").start()
        assert a.wait(120) == 0, a.log()
        assert "not yet acknowledged" not in a.log()
        assert wait_for(lambda: settled(col_a) and settled(col_b2), 30, 0.2)
        got = [flows_of(col_a), flows_of(col_b2)]
        assert not set(got[0]) & set(got[1]) and len(got[0]) + len(got[1]) == 200
        for i, (g, c) in enumerate(zip(got, (col_a, col_b2))):
            rows = [r for rs in g.values() for r in rs]
            assert len(rows) == len(g) and shard_of(rows, 2).tolist() == [i] * len(rows)
            assert flow_records(c) == len(rows)       # one record per flow: none lost, none stored twice
        assert col_a.get("/api/totals")["packets"] + col_b2.get("/api/totals")["packets"] == len(timed)
    finally:
        a.kill()
        for c in (col_a, col_b2):
            if c is not None:
                c.stop()
        col_b.kill()

"""`capfan agent` exporting to `capfan collect` on this host (loopback, CURVE keys): the records
arrive, the agent's status and /metrics show the delivery, and a collector that starts after
the agent still gets everything from the spool."""
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agents.agentrun import REPO, AgentRun, flow_frames, replay_pcap
from tests.collector.collectorrun import CollectorRun
from tests.collector.test_multihost import keys
from tests.conftest import ring_dir, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def export_cfg(pcap, endpoint, k, tmp, **agent):
    return {"agent": {"name": "s1", **agent},
            "export": {"collectors": [endpoint], "key": k["s1"][1], "server_key": k["collector"][0],
                       "spool_dir": str(tmp / "spool"), "health_interval": 0.5},
            "capture": [{"source": "pcap", "file": pcap, "name": "rp", "options": {"speed": "max"}}],
            "analyzer": [{"analyzer": "flowmeter", "options": {"idle_timeout": 3600, "active_timeout": 0}}]}


def curve(k):
    return {"mode": "curve", "server_key": k["collector"][1], "authorized_keys": [k["s1"][0]]}


def test_status_and_metrics_show_delivery_to_the_collector(tmp_path, ring_dir):
    k = keys(tmp_path, "collector", "s1")
    col = CollectorRun(tmp_path, "tcp://127.0.0.1:0", security=curve(k)).start()
    frames = flow_frames(2000, flows=40)
    a = AgentRun(tmp_path, export_cfg(replay_pcap(tmp_path, frames), col.endpoint, k, tmp_path), ring_dir).start()
    try:
        a.wait_running()
        # the agent keeps running (no exit_when_done): stop it to flush the flows, then look
        st = a.wait_status(lambda s: a.worker(s, kind="capture")["state"] == "done", what="replay done")
        exp = a.worker(st, kind="exporter")
        assert exp["state"] == "running" and exp["stats"]["collectors"][0]["connected"] is True
        with urllib.request.urlopen(f"http://{st['agent']['metrics']}/metrics", timeout=10) as r:
            samples = {s.name: s.value for fam in text_string_to_metric_families(r.read().decode())
                       for s in fam.samples if s.name.startswith("capfan_export")}
        assert samples["capfan_export_collector_connected"] == 1
        assert samples["capfan_export_acked_batches_total"] >= 1          # health records at least
        out = subprocess.run([sys.executable, "-m", "capfan", "status", "-c", a.path], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO), timeout=30)
        assert "export: sent " in out.stdout and f"{col.endpoint}: connected" in out.stdout, out.stdout
        assert a.stop() == 0
        assert "not yet acknowledged" not in a.log()
        totals = wait_for(lambda: (t := col.get("/api/totals"))["packets"] == len(frames) and t, 30, 0.2)
        assert totals and totals["flows"] == 40, col.get("/api/totals")
    finally:
        a.kill()
        col.stop()


def test_a_collector_that_comes_later_gets_everything_from_the_spool(tmp_path, ring_dir):
    k = keys(tmp_path, "collector", "s1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    frames = flow_frames(1500, flows=25, seed=4)
    cfg = export_cfg(replay_pcap(tmp_path, frames), f"tcp://127.0.0.1:{port}", k, tmp_path, exit_when_done=True)
    cfg["export"]["drain_timeout"] = 1
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    assert a.wait(60) == 0, a.log()
    assert "not yet acknowledged" in a.log()                  # nobody listened: kept in the spool
    col = CollectorRun(tmp_path, f"tcp://127.0.0.1:{port}", security=curve(k)).start()
    try:
        # the next agent run (same spool) delivers what the first one kept, then its own (none new:
        # an empty replay)
        cfg2 = export_cfg(replay_pcap(tmp_path, [], name="empty.pcap"), f"tcp://127.0.0.1:{port}", k, tmp_path,
                          exit_when_done=True)
        (tmp_path / "b").mkdir()
        b = AgentRun(tmp_path / "b", cfg2, ring_dir).start()
        assert b.wait(60) == 0, b.log()
        assert "not yet acknowledged" not in b.log()
        totals = wait_for(lambda: (t := col.get("/api/totals"))["packets"] == len(frames) and t, 30, 0.2)
        assert totals and totals["flows"] == 25, col.get("/api/totals")
        h = col.get("/api/health")
        assert h["loader"]["duplicates"] == 0 and h["intake"]["rejected_malformed"] == 0
    finally:
        col.stop()

"""`capfan collect` with engine = "clickhouse" end to end: one agent exports the same capture to a
DuckDB collector and a ClickHouse collector (a real 18.16 server); both answer the same."""
import pytest

from tests.agents.agentrun import AgentRun, flow_frames, replay_pcap
from tests.collector.collectorrun import CollectorRun
from tests.conftest import ring_dir, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def test_clickhouse_collector_answers_like_the_duckdb_one(tmp_path, ring_dir, clickhouse):
    duck = CollectorRun(tmp_path, "tcp://127.0.0.1:0", name="duck").start()
    ch = CollectorRun(tmp_path, "tcp://127.0.0.1:0", name="chc", engine="clickhouse",
                      sections={"clickhouse": {"port": clickhouse.port, "database": "e2e"}}).start()
    frames = flow_frames(3000, flows=50, seed=3)
    cfg = {"agent": {"name": "s1", "exit_when_done": True},
           "export": {"collectors": [duck.endpoint, ch.endpoint], "security": "plain",
                      "spool_dir": str(tmp_path / "spool"), "health_interval": 0.5},
           "capture": [{"source": "pcap", "file": replay_pcap(tmp_path, frames), "name": "rp",
                        "options": {"speed": "max"}}],
           "analyzer": [{"analyzer": "flowmeter", "options": {"idle_timeout": 3600, "active_timeout": 0}}]}
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    try:
        assert a.wait(90) == 0, a.log()
        assert "clickhouse://127.0.0.1:" in ch.log() and "/e2e" in ch.log()
        for col in (duck, ch):
            t = wait_for(lambda: (t := col.get("/api/totals"))["packets"] == len(frames) and t, 30, 0.2)
            assert t and t["flows"] == 50, col.get("/api/totals")
        assert ch.get("/api/totals") == duck.get("/api/totals")
        assert ch.get("/api/flows?limit=1000") == duck.get("/api/flows?limit=1000")
        for q in ("/api/top?by=bytes&group=src,dport&limit=7", "/api/top?by=packets&group=host,proto",
                  "/api/flows?dport=53&limit=5"):
            assert ch.get(q) == duck.get(q)
        hd = {(h["host"], h["source"]): h for h in duck.get("/api/health")["store"]}
        hc = {(h["host"], h["source"]): h for h in ch.get("/api/health")["store"]}
        assert hc.keys() == hd.keys()
        assert [(hc[k]["batches"], hc[k]["records"]) for k in hc] == [(hd[k]["batches"], hd[k]["records"]) for k in hc]
    finally:
        a.kill()
        duck.stop()
        ch.stop()
    # a restarted ClickHouse collector resumes from its checkpoint: nothing twice
    ch2 = CollectorRun(tmp_path, "tcp://127.0.0.1:0", name="chc", engine="clickhouse",
                       sections={"clickhouse": {"port": clickhouse.port, "database": "e2e"}}).start()
    try:
        assert ch2.get("/api/totals")["packets"] == len(frames)
    finally:
        ch2.stop()

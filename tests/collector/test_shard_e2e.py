"""The scale-out layout end to end: two `capfan collect` processes, each writing its own shard of a
two-server ClickHouse cluster ("capfan2", real 18.16 servers), and two `capfan agent` sensors that
replay the bundled sample capture with route = "flow-hash". Each shard holds exactly the flows the
agents' hash sends it, and a query through either collector (the Distributed tables) answers like
one DuckDB collector that received everything."""
import pytest

from tests.agents.test_route_e2e import SAMPLE, SENSORS, flows_of, run_sensors, settled, shard_of
from tests.collector.collectorrun import CollectorRun
from tests.conftest import ring_dir, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def test_two_collectors_on_two_shards_answer_like_one_collector(tmp_path, ring_dir, clickhouse_pair):
    for mode in ("all", "hash"):
        for name in SENSORS:
            (tmp_path / mode / name).mkdir(parents=True)
    ref = CollectorRun(tmp_path, "tcp://127.0.0.1:0", name="ref").start()
    shards = [CollectorRun(tmp_path, "tcp://127.0.0.1:0", name=f"shard{i}", engine="clickhouse",
                           sections={"clickhouse": {"port": srv.port, "database": "scaleout",
                                                    "cluster": "capfan2"}}).start()
              for i, srv in enumerate(clickhouse_pair)]
    try:
        run_sensors(tmp_path / "all", ring_dir, SAMPLE, [ref.endpoint], "1", drain_timeout=60)
        logs = run_sensors(tmp_path / "hash", ring_dir, SAMPLE, [c.endpoint for c in shards], "1",
                           route="flow-hash", drain_timeout=60)
        assert not any("not yet acknowledged" in log for log in logs), logs
        assert wait_for(lambda: all(settled(c) for c in (ref, *shards)), 60, 0.2)
        want = flows_of(ref)
        assert len(want) > 20

        # either collector answers for the whole cluster, like the single DuckDB collector
        for c in shards:
            got = flows_of(c)
            assert got == want
            rows = [r for rs in got.values() for r in rs]
            assert all(r["observers"] == list(SENSORS) and r["n_observations"] == 2 for r in rows)
            assert c.get("/api/totals") == ref.get("/api/totals")
            q = "/api/top?by=bytes&group=src,dport&limit=7"
            assert c.get(q) == ref.get(q)
        # each shard stored the observations of exactly the flows the agents' hash routes to it
        # (both sensors' observation of each: two rows per flow)
        all_rows = [r for rs in want.values() for r in rs]
        expect = [0, 0]
        for shard in shard_of(all_rows, 2).tolist():
            expect[shard] += 2
        per_shard = [srv.client().execute("SELECT count() FROM scaleout.obs_local")[0][0]
                     for srv in clickhouse_pair]
        assert per_shard == expect and all(per_shard)
    finally:
        for c in (ref, *shards):
            c.stop()

"""`python -m capfan.bench.store` with the ClickHouse engine beside DuckDB (tiny sizes: it runs,
keeps every acked batch through kill -9 on both engines, reports ratios, cleans up)."""
import io

from rich.console import Console

from capfan.bench import store as bench
from tests.collector.conftest import clickhouse  # noqa: F401 - fixture


def test_bench_store_measures_clickhouse_beside_duckdb(clickhouse, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("CAPFAN_BENCH_CLICKHOUSE", f"{clickhouse.host}:{clickhouse.port}")
    out = bench.measure(("duckdb", "clickhouse"), batches=4, batch_size=500, query_seconds=0.2, crash_acks=3,
                        tmp_dir=str(tmp_path), group=2)
    for name in ("duckdb", "clickhouse"):
        r = out["engines"][name]
        assert r["ingest_rps"] > 0 and r["ingest_many_rps"] > 0 and r["queries"] >= 1
        c = r["crash"]
        assert c["acked"] >= 3 and c["acked_missing"] == 0 and c["partial"] == 0
    buf = io.StringIO()
    bench.render(out, Console(file=buf, width=250))
    ratio = out["engines"]["clickhouse"]["ingest_rps"] / out["engines"]["duckdb"]["ingest_rps"]
    assert f"{ratio:.2f}x" in buf.getvalue()
    left = clickhouse.client().execute("SELECT name FROM system.databases WHERE name LIKE 'capfan_bench_%'")
    assert left == []

"""The ClickHouse schema: the shipped files are the rendered text, they apply to Debian's 18.16
server (single and two-shard) and the collector uses what they create; the TTL variant runs on a
current ClickHouse (chdb embeds one) and expires old days there."""
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from capfan.collector import chschema
from capfan.collector.chstore import ClickHouseStore
from tests.collector.test_store import S, batch, flows_batch, rec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "clickhouse"


def test_shipped_files_are_the_rendered_schema():
    files = chschema.deploy_files()
    assert sorted(files) == sorted(p.name for p in DEPLOY.iterdir() if p.suffix in (".sql", ".xml"))
    for name, text in files.items():
        assert (DEPLOY / name).read_text() == text, f"deploy/clickhouse/{name} is stale: regenerate it with " \
                                                    "python -m capfan.collector.chschema --deploy deploy/clickhouse"


def test_module_command_regenerates_the_files(tmp_path):
    r = subprocess.run([sys.executable, "-m", "capfan.collector.chschema", "--deploy", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in chschema.deploy_files():
        assert (tmp_path / name).read_text() == (DEPLOY / name).read_text()
    r = subprocess.run([sys.executable, "-m", "capfan.collector.chschema", "--database", "x-y"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "database 'x-y' is not a plain identifier" in r.stderr


def test_rendered_layouts():
    single = chschema.render()
    assert not any("Distributed" in s or "_local" in s or "TTL" in s for s in single)
    assert all("PARTITION BY toDate(toDateTime(intDiv(" in s for s in single if "capfan.obs " in s)
    cluster = chschema.render(cluster="capfan2")
    dist = [s for s in cluster if "ENGINE = Distributed(capfan2, capfan, " in s]
    assert len(dist) == len(chschema.TABLES)
    ttl = chschema.render(retention_days=30, ttl=True)
    assert sum("TTL toDate(toDateTime(intDiv(" in s and "INTERVAL 30 DAY" in s for s in ttl) == 4  # not loads
    assert sum("ttl_only_drop_parts" in s for s in ttl) == 4
    assert not any("ttl_only_drop_parts" in s for s in chschema.render(retention_days=30, ttl=True,
                                                                       ttl_only_drop_parts=False))
    assert chschema.render(retention_days=30) == single  # no TTL where the server has none
    with pytest.raises(ValueError, match="cluster '2x'"):
        chschema.render(cluster="2x")


def test_capfan2_xml_declares_two_shards():
    root = ET.fromstring((DEPLOY / "capfan2.xml").read_text())
    shards = root.findall("./remote_servers/capfan2/shard")
    assert [(s.find("replica/host").text, s.find("replica/port").text) for s in shards] == \
        [("clickhouse-1", "9000"), ("clickhouse-2", "9000")]


def client_apply(srv, path):
    r = subprocess.run(["clickhouse-client", "--host", srv.host, "--port", str(srv.port), "--multiquery"],
                       stdin=open(path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_shipped_single_server_schema_applies_to_18_16_and_the_store_uses_it(clickhouse):
    client_apply(clickhouse, DEPLOY / "schema.sql")
    client_apply(clickhouse, DEPLOY / "schema.sql")  # idempotent
    c = clickhouse.client()
    assert c.execute("SELECT key, value FROM capfan.meta") == [("schema_version", str(chschema.SCHEMA_VERSION))]
    tables = dict(c.execute("SELECT name, engine FROM system.tables WHERE database = 'capfan'"))
    assert tables == {t: "MergeTree" for t in ("meta",) + chschema.TABLES}
    st = ClickHouseStore(host=clickhouse.host, port=clickhouse.port, database="capfan", collector_id="c1")
    assert st.ingest("h1", 1, "flows", "q0", flows_batch(1)) and st.totals()["flows"] == 3
    st.close()
    assert c.execute("SELECT count() FROM capfan.meta") == [(1,)]


def test_shipped_cluster_schema_applies_to_both_shards(clickhouse_pair, tmp_path):
    for srv in clickhouse_pair:
        client_apply(srv, DEPLOY / "schema-cluster.sql")
    stores = [ClickHouseStore(host=s.host, port=s.port, database="capfan", cluster="capfan2", collector_id=f"c{i}")
              for i, s in enumerate(clickhouse_pair)]
    stores[0].ingest("h1", 1, "flows", "q0", batch(rec("10.0.0.1", "10.0.0.2", 1, 2, 0, 1, p=2)))
    stores[1].ingest("h2", 1, "flows", "q0", batch(rec("10.0.0.3", "10.0.0.4", 1, 2, 0, 1, p=5)))
    for st in stores:
        assert st.totals()["packets"] == 7
        st.close()


def chdb_rows(sess, sql):
    out = str(sess.query(sql, "TabSeparated")).strip()
    return [line.split("\t") for line in out.splitlines()] if out else []


def test_ttl_schema_on_a_current_clickhouse_expires_old_days():
    chdb_session = pytest.importorskip("chdb.session", reason="chdb (a current ClickHouse engine) is not installed")
    sess = chdb_session.Session()
    try:
        for stmt in chschema.render(database="ttl", retention_days=7, ttl=True):
            sess.query(stmt)
        version = chdb_rows(sess, "SELECT version()")[0][0]
        assert tuple(int(x) for x in version.split(".")[:2]) >= (19, 6)
        full = chdb_rows(sess, "SELECT engine_full FROM system.tables WHERE database = 'ttl' AND name = 'obs'")[0][0]
        assert "TTL toDate(toDateTime(intDiv(start_ns, 1000000000))) + toIntervalDay(7)" in full
        now = time.time_ns()
        cols = ", ".join(chschema.COLUMNS["obs"])
        for days_old, port in ((30, 1), (8, 2), (1, 3), (0, 4)):
            t = now - days_old * 86400 * S
            sess.query(f"INSERT INTO ttl.obs ({cols}) VALUES ('c1', 1, 'h1', 1, 'q0', 0, {t}, {t}, 0, 0, 0, 0, "
                       f"{port}, 80, 0, 6, 1, 0, 100, 0)")
        sess.query("OPTIMIZE TABLE ttl.obs FINAL")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = sorted(int(r[0]) for r in chdb_rows(sess, "SELECT sport FROM ttl.obs"))
            if left == [3, 4]:
                break
            time.sleep(0.2)
        assert left == [3, 4]
    finally:
        sess.close()

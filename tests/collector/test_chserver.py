"""The test ClickHouse servers themselves: one server answers; a pair forms cluster "capfan2"."""
import os
import subprocess
import uuid

import pytest

from tests.chserver import ClickHouseServer, server_binary


def test_single_server_answers(clickhouse, ch_database):
    c = clickhouse.client()
    c.execute(f"CREATE DATABASE {ch_database}")
    c.execute(f"CREATE TABLE {ch_database}.t (x UInt32) ENGINE = MergeTree ORDER BY x")
    c.execute(f"INSERT INTO {ch_database}.t VALUES", [(1,), (2,), (3,)])
    assert c.execute(f"SELECT sum(x) FROM {ch_database}.t") == [(6,)]
    assert c.execute("SELECT version()")[0][0].startswith("18.")


def test_pair_distributed_query_spans_both_shards(clickhouse_pair, ch_database):
    db = ch_database
    for i, srv in enumerate(clickhouse_pair):
        c = srv.client()
        c.execute(f"CREATE DATABASE {db}")
        c.execute(f"CREATE TABLE {db}.t_local (shard UInt8, x UInt32) ENGINE = MergeTree ORDER BY x")
        c.execute(f"CREATE TABLE {db}.t AS {db}.t_local ENGINE = Distributed(capfan2, {db}, t_local)")
        c.execute(f"INSERT INTO {db}.t_local VALUES", [(i, 10 * i + k) for k in range(3)])
    rows = clickhouse_pair[0].client().execute(f"SELECT shard, count(), sum(x) FROM {db}.t GROUP BY shard ORDER BY shard")
    assert rows == [(0, 3, 3), (1, 3, 33)]
    clusters = clickhouse_pair[1].client().execute(
        "SELECT shard_num, port FROM system.clusters WHERE cluster = 'capfan2' ORDER BY shard_num")
    assert clusters == [(1, clickhouse_pair[0].port), (2, clickhouse_pair[1].port)]


@pytest.mark.privileged
def test_server_inside_a_network_namespace(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if server_binary() is None:
        pytest.skip("clickhouse-server is not installed")
    ns = "cfch-" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        srv = ClickHouseServer(tmp_path / "ch", netns=ns).start()
        try:
            assert srv.query("SELECT 40 + 2") == [("42",)]
            # the server listens inside the namespace only
            from clickhouse_driver import Client
            from clickhouse_driver.errors import NetworkError
            with pytest.raises(NetworkError):
                Client(host="127.0.0.1", port=srv.port, connect_timeout=1).execute("SELECT 1")
        finally:
            srv.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

"""Collector fixtures: real ClickHouse servers (tests/chserver.py), shared per test module.

Tests using them create their own database (unique name) so a module can share one server."""
import uuid

import pytest

from tests.chserver import ClickHouseServer, reserve_ports, server_binary


def _need_server():
    if server_binary() is None:
        pytest.skip("clickhouse-server is not installed (Debian package clickhouse-server)")


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory):
    """One running clickhouse-server on a free loopback port (stopped and removed after the module)."""
    _need_server()
    srv = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def clickhouse_pair(tmp_path_factory):
    """Two servers forming cluster "capfan2" (one shard each), both knowing the cluster."""
    _need_server()
    p1, p2 = reserve_ports(2)
    clusters = {"capfan2": [("127.0.0.1", p1), ("127.0.0.1", p2)]}
    servers = [ClickHouseServer(tmp_path_factory.mktemp(f"clickhouse-shard{i}"), tcp_port=p, clusters=clusters)
               for i, p in enumerate((p1, p2))]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def ch_database():
    """A fresh database name for one test (tests sharing a module server stay apart)."""
    return "t_" + uuid.uuid4().hex[:12]

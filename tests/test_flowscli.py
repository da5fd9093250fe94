"""`capfan flows` and `capfan collect` command lines against an in-process API server."""
import json
import socket
import sys

import pytest
from click.testing import CliRunner

from capfan.cli import main
from capfan.collector import api as api_mod
from capfan.collector import config as ccfg
from capfan.collector import store as store_mod
from tests.collector.test_intake import flows


@pytest.fixture
def url(tmp_path):
    s = store_mod.Store(str(tmp_path / "s.db"))
    s.ingest("s1", 1, "flows", "eth0.q0/flowmeter", flows(5, src="10.0.0.1"))
    s.ingest("s2", 1, "flows", "eth1.q0/flowmeter", flows(2, src="10.0.0.2"))
    a = api_mod.Api(s, "127.0.0.1:0")
    a.start()
    yield a.url
    a.stop()
    s.close()


@pytest.fixture
def collector_config(monkeypatch):
    # the CLI imports capfan.collector.config: make that name this checkout's module
    monkeypatch.setitem(sys.modules, "capfan.collector.config", ccfg)


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_top_prints_a_table_and_json(url):
    r = run("flows", "--api", url, "top", "--group", "src", "--by", "flows")
    assert r.exit_code == 0, r.output
    assert "grouped by src" in r.output and "10.0.0.1" in r.output and "10.0.0.2" in r.output
    assert r.output.index("10.0.0.1") < r.output.index("10.0.0.2")
    r = run("flows", "--api", url, "top", "--json", "--group", "src", "--src", "10.0.0.2", "--start", "-100000d")
    data = json.loads(r.output)
    assert [row["src"] for row in data["rows"]] == ["10.0.0.2"]


def test_query_filters(url):
    r = run("flows", "--api", url, "query", "--host", "s2", "--json")
    assert r.exit_code == 0 and len(json.loads(r.output)["flows"]) == 2
    r = run("flows", "--api", url, "query", "--src", "10.0.0.1", "-n", "3")
    assert r.exit_code == 0 and "3 flow(s) (limit reached)" in r.output


def test_export_writes_csv_and_parquet(url, tmp_path):
    out = tmp_path / "f.csv"
    r = run("flows", "--api", url, "export", "-o", str(out), "--src", "10.0.0.1")
    assert r.exit_code == 0 and "5 flow(s)" in r.output
    assert len(out.read_text().strip().splitlines()) == 6
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "f.parquet"
    r = run("flows", "--api", url, "export", "-o", str(out))
    assert r.exit_code == 0 and pq.read_table(str(out)).num_rows == 7


def test_api_errors_are_one_line(url):
    r = run("flows", "--api", url, "top", "--group", "src,mac")
    assert r.exit_code == 2 and "unknown key 'mac'" in r.output and "HTTP 400" in r.output
    assert "Traceback" not in r.output


def test_unreachable_collector_is_one_line_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again: nothing listens there
    r = run("flows", "top", env={"CAPFAN_API": f"http://127.0.0.1:{port}"})
    assert r.exit_code == 2
    assert f"not reachable at http://127.0.0.1:{port} (connection refused)" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_api_url_from_the_collector_config(url, tmp_path, collector_config):
    port = url.rsplit(":", 1)[1]
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[api]\nlisten = "0.0.0.0:{port}"\n')
    r = run("flows", "-c", str(cfg), "query", "--json", env={"CAPFAN_API": "http://127.0.0.1:1"})
    assert r.exit_code == 0 and len(json.loads(r.output)["flows"]) == 7
    cfg.write_text("[api]\nenabled = false\n")
    r = run("flows", "-c", str(cfg), "top")
    assert r.exit_code == 2 and "enabled = false" in r.output


def test_collect_check(tmp_path, collector_config):
    cfg = tmp_path / "collector.toml"
    cfg.write_text('[security]\nmode = "plain"\n[collector]\nlisten = "tcp://*:5557"\n')
    r = run("collect", "-c", str(cfg), "--check")
    assert r.exit_code == 0 and "config OK" in r.output and "tcp://*:5557" in r.output
    cfg.write_text("[collector]\nname = \"c1\"\n")
    r = run("collect", "-c", str(cfg), "--check")
    assert r.exit_code == 2 and "security.server_key" in r.output


def test_collect_help():
    r = run("collect", "--help")
    assert r.exit_code == 0 and "--check" in r.output


def test_no_match_says_so(url):
    r = run("flows", "--api", url, "top", "--src", "192.0.2.1")
    assert r.exit_code == 0 and "no flows match" in r.output

"""The collector's HTTP JSON API over the stand-in store, and the collect service end to end."""
import io
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import zmq

from capfan import wire
from capfan.collector import api as api_mod
from capfan.collector import config as ccfg
from capfan.collector import service
from capfan.collector import store as store_mod
from tests.collector.test_intake import flows, frames

T0 = 1_700_000_000_000_000_000


class FakeIntake:
    def counters(self):
        return {"received": 3, "hosts": {"s1": {"last_seen_ns": 1}}}


@pytest.fixture
def store(tmp_path):
    s = store_mod.Store(str(tmp_path / "s.db"))
    s.ingest("s1", 1, "flows", "eth0.q0/flowmeter", flows(5, src="10.0.0.1"))
    s.ingest("s2", 1, "flows", "eth1.q0/flowmeter", flows(2, src="10.0.0.2"))
    yield s
    s.close()


@pytest.fixture
def api(store):
    a = api_mod.Api(store, "127.0.0.1:0", intake=FakeIntake(), info={"collector": "c1"})
    a.start()
    yield a
    a.stop()


def get(api, path):
    """(status, parsed JSON or raw bytes, headers)."""
    try:
        with urllib.request.urlopen(api.url + path, timeout=5) as r:
            body, status, headers = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        body, status, headers = e.read(), e.code, e.headers
    if headers.get("Content-Type", "").startswith("application/json"):
        body = json.loads(body)
    return status, body, headers


def test_top_groups_and_ranks(api):
    status, body, _ = get(api, "/api/top?by=bytes&group=src&limit=5")
    assert status == 200 and body["group"] == ["src"] and body["by"] == "bytes"
    assert [r["src"] for r in body["rows"]] == ["10.0.0.1", "10.0.0.2"]
    assert body["rows"][0]["flows"] == 5
    status, body, _ = get(api, "/api/top?group=src,dst&limit=1&src=10.0.0.2&proto=6")
    assert status == 200 and len(body["rows"]) == 1 and body["rows"][0]["src"] == "10.0.0.2"
    assert body["where"] == {"src": "10.0.0.2", "proto": 6}


def test_flows_totals_health(api):
    status, body, _ = get(api, f"/api/flows?host=s2&start={T0}&end=now")
    assert status == 200 and len(body["flows"]) == 2 and body["flows"][0]["observers"] == ["s2"]
    assert body["start_ns"] == T0
    status, body, _ = get(api, "/api/totals")
    assert status == 200 and body["flows"] == 7
    status, body, _ = get(api, "/api/totals?src=10.0.0.1")
    assert body["flows"] == 5
    status, body, _ = get(api, "/api/health")
    assert status == 200 and body["collector"] == "c1" and body["intake"]["received"] == 3
    assert sorted(h["host"] for h in body["store"] if h["source"] is None) == ["s1", "s2"]


def test_export_streams_csv_and_parquet(api):
    status, body, headers = get(api, "/api/export?format=csv&src=10.0.0.1")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert len(body.decode().strip().splitlines()) == 1 + 5 and headers["X-Capfan-Rows"] == "5"
    pq = pytest.importorskip("pyarrow.parquet")
    status, body, _ = get(api, "/api/export?format=parquet")
    assert status == 200 and pq.read_table(io.BytesIO(body)).num_rows == 7


@pytest.mark.parametrize("query, param", [
    ("/api/top?by=octets", "by"),
    ("/api/top?group=src,mac", "group"),
    ("/api/top?group=src,src", "group"),
    ("/api/top?limit=0", "limit"),
    ("/api/top?limit=ten", "limit"),
    ("/api/flows?start=yesterday", "start"),
    ("/api/flows?start=-1h&end=-2h", "end"),
    ("/api/flows?src=10.0.0.300", "src"),
    ("/api/flows?dport=70000", "dport"),
    ("/api/flows?host=a%20b", "host"),
    ("/api/flows?dprot=53", "dprot"),
    ("/api/flows?src=1.1.1.1&src=2.2.2.2", "src"),
    ("/api/export?format=xlsx", "format"),
    ("/api/health?verbose=1", "verbose"),
])
def test_bad_parameters_are_400_naming_the_parameter(api, query, param):
    status, body, _ = get(api, query)
    assert status == 400 and body["parameter"] == param and f"'{param}'" in body["error"]


def test_unknown_path_is_404_and_a_failure_500_without_traceback(api, store, monkeypatch):
    status, body, _ = get(api, "/api/nope")
    assert status == 404 and "/api/top" in body["error"]

    def boom(**kw):
        raise RuntimeError("secret internals /var/lib/x")
    monkeypatch.setattr(store, "totals", boom)
    status, body, _ = get(api, "/api/totals")
    assert status == 500 and "internals" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    status, body, _ = get(api, "/api/top")   # and the server still answers
    assert status == 200


def test_parse_time():
    now = T0
    assert api_mod.parse_time("123", now_ns=now) == 123
    assert api_mod.parse_time("now", now_ns=now) == now
    assert api_mod.parse_time("-15m", now_ns=now) == now - 15 * 60 * 10**9
    assert api_mod.parse_time("-2h", now_ns=now) == now - 7200 * 10**9
    assert api_mod.parse_time("-1.5s", now_ns=now) == now - 1_500_000_000
    assert api_mod.parse_time("2023-11-14T22:13:20Z") == T0
    assert api_mod.parse_time("2023-11-14T22:13:20") == T0          # naive = UTC
    assert api_mod.parse_time("2023-11-14T23:13:20.5+01:00") == T0 + 500_000_000
    with pytest.raises(api_mod.BadParameter, match="'end'"):
        api_mod.parse_time("-15x", "end")


def test_collect_service_intake_api_and_clean_stop(tmp_path):
    cfg = ccfg.resolve({"collector": {"listen": "tcp://127.0.0.1:*", "store": "flows.db", "status_interval": 0.1},
                        "security": {"mode": "plain"}, "api": {"listen": "127.0.0.1:0"}}, str(tmp_path))
    col = service.Collector(cfg)
    col.start()
    stop = threading.Event()
    out = io.StringIO()
    t = threading.Thread(target=col.run, args=(stop, out))
    t.start()
    try:
        assert any("plain" in line for line in col.banner())
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(col.intake.endpoint)
        s.send_multipart(frames(1, n=4))
        assert s.poll(5000) and wire.decode_ack(s.recv_multipart())[0] == [1]
        ctx.destroy(0)
        _, body, _ = get(col.api, "/api/health")
        assert body["intake"]["journaled"] == 1 and body["security"] == "plain"
        # the ack means journaled; the loader stores it shortly after
        deadline = time.monotonic() + 10
        while get(col.api, "/api/totals")[1]["flows"] != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(col.api, "/api/totals")[1]["flows"] == 4
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and col.store is None and col.intake is None
    assert "stored 1 (4 records)" in out.getvalue().splitlines()[-1]
    again = store_mod.Store(cfg["collector"]["store"])   # closed cleanly, reopenable, data kept
    assert again.totals()["flows"] == 4
    again.close()

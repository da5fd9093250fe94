"""agents.metrics: the Prometheus exposition of a status snapshot, parsed back with
prometheus_client, and the HTTP endpoint serving it."""
from __future__ import annotations

import copy
import http.client
import json
import re
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from capfan.agents import metrics
from capfan import __version__
from capfan.errors import ConfigError

NOW = 1764000010.0
ODD_NAME = 'we"ird\\name'   # a consumer name with a double quote and a backslash


def sample_snapshot() -> dict:
    """A realistic status.json: 2 queues, 4 consumers (two of them members of one group),
    workers including a failed one without a pid, one warning."""
    def consumer(name, analyzer, delivered, **kw):
        c = {"consumer": name, "analyzer": analyzer, "policy": "reliable", "state": "active",
             "group": None, "member": 0, "group_size": 0, "pid": 4000 + delivered % 97,
             "delivered": delivered, "dropped": 0, "filtered": 0, "demotions": 0, "lag": 10, "rate_pps": 99.0}
        c.update(kw)
        return c

    def worker(wid, kind, ring, cons, pid, state="running", **kw):
        w = {"id": wid, "kind": kind, "ring": ring, "consumer": cons, "analyzer": None, "pid": pid,
             "state": state, "restarts": 0, "last_exit": None, "cpu": 2, "cpu_percent": 12.5,
             "cpu_seconds": 1.25, "rss_bytes": 31000000, "uptime": 9.5, "stats": {}}
        w.update(kw)
        return w

    return {
        "version": 1,
        "agent": {"name": "sensor", "pid": 123, "config": "/etc/capfan/sensor.toml",
                  "started": NOW - 10.0, "time": NOW, "uptime": 10.0, "state": "running",
                  "metrics": "127.0.0.1:9477"},
        "interfaces": {"eth0": {"rx_packets": 2100, "rx_bytes": 150000, "nic_drops": 7}},
        "queues": [
            {"ring": "eth0.q0", "capture": "eth0", "interface": "eth0", "source": "afpacket", "queue": 0,
             "rx_packets": 1000, "rx_bytes": 64000, "rx_pps": 1500.0, "rx_bps": 2_500_000.0,
             "kernel_drops": 3, "ring_drops": 5, "published": 995,
             "ring_used": 16384, "ring_size": 65536, "ring_fill": 0.25,
             "consumers": [
                 consumer("flows", "flowmeter", 990),
                 consumer("rec-0", "recorder", 480, group="rec", member=0, group_size=2, filtered=510),
                 consumer("rec-1", "recorder", 505, group="rec", member=1, group_size=2, filtered=485,
                          policy="lossy", dropped=4, demotions=1, lag=None, rate_pps=None),
             ]},
            {"ring": "eth0.q1", "capture": "eth0", "interface": "eth0", "source": "afpacket", "queue": 1,
             "rx_packets": 1100, "rx_bytes": 86000, "rx_pps": 0.0, "rx_bps": 0.0,
             "kernel_drops": 0, "ring_drops": 0, "published": 1100,
             "ring_used": 0, "ring_size": 65536, "ring_fill": 0.0,
             "consumers": [consumer(ODD_NAME, "stats", 1100, lag=0)]},
        ],
        "workers": [
            worker("capture-eth0.q0", "capture", "eth0.q0", None, 789),
            worker("capture-eth0.q1", "capture", "eth0.q1", None, 790, restarts=2),
            worker("flowmeter-eth0.q0-flows", "analyzer", "eth0.q0", "flows", 791, analyzer="flowmeter"),
            worker("stats-eth0.q1", "analyzer", "eth0.q1", ODD_NAME, None, state="failed", restarts=5,
                   last_exit="exit status 2", cpu=None, cpu_percent=None, cpu_seconds=None, rss_bytes=None,
                   uptime=None, analyzer="stats"),
        ],
        "warnings": ["cores 2,3 are not isolated (add isolcpus=2,3 to the kernel command line)"],
    }


def parse(text: str) -> dict:
    """{family name: family} of an exposition, checked for the things prometheus_client's lenient
    parser lets through: trailing newline, one TYPE per family before its samples, contiguous
    families, no duplicate series."""
    assert text.endswith("\n")
    typed, seen, current = set(), set(), None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in typed, f"family {name} declared twice"
            typed.add(name)
            current = name
        elif line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            assert series.split("{")[0] == current, f"sample outside its family: {line}"
            assert series not in seen, f"duplicate series {series}"
            seen.add(series)
            assert line.startswith("capfan_")
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, sample_name: str, **labels) -> float:
    """The value of the one sample of that name whose labels include `labels`."""
    family = families[re.sub(r"_total$", "", sample_name)]
    hits = [s for s in family.samples if s.name == sample_name and labels.items() <= s.labels.items()]
    assert len(hits) == 1, (sample_name, labels, family.samples)
    return hits[0].value


def samples(families: dict, family: str) -> list:
    return families[family].samples


# ------------------------------------------------------------------ render

def test_render_queue_and_interface_values():
    fams = parse(metrics.render(sample_snapshot()))
    assert fams["capfan_queue_rx_packets"].type == "counter"
    assert value(fams, "capfan_queue_rx_packets_total", ring="eth0.q1") == 1100
    assert value(fams, "capfan_queue_rx_bytes_total", ring="eth0.q0") == 64000
    assert value(fams, "capfan_queue_kernel_drops_total", ring="eth0.q0") == 3
    assert value(fams, "capfan_queue_ring_drops_total", ring="eth0.q0") == 5
    assert value(fams, "capfan_queue_published_packets_total", ring="eth0.q0") == 995
    assert fams["capfan_queue_ring_fill_ratio"].type == "gauge"
    assert value(fams, "capfan_queue_ring_fill_ratio", ring="eth0.q0") == 0.25
    assert value(fams, "capfan_queue_ring_used_descriptors", ring="eth0.q0") == 16384
    assert value(fams, "capfan_queue_ring_size_descriptors", ring="eth0.q1") == 65536
    q0 = next(s for s in samples(fams, "capfan_queue_rx_packets") if s.labels["ring"] == "eth0.q0")
    assert q0.labels == {"ring": "eth0.q0", "capture": "eth0", "interface": "eth0", "source": "afpacket",
                         "queue": "0"}
    assert value(fams, "capfan_interface_nic_drops_total", interface="eth0") == 7
    assert value(fams, "capfan_interface_rx_packets_total", interface="eth0") == 2100


def test_render_consumers_with_group_member_and_escaped_name():
    fams = parse(metrics.render(sample_snapshot()))
    assert value(fams, "capfan_consumer_delivered_packets_total", ring="eth0.q0", consumer="flows") == 990
    member = next(s for s in samples(fams, "capfan_consumer_delivered_packets") if s.labels["consumer"] == "rec-1")
    assert member.labels == {"ring": "eth0.q0", "consumer": "rec-1", "analyzer": "recorder", "group": "rec",
                             "member": "1", "policy": "lossy"}
    assert member.value == 505
    assert value(fams, "capfan_consumer_filtered_packets_total", consumer="rec-0") == 510
    assert value(fams, "capfan_consumer_dropped_packets_total", consumer="rec-1") == 4
    assert value(fams, "capfan_consumer_demotions_total", consumer="rec-1") == 1
    assert value(fams, "capfan_consumer_lag_packets", consumer="flows") == 10
    # a null group is an empty label (Prometheus' "no value"), not the text None
    assert [s.labels["group"] for s in samples(fams, "capfan_consumer_delivered_packets")
            if s.labels["consumer"] == "flows"] == [""]
    # the parser un-escapes: the name comes back exactly, and the raw text has the escapes
    assert value(fams, "capfan_consumer_delivered_packets_total", consumer=ODD_NAME) == 1100
    assert 'consumer="we\\"ird\\\\name"' in metrics.render(sample_snapshot())


def test_render_label_value_with_newline_stays_one_line():
    snap = sample_snapshot()
    snap["queues"][0]["consumers"][0]["consumer"] = "two\nlines"
    text = metrics.render(snap)
    assert 'consumer="two\\nlines"' in text
    assert value(parse(text), "capfan_consumer_delivered_packets_total", consumer="two\nlines") == 990


def test_render_workers_and_agent():
    fams = parse(metrics.render(sample_snapshot()))
    assert value(fams, "capfan_worker_up", worker="capture-eth0.q0") == 1
    assert value(fams, "capfan_worker_up", worker="stats-eth0.q1") == 0
    assert value(fams, "capfan_worker_restarts_total", worker="stats-eth0.q1") == 5
    assert value(fams, "capfan_worker_restarts_total", worker="capture-eth0.q1") == 2
    assert value(fams, "capfan_worker_cpu_seconds_total", worker="capture-eth0.q0") == 1.25
    assert value(fams, "capfan_worker_resident_memory_bytes", worker="capture-eth0.q0") == 31000000
    up = next(s for s in samples(fams, "capfan_worker_up") if s.labels["worker"] == "flowmeter-eth0.q0-flows")
    assert up.labels == {"worker": "flowmeter-eth0.q0-flows", "kind": "analyzer", "ring": "eth0.q0",
                         "consumer": "flows"}
    assert samples(fams, "capfan_agent_info")[0].labels == {"name": "sensor", "version": __version__}
    assert value(fams, "capfan_agent_info") == 1
    assert value(fams, "capfan_agent_uptime_seconds") == 10.0
    assert value(fams, "capfan_agent_start_time_seconds") == NOW - 10.0
    assert value(fams, "capfan_agent_warnings") == 1


def test_render_leaves_nulls_out():
    text = metrics.render(sample_snapshot())
    assert "NaN" not in text and "None" not in text
    fams = parse(text)
    # the failed worker has no process: no cpu time, no memory, but it is still reported down
    workers = {s.labels["worker"] for s in samples(fams, "capfan_worker_cpu_seconds")}
    assert "stats-eth0.q1" not in workers and "capture-eth0.q0" in workers
    assert "stats-eth0.q1" not in {s.labels["worker"] for s in samples(fams, "capfan_worker_resident_memory_bytes")}
    assert "rec-1" not in {s.labels["consumer"] for s in samples(fams, "capfan_consumer_lag_packets")}
    assert len(samples(fams, "capfan_consumer_lag_packets")) == 3


def test_render_empty_snapshot_is_valid():
    for snap in ({}, {"version": 1, "agent": None, "queues": [], "workers": [], "interfaces": {},
                      "warnings": []}):
        text = metrics.render(snap)
        fams = parse(text)
        assert "capfan_queue_rx_packets" in fams and "capfan_worker_up" in fams
        assert all(not f.samples for name, f in fams.items() if name != "capfan_agent_warnings")
    assert value(parse(metrics.render({"warnings": []})), "capfan_agent_warnings") == 0


def test_render_non_finite_floats():
    snap = {"workers": [{"id": "w", "state": "running", "cpu_seconds": float("inf"), "rss_bytes": float("nan")}]}
    text = metrics.render(snap)
    assert 'capfan_worker_cpu_seconds_total{worker="w",kind="",ring="",consumer=""} +Inf' in text
    assert 'capfan_worker_resident_memory_bytes{worker="w",kind="",ring="",consumer=""} NaN' in text
    parse(text)


def test_render_tolerates_junk_without_duplicates():
    snap = sample_snapshot()
    snap["queues"][0]["rx_bytes"] = "lots"                     # non-number: left out
    snap["queues"].append("not a queue")
    snap["queues"].append(copy.deepcopy(snap["queues"][0]))   # same labels twice: first one wins
    snap["queues"][-1]["rx_packets"] = 1
    fams = parse(metrics.render(snap))
    assert value(fams, "capfan_queue_rx_packets_total", ring="eth0.q0") == 1000
    assert "eth0.q0" not in {s.labels["ring"] for s in samples(fams, "capfan_queue_rx_bytes")}


# ------------------------------------------------------------------ HTTP

@pytest.fixture
def server():
    srv = metrics.MetricsServer("127.0.0.1", 0, sample_snapshot)
    srv.start()
    yield srv
    srv.close()


def get(port: int, path: str, method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def test_server_metrics_and_status(server):
    assert server.port > 0
    code, ctype, body = get(server.port, "/metrics")
    assert code == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert body.decode() == metrics.render(sample_snapshot())
    code, ctype, body = get(server.port, "/status")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == sample_snapshot()
    code, _ctype, body = get(server.port, "/metrics?x=1", method="HEAD")
    assert (code, body) == (200, b"")


def test_server_unknown_path_is_404(server):
    code, _ctype, body = get(server.port, "/nope")
    assert code == 404 and b"/metrics" in body
    assert get(server.port, "/metrics/extra")[0] == 404


def test_server_snapshot_error_is_503_and_server_survives():
    calls = []

    def snapshot():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("supervisor is restarting")
        return {"warnings": []}

    with metrics.MetricsServer("127.0.0.1", 0, snapshot) as srv:
        code, _ctype, body = get(srv.port, "/metrics")
        assert code == 503 and b"supervisor is restarting" in body
        assert get(srv.port, "/metrics")[0] == 200


def test_server_close_frees_the_port_and_is_idempotent():
    srv = metrics.MetricsServer("127.0.0.1", 0, dict)
    srv.start()
    port = srv.port
    srv.close()
    srv.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    with pytest.raises(OSError):
        get(port, "/metrics")
    metrics.MetricsServer("127.0.0.1", 0, dict).close()   # never started: nothing to do


def test_server_port_in_use_is_config_error(server):
    other = metrics.MetricsServer("127.0.0.1", server.port, dict)
    with pytest.raises(ConfigError) as e:
        other.start()
    msg = str(e.value)
    assert e.value.key == "metrics.listen"
    assert f"cannot listen on 127.0.0.1:{server.port}" in msg and "metrics.enabled = false" in msg
    assert "in use" in msg
    other.close()


def test_server_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = metrics.MetricsServer("::1", 0, dict)
    try:
        srv.start()
    except ConfigError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert srv.address == f"[::1]:{srv.port}"
        conn = http.client.HTTPConnection("::1", srv.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        srv.close()


# ------------------------------------------------------------------ parse_listen

@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9477", ("127.0.0.1", 9477)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9477", ("::1", 9477)),
    ("[::]:80", ("::", 80)),
    (":9477", ("127.0.0.1", 9477)),
    ("9477", ("127.0.0.1", 9477)),
    (" localhost:9477 ", ("localhost", 9477)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    (9477, ("127.0.0.1", 9477)),
])
def test_parse_listen(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text,needle", [
    ("", "no port"),
    ("127.0.0.1", "is not a number"),
    ("127.0.0.1:", "no port"),
    ("host:http", "is not a number"),
    ("127.0.0.1:65536", "above 65535"),
    ("::1:9477", "brackets"),
    ("[::1]9477", "]:PORT"),
    ("[::1", "]:PORT"),
    ("[1.2.3.4]:80", "not an IPv6"),
    ("bad host:80", "not a host name"),
    ("127.0.0.1:-1", "is not a number"),
    (None, "got NoneType"),
])
def test_parse_listen_errors(text, needle):
    with pytest.raises(ConfigError) as e:
        metrics.parse_listen(text, key="exporter.listen")
    assert e.value.key == "exporter.listen"
    assert "config key 'exporter.listen'" in str(e.value) and needle in str(e.value)


def test_is_loopback():
    assert metrics.is_loopback("127.0.0.1") and metrics.is_loopback("::1") and metrics.is_loopback("localhost")
    assert not metrics.is_loopback("0.0.0.0") and not metrics.is_loopback("192.0.2.1")
    assert not metrics.is_loopback("sensor.example")

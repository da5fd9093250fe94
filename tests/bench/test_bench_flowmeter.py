"""Smoke test of `capfan bench flowmeter`: a tiny capture end to end, the report's structure,
the agreement check between the C flow table and the dpkt/scapy baselines, positive rates.
Correctness only, never speed."""
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

from capfan.bench import flowmeter as F
from capfan.bench.cli import bench
from capfan.errors import ConfigError
from tests.pcapfile import write_pcap

TINY = ["--packets", "6000", "--flows", "300", "--dpkt-packets", "3000", "--scapy-packets", "400",
        "--repeat", "1", "--ndesc", "1024", "--arena", "4M"]




@pytest.fixture
def ring_dir(monkeypatch):
    """Bench rings go to a private tmpfs directory; the test fails if one is left behind."""
    d = tempfile.mkdtemp(prefix="capfan-bench-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    monkeypatch.setenv("CAPFAN_RING_DIR", d)
    yield d
    leftovers = os.listdir(d)
    shutil.rmtree(d, ignore_errors=True)
    assert leftovers == [], f"bench left rings behind: {leftovers}"


def test_synthetic_capture_is_deterministic_and_parses():
    import dpkt

    a = F.synthesize(4000, 200, "mix64", seed=7)
    b = F.synthesize(4000, 200, "mix64", seed=7)
    assert np.array_equal(a.buf, b.buf) and np.array_equal(a.ts_ns, b.ts_ns)
    assert len(a) == 4000 and a.info["flows"] == 200
    assert np.all(np.diff(a.ts_ns.astype(np.int64)) >= 0)
    assert a.info["flows_ipv4"] and a.info["flows_ipv6"] and a.info["flows_tcp"] and a.info["flows_udp"]
    table, bad = F.meter_dpkt(a.packet_list(len(a)))
    assert bad == 0 and len(table) == 200           # every flow keyed exactly once
    assert sum(s[2] + s[3] for s in table.values()) == 4000
    both = [s for s in table.values() if s[2] + s[3] >= 2]
    assert all(s[2] and s[3] for s in both)          # flows of 2+ packets go both ways
    for ts, _wl, frame in a.packet_list(50):
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        assert isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6))
        assert isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP))


def test_tcp_flows_open_with_syn_and_close_with_fins():
    w = F.synthesize(3000, 100, seed=3)
    table, _ = F.meter_dpkt(w.packet_list(len(w)))
    tcp = [(k, s) for k, s in table.items() if k[3] == 6 and s[2] + s[3] >= 4]
    assert tcp
    for _k, s in tcp:
        flags = s[8] | s[9]
        assert flags & 0x02 and flags & 0x01 and flags & 0x10  # SYN, FIN, ACK


def test_size_mixes():
    assert F.size_mix("imix")[0] == "imix"
    label, sizes, p = F.size_mix("64,1514")
    assert label == "64,1514" and list(sizes) == [64, 1514] and p.sum() == pytest.approx(1)
    w = F.synthesize(2000, 50, "imix", seed=2)
    small = set(np.unique(w.caplens).tolist()) - {576, 1514}
    assert 64 in small and all(64 <= x <= 78 for x in small)     # 64 B grows to the headers (v6 TCP: 74)
    for bad in ("huge", "10", "64,x"):
        with pytest.raises(ConfigError) as e:
            F.size_mix(bad)
        assert e.value.key == "sizes"
    with pytest.raises(ConfigError) as e:
        F.synthesize(10, 20)
    assert e.value.key == "flows"


def test_baselines_agree_and_compare_catches_differences():
    w = F.synthesize(3000, 150, seed=5)
    pk = w.packet_list(1500)
    d = F.table_flows(F.meter_dpkt(pk)[0])
    s = F.table_flows(F.meter_scapy(pk)[0])
    g = F.compare("scapy vs dpkt", 1500, s, d)
    assert g.ok and g.same == len(d) > 0
    key = next(iter(d))
    ab, ba, first, last = d[key]
    d2 = {**d, key: ((ab[0] + 1,) + ab[1:], ba, first, last)}
    g = F.compare("x", 1500, s, d2)
    assert not g.ok and g.differ == 1 and g.examples
    d3 = dict(d)
    d3.pop(key)
    g = F.compare("x", 1500, s, d3)
    assert not g.ok and g.only_a == 1


def test_pcap_workload_round_trips(ring_dir, tmp_path):
    w = F.synthesize(500, 40, seed=9)
    frames = [p for _ts, _wl, p in w.packet_list(len(w))]
    path = tmp_path / "syn.pcap"
    write_pcap(path, frames, gap_us=10)
    p = F.load_pcap(str(path))
    assert len(p) == 500 and p.linktype == 1
    assert [x for _t, _w, x in p.packet_list(500)] == frames
    assert np.array_equal(p.wirelens, p.caplens)
    assert F.table_flows(F.meter_dpkt(p.packet_list(500))[0]).keys() == \
        F.table_flows(F.meter_dpkt(w.packet_list(500))[0]).keys()


def test_c_flow_table_agrees_with_dpkt(ring_dir):
    w = F.synthesize(5000, 250, seed=11)
    cfg = F.Settings(ndesc=1024, arena_bytes=4 << 20)
    out = F.meter_ring(w, 5000, cfg)
    assert out["packets"] == 5000 and out["cpu_ns"] > 0 and out["batches"] >= 5  # several ring chunks
    c, exotic, dup = F.record_flows(out["records"])
    ref = F.table_flows(F.meter_dpkt(w.packet_list(5000))[0])
    g = F.compare("C vs dpkt", 5000, c, ref, exotic, dup)
    assert g.ok, g.examples
    assert not exotic and dup == 0 and len(c) == 250
    arrays = F.record_flows(F.meter_arrays(w, 5000)["records"])[0]
    assert arrays == c                                 # ring and array paths meter the same


def test_cli_end_to_end_with_json(ring_dir, tmp_path):
    out = tmp_path / "fm.json"
    res = CliRunner().invoke(bench, ["flowmeter", *TINY, "--json", str(out), "-q"])
    assert res.exit_code == 0, res.output
    for text in ("flow metering", "Mpps per", "x dpkt", "x scapy", "flowmeter-arrays", "targets",
                 "agree: yes", "80x dpkt", "5 Mpps per core"):
        assert text in res.output
    assert "PASS" in res.output or "MISS" in res.output
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data) >= {"settings", "machine", "workload", "rows", "targets", "agreement", "runs", "ok"}
    assert data["ok"] is True and data["agreement_ok"] is True
    assert [a["ok"] for a in data["agreement"]] == [True, True]
    assert data["workload"]["packets"] == 6000 and data["workload"]["flows"] == 300
    assert {r["method"] for r in data["rows"]} == set(F.METHODS)
    for r in data["runs"]:
        assert r["error"] is None and r["cpu_ns"] > 0 and r["mpps_per_cpu_s"] > 0
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["dpkt"]["packets"] == 3000 and rows["scapy"]["packets"] == 400
    assert rows["flowmeter"]["vs_dpkt"] > 0 and rows["flowmeter"]["vs_scapy"] > 0
    assert len(data["targets"]) == 2 and all(t["ok"] in (True, False) for t in data["targets"])


def test_cli_subset_of_methods(ring_dir):
    res = CliRunner().invoke(bench, ["flowmeter", *TINY, "--methods", "flowmeter,dpkt", "--sizes", "imix", "-q"])
    assert res.exit_code == 0, res.output
    assert "agree: yes" in res.output and "scapy vs dpkt" not in res.output


def test_cli_rejects_bad_options():
    res = CliRunner().invoke(bench, ["flowmeter", "--sizes", "64,abc"])
    assert res.exit_code != 0 and "size mix" in res.output
    res = CliRunner().invoke(bench, ["flowmeter", "--methods", "flowmeter,nope"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_registered_under_the_capfan_command():
    from capfan.cli import main

    res = CliRunner().invoke(main, ["bench", "flowmeter", "--help"])
    assert res.exit_code == 0, res.output
    for opt in ("--packets", "--flows", "--sizes", "--pcap", "--repeat", "--json", "--quiet"):
        assert opt in res.output

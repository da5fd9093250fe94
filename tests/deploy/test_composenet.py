"""The compose cluster run for real without a container engine (tests/deploy/composenet.py): one
network namespace per docker-compose.yml service on one bridge, each service's own command with
the compose file's configs and volumes, ClickHouse as Debian's clickhouse-server.

keys runs once, the collector starts when ClickHouse is healthy and the keys exist, both sensors
replay the bundled capture over CURVE, and the flows the collector's API returns (asked inside
its namespace) are tshark's flow table of that capture: every flow once, seen by both sensors.
"""
import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest

from capfan import records as rec
from capfan import samplepcap
from tests.analyzers import oracle
from tests.conftest import wait_for
from tests.deploy import composefile
from tests.deploy.composenet import ComposeNet

pytestmark = [pytest.mark.privileged, pytest.mark.slow]
SENSORS = ("sensor-a", "sensor-b")
ICMP = (1, 58)


@pytest.fixture
def cluster(tmp_path):
    """The compose topology brought up (namespaces, bridge, hosts files), torn down afterwards:
    processes, namespaces, /etc/netns entries and the mount points it made on the host."""
    if os.geteuid() != 0:
        pytest.fail("the compose replica needs root (CI runs as root): network and mount namespaces")
    net = ComposeNet(composefile.load(), tmp_path).up()
    try:
        yield net
    finally:
        for note in net.notes:                 # where this host made the replica depart from the file
            warnings.warn(note, stacklevel=1)
        made = list(net._made_on_host)
        namespaces = list(net._namespaces)
        net.down()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [ns for ns in namespaces if ns in listed]
        assert not [p for p in made if os.path.lexists(p)], made
        assert not [ns for ns in namespaces if os.path.exists(f"/etc/netns/{ns}")]


def api(net: ComposeNet, path: str):
    """GET an API path from inside the collector's namespaces (where compose publishes nothing)."""
    code = ("import sys, urllib.request; "
            "print(urllib.request.urlopen('http://127.0.0.1:8477' + sys.argv[1], timeout=30).read().decode())")
    r = net.exec("collector", ["python3", "-c", code, path])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def collector_table(rows: list[dict], frag_pairs: set) -> dict:
    """The API's merged flows on the oracle's key space (split records of one key summed)."""
    out = {}
    for r in rows:
        key, fwd = oracle._canon(str(r["vlan"]) if r["vlan"] else "", r["proto"], r["src"], r["sport"],
                                 r["dst"], r["dport"])
        c = [r["packets"], r["bytes"], r["reverse_packets"], r["reverse_bytes"]]
        c = c if fwd else c[2:] + c[:2]
        f = out.setdefault(key, {"c": [0, 0, 0, 0], "first": r["start_ns"], "last": r["end_ns"], "flags": 0})
        f["c"] = [a + b for a, b in zip(f["c"], c)]
        f["first"], f["last"] = min(f["first"], r["start_ns"]), max(f["last"], r["end_ns"])
        # the API does not return flow flags: the generator says which pair carries the fragment
        if frozenset((r["src"], r["dst"])) in frag_pairs:
            f["flags"] |= rec.FLOW_FRAGMENTS
    return out


def test_compose_cluster_on_namespaces_stores_the_oracle_flows_once_per_flow(cluster):
    net = cluster
    order = net.run(timeout=180)
    assert order.index("clickhouse") < order.index("collector") and order.index("keys") < order.index("collector")
    # the hosts file of each namespace names every service (ip netns exec binds it over /etc/hosts)
    r = net.exec("collector", ["getent", "hosts", "clickhouse", "sensor-a", "keys"])
    assert r.returncode == 0 and sorted(r.stdout.split()) == sorted(
        [net.ip["clickhouse"], "clickhouse", net.ip["sensor-a"], "sensor-a", net.ip["keys"], "keys"]), r.stdout
    # keys ran once and made a pair per role, in the shared volume
    assert net.procs["keys"].proc.returncode == 0
    keydir = Path(net.volumes["keys"])
    assert sorted(os.listdir(keydir)) == sorted(f"{n}{e}" for n in ("collector", *SENSORS, "sensor-live")
                                                for e in (".key", ".key_secret"))
    for s in SENSORS:
        net.wait(s, "service_completed_successfully", timeout=180)
        log = net.procs[s].log()
        assert "every replay ended and the analyzers drained" in log and "not yet acknowledged" not in log, log
    assert net.healthy("collector") and net.healthy("clickhouse")
    banner = net.procs["collector"].log()
    assert "(curve)" in banner and "authorized agent keys: 3" in banner, banner

    pcap = samplepcap.path()
    gen = samplepcap.flows()
    want = oracle.oracle_table(oracle.run_oracle(pcap))
    frag_pairs = {frozenset((f.src, f.dst)) for f in gen if f.fragmented}
    icmp_pairs = {frozenset((f.src, f.dst)) for f in gen if f.proto in ICMP}
    ip_packets = sum(sum(f.packets) for f in gen)
    # the loader stores what the intake journaled; wait until every packet is there
    totals = wait_for(lambda: (t := api(net, "/api/totals"))["packets"] >= ip_packets and t, 60, 0.5)
    assert totals and totals["packets"] == ip_packets, (totals, api(net, "/api/health"))  # not twice
    rows = api(net, "/api/flows?limit=100000")["flows"]
    assert all(r["observers"] == list(SENSORS) for r in rows), [r for r in rows if r["observers"] != list(SENSORS)][:3]
    got = collector_table(rows, frag_pairs)
    result = oracle.compare(got, want, {}, None, mode="frame")
    assert not result["unexplained"], result["unexplained"][:3]
    assert result["rules"] == {"icmp": len(icmp_pairs), "fragment": len(frag_pairs)}
    other = [k for k in want if frozenset((k[2], k[4])) not in icmp_pairs | frag_pairs]
    assert result["matched"] == len(other)
    # both sensors' batches went to ClickHouse, not to a local file
    health = api(net, "/api/health")
    assert {h["host"] for h in health["store"]} >= set(SENSORS)
    assert health["intake"]["denied_unauthenticated"] == 0
    assert net.clickhouse.query("SELECT count() FROM capfan.obs")[0][0] not in (0, "0")
    assert net.procs["collector"].stop() == 0, net.procs["collector"].log()

"""Offload state read with SIOCETHTOOL (capfan.sources.offload) against `ethtool -k`, on a veth
in a namespace whose offloads the test toggles with `ethtool -K`."""
import json
import os
import re
import shutil
import sys

import pytest

from capfan import errors
from capfan.sources import offload
from tests.netns import veth  # noqa: F401 - fixture

CAPFAN = [os.environ.get("CAPFAN_BIN", "capfan")]
# offload_state() key -> `ethtool -k` row
ETHTOOL_ROWS = {"gro": "generic-receive-offload", "lro": "large-receive-offload", "tso": "tcp-segmentation-offload",
                "gso": "generic-segmentation-offload", "sg": "scatter-gather", "rx_checksum": "rx-checksumming",
                "tx_checksum": "tx-checksumming", "rxvlan": "rx-vlan-offload", "txvlan": "tx-vlan-offload",
                "gro_hw": "rx-gro-hw", "gro_list": "rx-gro-list"}
PROBE = ("import json, sys; from capfan.sources import offload as o; "
         "print(json.dumps({'state': o.offload_state(sys.argv[1]), 'warnings': o.offload_warnings(sys.argv[1]), "
         "'hwts': o.hw_timestamping(sys.argv[1]), 'features': o.features(sys.argv[1])}))")


def probe(v, ifname):
    """offload_* evaluated inside the capture namespace."""
    r = v.run(v.cap_ns, sys.executable, "-c", PROBE, ifname)
    return json.loads(r.stdout)


def ethtool_k(v, ifname):
    """`ethtool -k` rows as {name: bool}."""
    out = v.run(v.cap_ns, "ethtool", "-k", ifname).stdout
    return {m.group(1): m.group(2) == "on" for m in re.finditer(r"^\s*([\w-]+): (on|off)", out, re.M)}


def ethtool_set(v, ifname, *pairs):
    v.run(v.cap_ns, "ethtool", "-K", ifname, *pairs)


@pytest.fixture
def ns(veth):  # noqa: F811
    if shutil.which("ethtool") is None:
        pytest.fail("ethtool is needed by the offload tests (apt-get install ethtool)")
    return veth


def assert_matches_ethtool(v):
    got = probe(v, v.cap_if)
    rows = ethtool_k(v, v.cap_if)
    for key, row in ETHTOOL_ROWS.items():
        assert got["state"][key] == rows[row], f"{key}: ioctl says {got['state'][key]}, ethtool -k says {rows[row]}"
    assert {k: b for k, b in got["features"].items() if k in rows} == {k: rows[k] for k in got["features"] if k in rows}
    return got


@pytest.mark.privileged
def test_state_follows_ethtool(ns):
    """Every reported offload equals `ethtool -k`, before and after toggling GRO, TSO, GSO, GRO fraglist."""
    v = ns
    first = assert_matches_ethtool(v)
    flip = {"gro": "gro", "tso": "tso", "gso": "gso", "gro_list": "rx-gro-list"}
    ethtool_set(v, v.cap_if, *[x for k, word in flip.items() for x in (word, "off" if first["state"][k] else "on")])
    second = assert_matches_ethtool(v)
    assert all(second["state"][k] != first["state"][k] for k in flip)


@pytest.mark.privileged
def test_warnings_name_the_fix(ns):
    """GRO on: one warning with the ethtool command; GRO and fraglist off: no warning."""
    v = ns
    ethtool_set(v, v.cap_if, "gro", "on", "rx-gro-list", "off")
    w = probe(v, v.cap_if)["warnings"]
    assert w == [f"GRO is on for {v.cap_if}: captured frames are merged by the kernel and won't match the wire; "
                 f"turn it off: ethtool -K {v.cap_if} gro off"]
    ethtool_set(v, v.cap_if, "rx-gro-list", "on")
    assert any(f"ethtool -K {v.cap_if} rx-gro-list off" in x for x in probe(v, v.cap_if)["warnings"])
    ethtool_set(v, v.cap_if, "gro", "off", "rx-gro-list", "off")
    assert probe(v, v.cap_if)["warnings"] == []


@pytest.mark.privileged
def test_veth_has_no_hardware_timestamps(ns):
    """veth reports software timestamping only."""
    assert probe(ns, ns.cap_if)["hwts"] is False


@pytest.mark.privileged
def test_capture_prints_offload_warning(ns, ring_dir):
    """`capfan capture` warns about GRO before capturing."""
    v = ns
    ethtool_set(v, v.cap_if, "gro", "on")
    r = v.run(v.cap_ns, *CAPFAN, "capture", v.cap_if, "--ring", "w", "--duration", "0.2", "-q", check=False)
    assert r.returncode == 0, r.stderr
    assert f"capfan: warning: GRO is on for {v.cap_if}" in r.stderr
    ethtool_set(v, v.cap_if, "gro", "off")
    r = v.run(v.cap_ns, *CAPFAN, "capture", v.cap_if, "--ring", "w", "--duration", "0.2", "-q", check=False)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_unknown_interface():
    """A missing interface is a SourceError naming it."""
    with pytest.raises(errors.SourceError, match="no network interface named 'nope0'"):
        offload.offload_state("nope0")
    with pytest.raises(errors.SourceError, match="bad interface name"):
        offload.offload_warnings("x" * 20)


def test_loopback_state_is_complete():
    """lo answers every query: all keys present, booleans where the driver reports them."""
    st = offload.offload_state("lo")
    assert set(st) == set(ETHTOOL_ROWS)
    assert isinstance(st["gro"], bool) and isinstance(st["tso"], bool)
    assert "rx-gro" in offload.features("lo")

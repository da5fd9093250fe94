"""capfan's own sample capture (capfan/samplepcap.py, shipped as capfan/samples/sample.pcap).

The shipped file must be exactly what the generator builds; tshark must find every checksum
good and nothing malformed; tshark's flow table (../shared/tools/oracle_flows.py) must hold the
flows the generator meant; and the flow meter, fed the capture through a ring, must agree with
both, packet for packet and byte for byte in each direction. Expected values come from the
generator's own flow list (samplepcap.flows()), not from numbers written here.
"""
import ipaddress
import itertools
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from capfan import samplepcap
from tests.analyzers import oracle

SHIPPED = Path(samplepcap.path())
ICMP = (1, 58)
# what the two flow tables may legitimately disagree on here (README "Flow meter vs tshark"):
# ICMP keys (capfan keys echo by type, tshark has ports 0) and the non-first fragment (capfan
# counts it in its datagram's flow, tshark in a port-0 flow)
EXPECTED_RULES = {"icmp", "fragment"}


@pytest.fixture(scope="module")
def flows():
    return samplepcap.flows()


@pytest.fixture(scope="module")
def tshark():
    """tshark's path; missing, the test fails (CI installs it, as for the recorder tests)."""
    path = shutil.which("tshark")
    if not path:
        pytest.fail("tshark not found: install tshark to check the sample capture")
    return path


def _records(data: bytes):
    """(header fields, [(ts_us, caplen, wirelen, frame)]) of a little-endian µs classic pcap."""
    head = struct.unpack_from("<IHHiIII", data, 0)
    out, off = [], 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        out.append((sec * 1_000_000 + usec, incl, orig, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    assert off == len(data)
    return head, out


def _ip(text):
    return ipaddress.ip_address(text)


# ---------------------------------------------------------------- the file itself

def test_shipped_file_is_what_the_generator_builds():
    """Byte for byte, so the shipped sample cannot drift from samplepcap.py (regenerate it with
    `python -m capfan.samplepcap`)."""
    built = samplepcap.build()
    assert built == samplepcap.build()
    assert SHIPPED.read_bytes() == built, "capfan/samples/sample.pcap is stale: run python -m capfan.samplepcap"


def test_write_and_main(tmp_path):
    out = tmp_path / "s.pcap"
    n = samplepcap.write(str(out))
    assert out.read_bytes() == SHIPPED.read_bytes()
    assert n == len(_records(out.read_bytes())[1])
    cli = tmp_path / "cli" / "s.pcap"
    r = subprocess.run([sys.executable, "-m", "capfan.samplepcap", str(cli)], capture_output=True, text=True,
                       check=False, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr
    assert cli.read_bytes() == SHIPPED.read_bytes()


def test_header_size_duration_and_timestamps(flows):
    data = SHIPPED.read_bytes()
    (magic, major, minor, _zone, _sigfigs, snaplen, linktype), recs = _records(data)
    assert (magic, major, minor, snaplen, linktype) == (0xA1B2C3D4, 2, 4, 65535, 1)
    assert 150_000 <= len(data) <= 400_000
    assert 2000 <= len(recs) <= 5000
    ts = [r[0] for r in recs]
    assert ts[0] == samplepcap.EPOCH * 1_000_000  # 2026-01-15 09:00:00 UTC
    assert all(a < b for a, b in itertools.pairwise(ts)), "timestamps must increase"
    assert 120 <= (ts[-1] - ts[0]) / 1e6 <= 180
    assert all(incl == orig == len(f) and 60 <= incl <= 1518 for _, incl, orig, f in recs)
    assert sum(1 for r in recs if r[1] == 1514) >= 10  # full-size segments
    # every IP packet belongs to one of the generator's flows; the rest is the ARP exchange
    ip_packets = sum(sum(f.packets) for f in flows)
    assert len(recs) - ip_packets == sum(1 for r in recs if r[3][12:14] == b"\x08\x06") == 2


def test_flow_list_has_the_intended_mix(flows):
    """What the sample is meant to contain, from the generator's own list."""
    tcp = [f for f in flows if f.proto == 6]
    assert {f.dport for f in tcp} >= {22, 80, 443}
    assert Counter(f.end for f in tcp)["fin"] > Counter(f.end for f in tcp)["rst"] >= 2
    assert any(f.end == "" for f in tcp)  # long-lived, still open at the end
    assert {f.dport for f in flows if f.proto == 17} >= {53, 123, 514}
    assert {f.proto for f in flows if f.version == 6} == {6, 17, 58}
    assert {f.proto for f in flows if f.version == 4} == {1, 6, 17}
    assert [f.vlan for f in flows if f.vlan] == [100]
    assert sum(f.fragmented for f in flows) == 1
    assert all(f.packets[0] == f.packets[1] for f in flows if f.proto in ICMP)  # request/reply pairs
    # a top-flows table with several talkers, none of them a bulk transfer swamping the rest
    sizes = sorted((sum(f.frame_bytes) for f in flows), reverse=True)
    assert sizes[4] >= 10_000 and sizes[0] <= 150_000


# ---------------------------------------------------------------- tshark

TSHARK_CHECKS = ["-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]


def test_tshark_verifies_every_checksum(tshark, flows):
    fields = ["ip.checksum.status", "tcp.checksum.status", "udp.checksum.status", "icmp.checksum.status",
              "icmpv6.checksum.status"]
    cmd = [tshark, "-n", "-r", str(SHIPPED), *TSHARK_CHECKS, "-T", "fields", "-E", "occurrence=a"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    seen = Counter()
    for row in rows:
        for name, value in zip(fields, row):
            for v in filter(None, value.split(",")):
                seen[(name, v)] += 1
    assert {v for _, v in seen} == {"1"}, seen  # 1 = good; 0 = bad, 2 = unverified
    by_proto = Counter()
    for f in flows:
        by_proto[f.proto] += sum(f.packets)
    v4 = sum(sum(f.packets) for f in flows if f.version == 4)
    assert seen[("ip.checksum.status", "1")] == v4
    assert seen[("tcp.checksum.status", "1")] == by_proto[6]
    assert seen[("icmp.checksum.status", "1")] == by_proto[1]
    assert seen[("icmpv6.checksum.status", "1")] == by_proto[58]
    # a fragmented datagram's UDP checksum is verified once, on the reassembled datagram
    extra_frags = sum(1 for f in flows if f.fragmented)
    assert seen[("udp.checksum.status", "1")] == by_proto[17] - extra_frags


def test_tshark_flags_nothing_but_the_intended_resets(tshark, flows):
    """No error (checksum, malformed) and no warning except one "Connection reset" per RST flow."""
    cmd = [tshark, "-n", "-r", str(SHIPPED), *TSHARK_CHECKS, "-Y", "_ws.expert.severity >= 0x00600000 || _ws.malformed",
           "-T", "fields", "-e", "frame.number", "-e", "tcp.flags.reset", "-e", "_ws.expert.message"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert all(r[1:] == ["1", "Connection reset (RST)"] for r in rows), rows
    assert len(rows) == sum(f.end == "rst" for f in flows)


# ---------------------------------------------------------------- flow tables

def _expected_oracle_keys(flows):
    """The oracle's key for each flow (ICMP: ports 0) and, for a fragmented flow, the port-0 key
    its non-first fragment lands in."""
    keys = {}
    for i, f in enumerate(flows):
        vlan = str(f.vlan) if f.vlan else ""
        sp, dp = (0, 0) if f.proto in ICMP else (f.sport, f.dport)
        keys[oracle._canon(vlan, f.proto, f.src, sp, f.dst, dp)[0]] = i
        if f.fragmented:
            keys[oracle._canon(vlan, f.proto, f.src, 0, f.dst, 0)[0]] = i
    return keys


@pytest.mark.parametrize("mode", ["frame", "ip"])
def test_oracle_finds_the_intended_flows(flows, mode, tshark):
    rows = oracle.run_oracle(SHIPPED, mode)
    keys = _expected_oracle_keys(flows)
    got = oracle.oracle_table(rows)
    assert set(got) == set(keys)
    assert len(keys) == len(flows) + sum(f.fragmented for f in flows)
    assert Counter(k[1] for k in got) == Counter(k[1] for k in keys)  # protocol mix
    sums = defaultdict(lambda: [0, 0, 0, 0])
    first, last = {}, {}
    for key, row in got.items():
        i = keys[key]
        f = flows[i]
        c = row["c"]
        # forward = the initiator is endpoint a (ports 0 for ICMP and the fragment's port-0 key)
        sport = 0 if f.proto in ICMP or key[3] == key[5] == 0 else f.sport
        fwd = (_ip(key[2]), key[3]) == (_ip(f.src), sport)
        c = c if fwd else [c[2], c[3], c[0], c[1]]
        for j in range(4):
            sums[i][j] += c[j]
        first[i] = min(first.get(i, row["first"]), row["first"])
        last[i] = max(last.get(i, row["last"]), row["last"])
    nbytes = "frame_bytes" if mode == "frame" else "ip_bytes"
    for i, f in enumerate(flows):
        b = getattr(f, nbytes)
        assert sums[i] == [f.packets[0], b[0], f.packets[1], b[1]], (f, sums[i])
        assert abs(first[i] - f.first_us / 1e6) < 2e-6 and abs(last[i] - f.last_us / 1e6) < 2e-6, f


@pytest.fixture(scope="module")
def metered():
    """The sample replayed through a ring (private ring directory on tmpfs) into the flow meter:
    (records, meter stats, corrupt-file error)."""
    d = tempfile.mkdtemp(prefix="capfan-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPFAN_RING_DIR", d)
        try:
            yield oracle.meter_pcap(SHIPPED, "sample")
        finally:
            shutil.rmtree(d, ignore_errors=True)


def test_flowmeter_counts_every_packet(metered, flows):
    recs, stats, corrupt = metered
    assert corrupt is None
    assert stats["packets"] == len(_records(SHIPPED.read_bytes())[1])
    assert stats["ip_packets"] == sum(sum(f.packets) for f in flows)
    assert stats["non_ip"] == stats["packets"] - stats["ip_packets"]  # the ARP exchange
    assert not any(stats["bad"].values()), stats["bad"]
    assert stats["fragments"] == 2 and stats["fragment_orphans"] == 0
    assert sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in recs) == stats["ip_packets"]


def test_flowmeter_matches_the_generator(metered, flows):
    """Every flow, per direction: packets, frame bytes, IP bytes, first and last packet."""
    recs, _, _ = metered
    index = {}
    for i, f in enumerate(flows):
        ports = (0, 0) if f.proto in ICMP else (f.sport, f.dport)
        index[(f.vlan, f.proto, frozenset({(_ip(f.src), ports[0]), (_ip(f.dst), ports[1])}))] = i
    got = defaultdict(lambda: {"c": [0] * 6, "first": None, "last": None})
    for r in recs:
        src, dst = _ip(r["sourceIPAddress"]), _ip(r["destinationIPAddress"])
        sp, dp = r["sourceTransportPort"], r["destinationTransportPort"]
        if r["protocolIdentifier"] in ICMP:  # keyed by echo type there; the addresses say which flow
            sp = dp = 0
        i = index[(r["vlanId"], r["protocolIdentifier"], frozenset({(src, sp), (dst, dp)}))]
        f = flows[i]
        c = [r["packetDeltaCount"], r["reversePacketDeltaCount"], r["layer2OctetDeltaCount"],
             r["reverseLayer2OctetDeltaCount"], r["octetDeltaCount"], r["reverseOctetDeltaCount"]]
        if (src, sp) != (_ip(f.src), 0 if f.proto in ICMP else f.sport):
            c = [c[1], c[0], c[3], c[2], c[5], c[4]]
        g = got[i]
        g["c"] = [a + b for a, b in zip(g["c"], c)]
        g["first"] = min(g["first"] or r["flowStartNanoseconds"], r["flowStartNanoseconds"])
        g["last"] = max(g["last"] or 0, r["flowEndNanoseconds"])
    assert set(got) == set(range(len(flows)))
    for i, f in enumerate(flows):
        want = f.packets + f.frame_bytes + f.ip_bytes
        assert got[i]["c"] == want, (f, got[i])
        assert (got[i]["first"], got[i]["last"]) == (f.first_us * 1000, f.last_us * 1000), f


@pytest.mark.parametrize("mode,field", [("frame", "layer2OctetDeltaCount"), ("ip", "octetDeltaCount")])
def test_flowmeter_matches_the_oracle(metered, flows, mode, field, tshark):
    """As the 380-capture oracle test does: every difference explained by a README rule; here
    only ICMP keys and the fragment, each on exactly the address pairs that carry them."""
    recs, stats, corrupt = metered
    ours = oracle.project(recs, field)
    theirs = oracle.oracle_table(oracle.run_oracle(SHIPPED, mode))
    r = oracle.compare(ours, theirs, stats, corrupt, mode=mode)
    assert not r["unexplained"], r["unexplained"][:3]
    icmp_pairs = {frozenset((f.src, f.dst)) for f in flows if f.proto in ICMP}
    frag_pairs = {frozenset((f.src, f.dst)) for f in flows if f.fragmented}
    assert r["rules"] == {"icmp": len(icmp_pairs), "fragment": len(frag_pairs)}
    assert set(r["rules"]) == EXPECTED_RULES
    # everything else matched key for key
    other = [k for k in theirs if frozenset((k[2], k[4])) not in icmp_pairs | frag_pairs]
    assert r["matched"] == len(other)

"""Each rule that explains a difference between the flow meter and the tshark oracle
(tests/analyzers/oracle.py), demonstrated on crafted packets: the oracle really behaves that
way, capfan really behaves the other way, and the comparison names exactly that rule."""
import pytest
from scapy.all import GRE, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrHopByHop, Raw, fragment, wrpcap

from capfan import records as rec
from tests.analyzers import oracle

T0 = 1_700_000_000.0
A, B = "10.1.0.1", "10.2.0.2"


def write(tmp_path, pkts, name="t.pcap"):
    """pcap of `pkts` (their .time set by the caller)."""
    path = tmp_path / name
    wrpcap(str(path), pkts)
    return path


def timed(pkts, start=T0, gap=0.001):
    for i, p in enumerate(pkts):
        p.time = start + i * gap
    return pkts


def both(tmp_path, pkts, **options):
    """(capfan records, meter stats, oracle rows, comparison) for crafted packets."""
    path = write(tmp_path, pkts)
    recs, stats, corrupt = oracle.meter_pcap(path, "rules", **options)
    rows = oracle.run_oracle(path)
    cmp = oracle.compare(oracle.project(recs), oracle.oracle_table(rows), stats, corrupt)
    return recs, stats, rows, cmp


def tcp(src, dst, sport, dport, flags, payload=b""):
    return Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / Raw(payload)


def session(sport=40000):
    a, b = (A, B, sport, 80), (B, A, 80, sport)
    return [tcp(*a, "S"), tcp(*b, "SA"), tcp(*a, "A", b"GET /"), tcp(*b, "A", b"200 OK" * 10),
            tcp(*a, "FA"), tcp(*b, "FA"), tcp(*a, "A")]


def test_rule_split_fin_then_reuse_sums_to_one_oracle_row(tmp_path, ring_dir):
    pkts = timed(session()) + timed(session(), start=T0 + 10)
    recs, _, rows, cmp = both(tmp_path, pkts)
    assert len(rows) == 1 and len(recs) == 2
    assert sorted(r["flowEndReason"] for r in recs) == [3, 3]  # FIN both ways, twice
    assert all(r["packetDeltaCount"] == 4 and r["reversePacketDeltaCount"] == 3 for r in recs)
    assert cmp == {"matched": 1, "rules": {}, "unexplained": []}


def test_rule_split_idle_timeout(tmp_path, ring_dir):
    pkts = timed([Ether() / IP(src=A, dst=B) / UDP(sport=5000, dport=53) / Raw(b"q")] * 1
                 + [Ether() / IP(src=A, dst=B) / UDP(sport=5000, dport=53) / Raw(b"q")], gap=30)
    recs, _, rows, cmp = both(tmp_path, pkts, idle_timeout=5)
    assert len(rows) == 1 and len(recs) == 2 and [r["flowEndReason"] for r in recs][0] == 1
    assert cmp["unexplained"] == [] and cmp["matched"] == 1


def test_rule_icmp_type_code_vs_oracle_quoted_ports(tmp_path, ring_dir):
    req = Ether() / IP(src=A, dst=B) / ICMP(type=8, id=7, seq=1) / Raw(b"ping")
    rep = Ether() / IP(src=B, dst=A) / ICMP(type=0, id=7, seq=1) / Raw(b"ping")
    quoted = IP(src=A, dst=B) / UDP(sport=5353, dport=33434) / Raw(b"x" * 8)
    err = Ether() / IP(src=B, dst=A) / ICMP(type=3, code=3) / Raw(bytes(quoted))
    recs, _, rows, cmp = both(tmp_path, timed([req, rep, err]))
    echo = [r for r in recs if r["destinationTransportPort"] == 8 << 8]
    assert len(echo) == 1 and echo[0]["packetDeltaCount"] == 1 and echo[0]["reversePacketDeltaCount"] == 1
    unreach = [r for r in recs if r["flowFlags"] & rec.FLOW_ICMP_ERROR]
    assert len(unreach) == 1
    # the oracle keys the error by the quoted datagram's ports
    assert {(r["a_port"], r["b_port"]) for r in rows} >= {("5353", "33434")} or \
        {(r["b_port"], r["a_port"]) for r in rows} >= {("5353", "33434")}
    assert cmp["unexplained"] == [] and "icmp" in cmp["rules"]


def test_rule_fragment_later_fragments_join_the_first(tmp_path, ring_dir):
    dgram = IP(src=A, dst=B, id=4242) / UDP(sport=6000, dport=7000) / Raw(b"z" * 2000)
    frags = [Ether() / f for f in fragment(dgram, fragsize=800)]
    assert len(frags) == 3
    recs, stats, rows, cmp = both(tmp_path, timed(frags))
    assert len(recs) == 1 and recs[0]["packetDeltaCount"] == 3
    assert recs[0]["sourceTransportPort"] == 6000 and recs[0]["flowFlags"] & rec.FLOW_FRAGMENTS
    assert stats["fragments"] == 3 and stats["fragment_orphans"] == 0
    ports = sorted((r["a_port"], r["b_port"]) for r in rows)
    assert ("0", "0") in ports  # the oracle's port-0 flow of later fragments
    assert cmp["unexplained"] == [] and cmp["rules"] == {"fragment": 1}


def test_rule_ipv6_ext_upper_layer_protocol(tmp_path, ring_dir):
    p = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2)
    recs, _, rows, cmp = both(tmp_path, timed([p, p.copy()]))
    assert len(recs) == 1 and recs[0]["protocolIdentifier"] == 17 and recs[0]["sourceTransportPort"] == 1
    assert recs[0]["flowFlags"] & rec.FLOW_IPV6_EXT
    assert [r["proto"] for r in rows] == ["0"]
    assert cmp["unexplained"] == [] and cmp["rules"] == {"ipv6_ext": 1}


def test_rule_tunnel_outer_flow_vs_oracle_inner_ports(tmp_path, ring_dir):
    inner = IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=1111, dport=2222) / Raw(b"in")
    p = Ether() / IP(src=A, dst=B) / GRE() / inner
    recs, _, rows, cmp = both(tmp_path, timed([p, p.copy()]))
    assert len(recs) == 1 and recs[0]["protocolIdentifier"] == 47 and recs[0]["flowFlags"] & rec.FLOW_TUNNEL
    assert recs[0]["sourceTransportPort"] == 0
    assert {(r["proto"], r["a_port"], r["b_port"]) for r in rows} == {("47", "1111", "2222")}
    assert cmp["unexplained"] == [] and cmp["rules"] == {"tunnel": 1}


def test_rule_tunnel_decap_keys_inner_flow(tmp_path, ring_dir):
    inner = IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=1111, dport=2222) / Raw(b"in")
    p = Ether() / IP(src=A, dst=B) / GRE() / inner
    recs, _, _, _ = both(tmp_path, timed([p]), decap="gre")
    assert len(recs) == 1 and recs[0]["sourceIPAddress"] == "192.168.0.1" and recs[0]["protocolIdentifier"] == 17
    assert recs[0]["flowFlags"] & rec.FLOW_DECAP


def test_rule_qinq_inner_vlan_projected(tmp_path, ring_dir):
    mk = lambda inner: Ether() / Dot1Q(vlan=100) / Dot1Q(vlan=inner) / IP(src=A, dst=B) / UDP(sport=9, dport=9)
    recs, _, rows, cmp = both(tmp_path, timed([mk(200), mk(201), mk(201)]))
    assert sorted((r["vlanId"], r["dot1qCustomerVlanId"], r["packetDeltaCount"]) for r in recs) == \
        [(100, 200, 1), (100, 201, 2)]
    assert [(r["vlan"], r["pkts_ab"] if r["a_ip"] == A else r["pkts_ba"]) for r in rows] == [("100", "3")]
    assert cmp == {"matched": 1, "rules": {}, "unexplained": []}


def test_rule_not_metered_truncated_transport_header(tmp_path, ring_dir):
    good = Ether() / IP(src=A, dst=B) / UDP(sport=5, dport=6)
    bad = Ether() / IP(src=A, dst=B, proto=6) / Raw(b"\x00")  # one byte of "TCP"
    recs, stats, rows, cmp = both(tmp_path, timed([good, bad]))
    assert stats["bad"]["l4_truncated"] == 1
    assert sum(r["packetDeltaCount"] for r in recs) == 1
    assert len(rows) == 2  # tshark still keys the broken packet
    assert cmp["unexplained"] == [] and cmp["rules"] == {"not_metered": 1}


@pytest.mark.parametrize("surplus", [1])
def test_unexplained_difference_is_reported(surplus):
    """The comparison is not a rubber stamp: a plain count mismatch stays unexplained."""
    key = ("", "17", A, 5, B, 6)
    ours = {key: {"c": [1, 60, 0, 0], "first": T0 * 1e9, "last": T0 * 1e9, "flags": 0}}
    theirs = {key: {"c": [1 + surplus, 60, 0, 0], "first": T0, "last": T0}}
    r = oracle.compare(ours, theirs, {"non_ip": 0, "bad": {}}, None)
    assert len(r["unexplained"]) == 1 and r["matched"] == 0


def test_rule_tunnel_ipv4_inside_ipv6_moves_to_inner_addresses(tmp_path, ring_dir):
    from scapy.layers.vxlan import VXLAN
    inner = Ether() / IP(src="192.168.1.1", dst="192.168.1.2") / TCP(sport=1, dport=2, flags="A")
    p = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=999, dport=4789) / VXLAN(vni=5) / inner
    recs, _, rows, cmp = both(tmp_path, timed([p, p.copy()]))
    assert len(recs) == 1 and recs[0]["sourceIPAddress"] == "2001:db8::1" and recs[0]["flowFlags"] & rec.FLOW_TUNNEL
    assert [(r["a_ip"], r["proto"]) for r in rows] == [("192.168.1.1", "6")]  # inner v4, outer nothing
    assert cmp["unexplained"] == [] and cmp["rules"] == {"tunnel": 2}


def test_rule_tunnel_pim_register(tmp_path, ring_dir):
    data = IP(src="10.0.0.9", dst="239.1.1.1") / UDP(sport=2468, dport=2468) / Raw(b"m" * 20)
    reg = Ether() / IP(src=A, dst=B, proto=103) / Raw(b"\x21\x00\x00\x00" + b"\x00" * 4 + bytes(data))
    recs, _, rows, cmp = both(tmp_path, timed([reg]))
    assert len(recs) == 1 and recs[0]["flowFlags"] & rec.FLOW_TUNNEL and recs[0]["sourceTransportPort"] == 0
    assert [(r["a_port"], r["b_port"]) for r in rows] == [("2468", "2468")]
    assert cmp["unexplained"] == [] and cmp["rules"] == {"tunnel": 1}


def test_rule_other_ports_dccp(tmp_path, ring_dir):
    dccp = b"\x13\x88\x17\x70" + b"\x00" * 12  # ports 5000 -> 6000, rest of a 16-byte header
    p = Ether() / IP(src=A, dst=B, proto=33) / Raw(dccp)
    recs, _, rows, cmp = both(tmp_path, timed([p, p.copy()]))
    assert [(r["sourceTransportPort"], r["destinationTransportPort"]) for r in recs] == [(5000, 6000)]
    assert [(r["a_port"], r["b_port"]) for r in rows] == [("0", "0")]
    assert cmp["unexplained"] == [] and cmp["rules"] == {"other_ports": 1}


def test_rule_ip_len_zero_bytes_from_the_wire(tmp_path, ring_dir):
    p = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2", plen=0) / TCP(sport=1, dport=2, flags="A") / Raw(b"d" * 1000)
    path = write(tmp_path, timed([p]))
    recs, stats, corrupt = oracle.meter_pcap(path, "rules")
    assert recs[0]["octetDeltaCount"] == len(p) - 14 and recs[0]["flowFlags"] & rec.FLOW_LEN_FROM_FRAME
    rows = oracle.run_oracle(path, "ip")
    assert [r["bytes_ab"] for r in rows] == ["40"]  # payload length 0 + the 40-byte header
    cmp = oracle.compare(oracle.project(recs, "octetDeltaCount"), oracle.oracle_table(rows), stats, corrupt, mode="ip")
    assert cmp["unexplained"] == [] and cmp["rules"] == {"ip_len_zero": 1}
    # tshark does not dissect TCP in it (ports 0); frame bytes still agree
    frame_rows = oracle.run_oracle(path)
    assert [(r["a_port"], r["bytes_ab"]) for r in frame_rows] == [("0", str(len(p)))]
    framecmp = oracle.compare(oracle.project(recs), oracle.oracle_table(frame_rows), stats, corrupt)
    assert framecmp["unexplained"] == [] and framecmp["rules"] == {"ip_len_zero": 1}
    # a frame-byte difference is not covered by the rule
    other = oracle.oracle_table(frame_rows)
    next(iter(other.values()))["c"][1] += 1
    assert oracle.compare(oracle.project(recs), other, stats, corrupt)["unexplained"]


def test_rule_invalid_timestamp_detected(tmp_path):
    import struct
    good = bytes(Ether() / IP(src=A, dst=B) / UDP(sport=1, dport=2))
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    recs = [struct.pack("<IIII", 1_700_000_000, usec, len(good), len(good)) + good for usec in (5, 1_500_000)]
    path = tmp_path / "ts.pcap"
    path.write_bytes(hdr + b"".join(recs))
    assert oracle.invalid_timestamps(path) == 1
    path.write_bytes(hdr + recs[0])
    assert oracle.invalid_timestamps(path) == 0

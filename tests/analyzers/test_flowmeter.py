"""Flow meter behaviour: packets crafted with scapy, metered by FlowTable (C flowmeter.c)
and, at the end, through a real ring and the `flowmeter` analyzer."""
import struct
import time

import numpy as np
import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, fragment6)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from capfan import records as R
from capfan import ring as ringlib
from capfan._capfan_core import ffi
from capfan.analyzers import Context, validate_options
from capfan.analyzers.flowmeter import FlowMeter
from capfan.errors import ConfigError
from capfan.flowtable import FlowTable

T0 = 1_600_000_000 * 10**9  # an old capture: 2020
S = 10**9
C, SV = "10.0.0.1", "10.0.0.2"  # client, server


def feed(table, pkts, linktype=1, wirelens=None, port=0):
    """Meter [(seconds after T0, packet)] (scapy packets or bytes); returns packets metered."""
    frames = [raw(p) if not isinstance(p, bytes) else p for _, p in pkts]
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    offs = np.zeros(len(frames), dtype=np.uint64)
    np.cumsum(lens[:-1], out=offs[1:])
    ts = np.array([T0 + int(round(t * S)) for t, _ in pkts], dtype=np.uint64)
    return table.add_packets(b"".join(frames), offs, lens, wirelens=wirelens, ts_ns=ts,
                             linktype=linktype, port=port)


def meter(pkts, linktype=1, wirelens=None, **cfg):
    """Meter pkts in a new table, flush, and return (records, stats)."""
    t = FlowTable(**cfg)
    feed(t, pkts, linktype, wirelens)
    t.flush()
    recs = t.drain()
    st = t.stats()
    t.close()
    return recs, st


def addr(rec, field="sourceIPAddress"):
    return R.address(rec[field].tobytes(), int(rec["ipVersion"]))


def tcp(src, dst, sport, dport, flags, payload=b""):
    return Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / Raw(payload)


def udp(src=C, dst=SV, sport=5000, dport=53, payload=b"x" * 10):
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def handshake_and_close(t0=0.0, cport=40000):
    """A full TCP connection client -> server:80, closed by the client."""
    c2s = lambda fl, p=b"": tcp(C, SV, cport, 80, fl, p)
    s2c = lambda fl, p=b"": tcp(SV, C, 80, cport, fl, p)
    return [(t0 + 0.000, c2s("S")), (t0 + 0.001, s2c("SA")), (t0 + 0.002, c2s("A")),
            (t0 + 0.003, c2s("PA", b"q" * 100)), (t0 + 0.004, s2c("PA", b"r" * 200)),
            (t0 + 0.005, c2s("FA")), (t0 + 0.006, s2c("FA")), (t0 + 0.007, c2s("A"))]


def test_bidirectional_tcp_counts_each_direction():
    recs, st = meter(handshake_and_close(), end_linger=1.0)
    assert len(recs) == 1
    r = recs[0]
    assert (addr(r), addr(r, "destinationIPAddress")) == (C, SV)
    assert (r["sourceTransportPort"], r["destinationTransportPort"]) == (40000, 80)
    assert (r["packetDeltaCount"], r["reversePacketDeltaCount"]) == (5, 3)
    # IP bytes: 40 per bare segment, + payload
    assert (r["octetDeltaCount"], r["reverseOctetDeltaCount"]) == (4 * 40 + 140, 2 * 40 + 240)
    assert (r["layer2OctetDeltaCount"], r["reverseLayer2OctetDeltaCount"]) == (300 + 5 * 14, 320 + 3 * 14)
    assert r["tcpControlBits"] == 0x02 | 0x10 | 0x08 | 0x01  # S A P F
    assert r["reverseTcpControlBits"] == 0x02 | 0x10 | 0x08 | 0x01
    assert r["flowStartNanoseconds"] == T0 and r["flowEndNanoseconds"] == T0 + 7 * 10**6
    assert r["reverseFlowStartNanoseconds"] == T0 + 10**6
    assert r["reverseFlowEndNanoseconds"] == T0 + 6 * 10**6
    assert r["flowEndReason"] == 3  # FIN both ways; the final ACK stayed in the flow (linger)
    assert r["flowFlags"] & R.FLOW_SYN_INITIATOR
    assert (r["protocolIdentifier"], r["ipVersion"]) == (6, 4)
    assert st["ip_packets"] == 8 and st["flows_created"] == 1 and st["ended"]["end"] == 1


def test_syn_names_the_initiator_even_when_the_syn_ack_comes_first():
    pkts = [(0.0, tcp(SV, C, 80, 40000, "SA")), (0.001, tcp(C, SV, 40000, 80, "S")),
            (0.002, tcp(C, SV, 40000, 80, "A"))]
    (r,), _ = meter(pkts)
    assert (addr(r), r["sourceTransportPort"], r["destinationTransportPort"]) == (C, 40000, 80)
    assert (r["packetDeltaCount"], r["reversePacketDeltaCount"]) == (2, 1)
    assert r["tcpControlBits"] == 0x12 and r["reverseTcpControlBits"] == 0x12
    assert r["flowFlags"] & R.FLOW_SYN_INITIATOR
    assert r["reverseFlowStartNanoseconds"] == T0  # the SYN-ACK was the responder's


def test_without_syn_the_first_sender_is_the_initiator():
    (r,), _ = meter([(0, udp(SV, C, 53, 5000)), (1, udp(C, SV, 5000, 53))])
    assert (addr(r), r["sourceTransportPort"]) == (SV, 53)
    assert not r["flowFlags"] & R.FLOW_SYN_INITIATOR


def test_idle_timeout_splits_a_flow():
    recs, st = meter([(0, udp()), (1, udp()), (100, udp())], idle_timeout=60)
    assert [int(x) for x in recs["flowEndReason"]] == [1, 4]
    assert [int(x) for x in recs["packetDeltaCount"]] == [2, 1]
    assert recs["flowEndNanoseconds"][0] == T0 + S
    assert recs["flowStartNanoseconds"][1] == T0 + 100 * S
    assert st["flows_created"] == 2


def test_active_timeout_cuts_long_flows_into_records():
    pkts = [(t, udp()) for t in range(0, 25, 3)]  # 0, 3, ..., 24
    recs, st = meter(pkts, idle_timeout=60, active_timeout=10)
    assert [int(x) for x in recs["flowEndReason"]] == [2, 2, 4]
    assert [int(x) for x in recs["packetDeltaCount"]] == [4, 4, 1]
    assert [int(x) for x in recs["flowStartNanoseconds"]] == [T0, T0 + 12 * S, T0 + 24 * S]
    assert all(addr(r) == C for r in recs)
    assert st["flows_created"] == 1  # one flow entry, three records


def test_new_syn_after_the_end_starts_a_new_flow():
    first = handshake_and_close(0.0)
    again = [(0.5, tcp(C, SV, 40000, 80, "S")), (0.501, tcp(SV, C, 80, 40000, "SA"))]
    recs, st = meter(first + again, end_linger=1.0)
    assert len(recs) == 2
    assert [int(x) for x in recs["packetDeltaCount"]] == [5, 1]
    assert [int(x) for x in recs["flowEndReason"]] == [3, 4]
    assert recs["flowStartNanoseconds"][1] == T0 + S // 2


def test_linger_expires_by_packet_time():
    t = FlowTable(end_linger=1.0)
    feed(t, handshake_and_close(0.0))
    assert len(t.drain()) == 0  # lingering: a final ACK may still come
    feed(t, [(0.5, tcp(C, SV, 40000, 80, "A"))])  # stray ACK within the linger
    feed(t, [(2.0, udp())])  # another flow moves the clock past the linger
    recs = t.drain()
    assert len(recs) == 1 and recs[0]["flowEndReason"] == 3
    assert recs[0]["packetDeltaCount"] == 6


def test_rst_ends_the_flow():
    pkts = [(0, tcp(C, SV, 40001, 443, "S")), (0.001, tcp(SV, C, 443, 40001, "RA"))]
    t = FlowTable(end_linger=0)
    feed(t, pkts)
    recs = t.drain()  # no linger: ended at once
    assert len(recs) == 1
    r = recs[0]
    assert r["flowEndReason"] == 3 and r["reverseTcpControlBits"] == 0x14
    assert (r["packetDeltaCount"], r["reversePacketDeltaCount"]) == (1, 1)


def test_ipv4_fragments_join_their_first_fragment():
    dgram = IP(src=C, dst=SV, id=777) / UDP(sport=6000, dport=7000) / Raw(b"z" * 3000)
    frags = [Ether() / f for f in fragment(dgram, fragsize=1000)]
    assert len(frags) == 4
    recs, st = meter([(i * 0.001, f) for i, f in enumerate(frags)])
    assert len(recs) == 1
    r = recs[0]
    assert (r["sourceTransportPort"], r["destinationTransportPort"]) == (6000, 7000)
    assert r["packetDeltaCount"] == 4
    assert r["octetDeltaCount"] == 3028 + 3 * 20  # one UDP datagram in four IP packets
    assert r["flowFlags"] & R.FLOW_FRAGMENTS and not r["flowFlags"] & R.FLOW_FRAG_ORPHAN
    assert st["fragments"] == 4 and st["fragment_orphans"] == 0


def test_later_fragments_before_the_first_are_orphans():
    dgram = IP(src=C, dst=SV, id=778) / UDP(sport=6000, dport=7000) / Raw(b"z" * 3000)
    frags = [Ether() / f for f in fragment(dgram, fragsize=1000)]
    order = frags[1:] + frags[:1]
    recs, st = meter([(i * 0.001, f) for i, f in enumerate(order)])
    assert st["fragment_orphans"] == 3 and st["fragments"] == 4
    by_port = {int(r["destinationTransportPort"]): r for r in recs}
    assert set(by_port) == {0, 7000}
    assert by_port[0]["packetDeltaCount"] == 3 and by_port[0]["flowFlags"] & R.FLOW_FRAG_ORPHAN
    assert by_port[7000]["packetDeltaCount"] == 1 and by_port[7000]["sourceTransportPort"] == 6000


def test_ipv6_fragment_header():
    dgram = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=99) / \
        UDP(sport=1111, dport=2222) / Raw(b"y" * 2500)
    frags = [Ether() / f for f in fragment6(dgram, 1280)]
    assert len(frags) == 3
    recs, st = meter([(i * 0.001, f) for i, f in enumerate(frags)])
    assert len(recs) == 1
    r = recs[0]
    assert (r["protocolIdentifier"], r["ipVersion"]) == (17, 6)
    assert (r["sourceTransportPort"], r["destinationTransportPort"]) == (1111, 2222)
    assert r["packetDeltaCount"] == 3
    assert r["flowFlags"] & R.FLOW_FRAGMENTS and r["flowFlags"] & R.FLOW_IPV6_EXT
    assert addr(r) == "2001:db8::1"
    assert st["fragments"] == 3 and st["fragment_orphans"] == 0


def test_vlans_are_part_of_the_key():
    p = IP(src=C, dst=SV) / UDP(sport=1, dport=2)
    pkts = [(0, Ether() / Dot1Q(vlan=10) / p), (1, Ether() / Dot1Q(vlan=20) / p), (2, Ether() / Dot1Q(vlan=10) / p)]
    recs, _ = meter(pkts)
    got = sorted((int(r["vlanId"]), int(r["packetDeltaCount"])) for r in recs)
    assert got == [(10, 2), (20, 1)]
    assert all(r["dot1qCustomerVlanId"] == 0 and not r["flowFlags"] & R.FLOW_QINQ for r in recs)


def test_qinq_inner_vlan_in_the_key():
    p = IP(src=C, dst=SV) / UDP(sport=1, dport=2)
    pkts = [(0, Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=5) / p),
            (1, Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=6) / p),
            (2, Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=5) / p)]
    recs, _ = meter(pkts)
    got = sorted((int(r["vlanId"]), int(r["dot1qCustomerVlanId"]), int(r["packetDeltaCount"])) for r in recs)
    assert got == [(100, 5, 2), (100, 6, 1)]
    assert all(r["flowFlags"] & R.FLOW_QINQ for r in recs)
    # 4 bytes more per tag on the wire than in IP
    assert all(r["layer2OctetDeltaCount"] - r["octetDeltaCount"] == (22 * r["packetDeltaCount"]) for r in recs)


def test_ipv6_extension_headers_are_skipped():
    p = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / \
        IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(sport=5353, dport=53) / Raw(b"a" * 20)
    (r,), _ = meter([(0, p)])
    assert (r["protocolIdentifier"], r["sourceTransportPort"], r["destinationTransportPort"]) == (17, 5353, 53)
    assert r["flowFlags"] & R.FLOW_IPV6_EXT
    assert r["octetDeltaCount"] == len(raw(p)) - 14


def test_icmp_echo_request_and_reply_share_a_flow():
    pkts = [(0, Ether() / IP(src=C, dst=SV) / ICMP(type=8, id=1, seq=1)),
            (0.01, Ether() / IP(src=SV, dst=C) / ICMP(type=0, id=1, seq=1)),
            (1, Ether() / IP(src=C, dst=SV) / ICMP(type=8, id=1, seq=2)),
            (1.01, Ether() / IP(src=SV, dst=C) / ICMP(type=0, id=1, seq=2))]
    (r,), _ = meter(pkts)
    assert (addr(r), r["packetDeltaCount"], r["reversePacketDeltaCount"]) == (C, 2, 2)
    assert (r["sourceTransportPort"], r["destinationTransportPort"]) == (0, 0x0800)
    assert not r["flowFlags"] & R.FLOW_ICMP_ERROR


def test_icmpv6_echo_pairs_too():
    a, b = "2001:db8::1", "2001:db8::2"
    pkts = [(0, Ether() / IPv6(src=a, dst=b) / ICMPv6EchoRequest()),
            (0.01, Ether() / IPv6(src=b, dst=a) / ICMPv6EchoReply())]
    (r,), _ = meter(pkts)
    assert (r["packetDeltaCount"], r["reversePacketDeltaCount"], r["destinationTransportPort"]) == (1, 1, 128 << 8)


def test_icmp_errors_are_flagged():
    quoted = IP(src=C, dst="192.0.2.9") / UDP(sport=5000, dport=33434)
    err = Ether() / IP(src="10.0.0.254", dst=C) / ICMP(type=3, code=3) / quoted
    (r,), _ = meter([(0, err)])
    assert r["flowFlags"] & R.FLOW_ICMP_ERROR
    assert r["destinationTransportPort"] == 0x0303 and addr(r) == "10.0.0.254"


INNER = IP(src="192.168.1.1", dst="192.168.1.2") / TCP(sport=1234, dport=22, flags="S")


def test_gre_is_metered_as_the_outer_flow_by_default():
    p = Ether() / IP(src="203.0.113.1", dst="203.0.113.2") / GRE() / INNER
    (r,), _ = meter([(0, p)])
    assert (addr(r), r["protocolIdentifier"]) == ("203.0.113.1", 47)
    assert r["flowFlags"] & R.FLOW_TUNNEL and not r["flowFlags"] & R.FLOW_DECAP
    assert r["octetDeltaCount"] == 20 + 4 + 40


@pytest.mark.parametrize("outer", [IP(src="203.0.113.1", dst="203.0.113.2") / INNER,
                                   IP(src="203.0.113.1", dst="203.0.113.2") / IPv6() / UDP()])
def test_ip_in_ip_is_flagged_tunnel(outer):
    (r,), _ = meter([(0, Ether() / outer)], decap="gre,vxlan,mpls")
    assert r["protocolIdentifier"] == outer.proto and r["flowFlags"] & R.FLOW_TUNNEL
    assert addr(r) == "203.0.113.1"


def test_erspan_type3_decap_and_malformed_inner_is_bad_tunnel():
    inner = raw(Ether() / INNER)
    gre = struct.pack("!HH", 0, 0x22EB)
    erspan3 = struct.pack("!III", 2 << 28, 0, 0)  # no platform subheader (O bit clear)
    p = raw(Ether() / IP(src="203.0.113.1", dst="203.0.113.2", proto=47) / Raw(gre + erspan3 + inner))
    (r,), _ = meter([(0, p)], decap="gre")
    assert (addr(r), r["destinationTransportPort"]) == ("192.168.1.1", 22)
    cut = p[:len(p) - len(inner) + 20]  # inner frame stops inside its IP header
    recs, st = meter([(0, cut)], decap="gre")
    assert len(recs) == 0 and st["bad"]["tunnel"] == 1
    (r,), st = meter([(0, cut)])  # without decap it is just the outer GRE flow
    assert r["protocolIdentifier"] == 47


def test_gre_decap_meters_the_inner_flow():
    p = Ether() / IP(src="203.0.113.1", dst="203.0.113.2") / GRE() / INNER
    (r,), _ = meter([(0, p)], decap=("gre",))
    assert (addr(r), r["protocolIdentifier"], r["destinationTransportPort"]) == ("192.168.1.1", 6, 22)
    assert r["flowFlags"] & R.FLOW_DECAP and not r["flowFlags"] & R.FLOW_TUNNEL
    assert r["octetDeltaCount"] == 40 and r["layer2OctetDeltaCount"] == len(raw(p))


def test_erspan_type2_decap():
    inner = raw(Ether() / INNER)
    gre = struct.pack("!HHI", 0x1000, 0x88BE, 7)  # sequence bit, ERSPAN II
    erspan = struct.pack("!II", (1 << 28) | (0 << 16) | 5, 0)
    p = raw(Ether() / IP(src="203.0.113.1", dst="203.0.113.2", proto=47) / Raw(gre + erspan + inner))
    (r,), _ = meter([(0, p)], decap="gre")
    assert (addr(r), r["protocolIdentifier"], r["sourceTransportPort"]) == ("192.168.1.1", 6, 1234)


def test_vxlan_outer_by_default_inner_with_decap():
    p = Ether() / IP(src="198.51.100.1", dst="198.51.100.2") / UDP(sport=55555, dport=4789) / \
        VXLAN(vni=42) / Ether() / INNER
    (r,), _ = meter([(0, p)])
    assert (r["protocolIdentifier"], r["destinationTransportPort"]) == (17, 4789)
    assert r["flowFlags"] & R.FLOW_TUNNEL
    (r,), _ = meter([(0, p)], decap="vxlan")
    assert (addr(r), r["protocolIdentifier"], r["destinationTransportPort"]) == ("192.168.1.1", 6, 22)
    assert r["flowFlags"] & R.FLOW_DECAP


def test_geneve_decap():
    geneve = struct.pack("!BBHI", 0, 0, 0x6558, 42 << 8)
    p = Ether() / IP(src="198.51.100.1", dst="198.51.100.2") / UDP(sport=1, dport=6081) / \
        Raw(geneve + raw(Ether() / INNER))
    (r,), _ = meter([(0, p)], decap="vxlan")
    assert (addr(r), r["protocolIdentifier"]) == ("192.168.1.1", 6)


def test_mpls_needs_its_decap_switch():
    p = Ether(type=0x8847) / MPLS(label=100, s=0) / MPLS(label=200, s=1) / \
        IP(src=C, dst=SV) / UDP(sport=9, dport=9)
    recs, st = meter([(0, p)])
    assert len(recs) == 0 and st["non_ip"] == 1
    (r,), st = meter([(0, p)], decap="mpls")
    assert st["ip_packets"] == 1
    assert (addr(r), r["destinationTransportPort"]) == (C, 9)
    assert r["flowFlags"] & R.FLOW_MPLS
    assert r["layer2OctetDeltaCount"] - r["octetDeltaCount"] == 14 + 8


def test_snaplen_truncated_packets_count_wire_bytes():
    p = raw(udp(payload=b"p" * 1472))  # 1514-byte frame
    recs, st = meter([(0, p[:64]), (1, p[:64])], wirelens=[1514, 1514])
    (r,) = recs
    assert r["layer2OctetDeltaCount"] == 2 * 1514
    assert r["octetDeltaCount"] == 2 * 1500
    assert not r["flowFlags"] & R.FLOW_MALFORMED


def test_ip_length_beyond_the_frame_is_flagged_malformed():
    p = bytearray(raw(udp()))
    p[16:18] = (1000).to_bytes(2, "big")  # IPv4 total length lies
    (r,), _ = meter([(0, bytes(p))])
    assert r["flowFlags"] & R.FLOW_MALFORMED and r["octetDeltaCount"] == 1000


def test_zero_ip_length_uses_the_wire_length():
    v4 = bytearray(raw(tcp(C, SV, 1, 2, "A", b"d" * 100)))
    v4[16:18] = b"\0\0"  # GSO/TSO frame: total length 0
    v6 = bytearray(raw(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=3, dport=4, flags="A")))
    v6[18:20] = b"\0\0"  # big TCP: payload length 0
    recs, st = meter([(0, bytes(v4[:80])), (0, bytes(v6[:80]))], wirelens=[64014, 100014])
    by_v = {int(r["ipVersion"]): r for r in recs}
    assert by_v[4]["octetDeltaCount"] == 64000 and by_v[4]["destinationTransportPort"] == 2
    assert by_v[6]["octetDeltaCount"] == 100000 and by_v[6]["destinationTransportPort"] == 4
    assert st["ip_packets"] == 2


def test_full_table_expires_the_least_recent_flow_and_loses_nothing():
    pkts = []
    for rnd in range(3):
        for f in range(10):
            pkts.append((rnd * 10 + f * 0.1, udp(sport=1000 + f)))
    t = FlowTable(max_flows=4)
    metered = feed(t, pkts)
    t.flush()
    recs = t.drain()
    st = t.stats()
    assert metered == 30 == st["ip_packets"]
    assert int(recs["packetDeltaCount"].sum() + recs["reversePacketDeltaCount"].sum()) == 30
    assert st["ended"]["resources"] == 26  # every new flow but the first four evicts one
    assert st["ended"]["forced"] == 4
    assert st["flows_active_max"] == 4 and len(recs) == 30


def test_tick_ends_idle_flows_on_a_quiet_link_but_not_a_replay():
    t = FlowTable(idle_timeout=60)
    feed(t, [(0, udp())])  # packet time in 2020, wall time now
    t.tick(time.time_ns())  # the packet just arrived: 2020 + ~0 s
    t.tick()
    assert len(t.drain()) == 0 and t.stats()["flows_active"] == 1
    t.tick(time.time_ns() + 30 * S)
    assert len(t.drain()) == 0
    t.tick(time.time_ns() + 61 * S)  # a minute of silence since the packet came
    (r,) = t.drain()
    assert r["flowEndReason"] == 1
    assert t.stats()["now_ns"] < T0 + 70 * S  # the clock stays in packet time


def test_tick_before_any_packet_does_not_jump_to_today():
    t = FlowTable(idle_timeout=60)
    t.tick(time.time_ns())
    feed(t, [(0, udp()), (30, udp())])
    assert len(t.drain()) == 0
    t.flush()
    assert int(t.drain()["packetDeltaCount"][0]) == 2


def test_non_ip_and_bad_packets_are_counted():
    arp = bytes.fromhex("ffffffffffff0011223344550806") + b"\0" * 28
    short_ip = raw(udp())[:14 + 12]
    recs, st = meter([(0, arp), (0, short_ip), (0, b"\x01\x02")])
    assert len(recs) == 0
    assert st["non_ip"] == 1 and st["bad"]["ip_truncated"] == 1 and st["bad"]["l2_truncated"] == 1
    _, st = meter([(0, raw(udp()))], linktype=147)
    assert st["bad"]["linktype"] == 1


def test_record_dtype_matches_the_c_struct():
    assert R.FLOW_DTYPE.itemsize == ffi.sizeof("capfan_flow_record")
    c_names = ["start_ns", "end_ns", "rev_start_ns", "rev_end_ns", "packets", "rev_packets", "octets",
               "rev_octets", "l2_octets", "rev_l2_octets", "src", "dst", "hash", "sport", "dport", "vlan",
               "inner_vlan", "port", "flags", "ip_version", "proto", "tcp_flags", "rev_tcp_flags",
               "end_reason", "_pad"]
    for (name, _, _), c in zip(R.FIELDS, c_names, strict=True):
        assert R.FLOW_DTYPE.fields[name][1] == ffi.offsetof("capfan_flow_record", c), name


def test_record_hash_is_the_ring_hash():
    from capfan._capfan_core import lib
    p = raw(tcp(C, SV, 40000, 80, "S"))
    flags = ffi.new("uint16_t *")
    h = lib.capfan_flow_hash(p, len(p), 1, flags)
    (r,), _ = meter([(0, p)])
    assert r["flowHash"] == h != 0


@pytest.mark.parametrize("kw,key", [
    ({"idle_timeout": -1}, "idle_timeout"), ({"active_timeout": -0.5}, "active_timeout"),
    ({"end_linger": "x"}, "end_linger"), ({"max_flows": 0}, "max_flows"),
    ({"max_fragments": -3}, "max_fragments"), ({"decap": ("gre", "ipsec")}, "decap"),
    ({"fragment_timeout": 0}, "fragment_timeout"), ({"decap": "vxlan,nvgre"}, "decap"),
])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(ConfigError) as e:
        FlowTable(**kw)
    assert e.value.key == key


def test_analyzer_options_parse_decap():
    cfg = validate_options("flowmeter", FlowMeter.options, {"decap": "gre, vxlan", "idle_timeout": "5"})
    assert cfg["decap"] == ("gre", "vxlan") and cfg["idle_timeout"] == 5.0
    assert validate_options("flowmeter", FlowMeter.options, {"decap": "none"})["decap"] == ()
    with pytest.raises(ConfigError) as e:
        validate_options("flowmeter", FlowMeter.options, {"decap": "bogus"})
    assert e.value.key == "decap"


def test_flowmeter_analyzer_through_a_ring(ring_dir):
    ringlib.create("fm", ndesc=1 << 10, arena_bytes=4 << 20)
    consumer = ringlib.Consumer("fm", "flowmeter", policy=FlowMeter.policy)
    producer = ringlib.Producer("fm")
    got = []
    cfg = validate_options("flowmeter", FlowMeter.options, {"idle_timeout": "10", "end_linger": "0.5"})
    ctx = Context("flowmeter", cfg, "fm", consumer, emit=lambda stream, recs: got.append((stream, recs)))
    fm = FlowMeter()
    fm.start(ctx)
    conn = handshake_and_close(0.0)
    later = [(20.0, udp()), (20.5, udp(SV, C, 53, 5000))]  # moves the clock: the TCP flow is over
    frames = [raw(p) for _, p in conn + later]
    ts = [T0 + int(t * S) for t, _ in conn + later]
    assert producer.publish(frames, ts_ns=ts) == len(frames)
    seen = 0
    while seen < len(frames):
        b = consumer.next(timeout=5)
        assert b is not None
        seen += len(b)
        fm.on_batch(b)
    assert [s for s, _ in got] == ["flows"]
    (tcp_rec,) = got[0][1]
    assert tcp_rec["flowEndReason"] == 3 and tcp_rec["packetDeltaCount"] == 5
    fm.on_tick(time.time_ns())
    assert len(got) == 1  # the UDP flow is not idle by wall time either
    fm.stop()
    (udp_rec,) = got[1][1]
    assert udp_rec["flowEndReason"] == 4 and udp_rec["reversePacketDeltaCount"] == 1
    st = fm.stats()
    assert st["packets"] == st["ip_packets"] == len(frames)
    assert ctx.emitted == {"flows": 2}
    consumer.close()
    producer.close()

"""The example analyzer package examples/dns_counter: both analyzers replay sample captures
through a ring and must count the same queries per name as each other and as tshark.

Cases compared with tshark: Ethernet (untagged and 802.1Q) and raw IPv4/IPv6 link types,
IPv4 and IPv6, DNS over UDP and over TCP (one message per segment), several questions per
query, compressed names, responses and non-DNS traffic on port 53 (not counted), a non-default
port (-o ports=53,8053). Not handled by either analyzer, so not compared: IP fragments, IPv6
extension headers, QinQ, TCP messages split over segments, packets whose IP length fields lie.
"""
import collections
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from capfan import ring
from capfan.analyzers import Context
from capfan.errors import ConfigError
from capfan.sources.pcap import PcapSource
from tests.conftest import PCAPS
from tests.pcapfile import write_pcap

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dns_counter"

# sample captures with DNS queries, and the ports option each needs
SAMPLES = {
    "dns_udp.pcap": "53", "dns_udp_2.pcap": "53", "dns_tcp.pcap": "53", "dns-uri.pcap": "53",
    "edns-opts.pcap": "53", "dns_udp_8053.pcap": "53,8053", "dns_tcp_8053.pcap": "53,8053",
    "mptcp-aa-v1.pcap": "53", "LINKTYPE_RAW_ipv4.pcap": "53", "LINKTYPE_RAW_ipv6.pcap": "53",
    "LINKTYPE_IPV6.pcap": "53", "time_2038.pcap": "53",
}


def _classes():
    """The two analyzer classes, from the installed package or else the example's source dir."""
    try:
        mod = importlib.import_module("capfan_dns_counter")
    except ImportError:
        sys.path.insert(0, str(EXAMPLE / "src"))
        mod = importlib.import_module("capfan_dns_counter")
    return mod.DnsDpkt, mod.DnsBatch


def _tshark_counts(path, ports: str) -> collections.Counter:
    """Query names per tshark (queries only), decoding DNS on every port in `ports`."""
    args = ["tshark", "-n", "-r", str(path), "-Y", "dns.flags.response == 0", "-T", "fields",
            "-e", "dns.qry.name", "-E", "occurrence=a", "-E", "aggregator=|"]
    for p in ports.split(","):
        args += ["-d", f"udp.port=={p},dns", "-d", f"tcp.port=={p},dns"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return collections.Counter(n for line in out.splitlines() for n in line.split("|") if line)


def _replay(path, ports: str, interval: float = 60.0):
    """Replay a capture through a ring into both analyzers; their emitted counts per name."""
    name = f"dns-test-{Path(path).stem}"
    ring.create(name, ndesc=1 << 12, arena_bytes=8 << 20)
    emitted = {"dns-dpkt": [], "dns-batch": []}
    analyzers = {}
    try:
        with PcapSource(path) as src, ring.Consumer(name, "dns") as c, ring.Producer(name) as p:
            for an, cls in zip(("dns-dpkt", "dns-batch"), _classes()):
                a = cls()
                a.start(Context(an, {"ports": ports, "interval": interval, "top": 3}, name, consumer=c,
                                emit=lambda stream, recs, an=an: emitted[an].extend(recs)))
                analyzers[an] = a
            while True:
                done = src.run(p, max_packets=1024, duration=5.0)
                while (b := c.next(timeout=0)) is not None:
                    for a in analyzers.values():
                        a.on_batch(b)
                if done < 0:
                    break
            for a in analyzers.values():
                a.stop()
    finally:
        ring.remove(name)
    counts = {}
    for an, recs in emitted.items():
        cnt = collections.Counter()
        for r in recs:
            cnt[r["qname"]] += r["count"]
        counts[an] = cnt
    return counts, analyzers


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_sample_captures_match_tshark(ring_dir, sample):
    path = PCAPS / sample
    assert path.exists(), f"sample capture {path} missing (set CAPFAN_PCAPS to the directory holding tcpdump/)"
    counts, analyzers = _replay(path, SAMPLES[sample])
    want = _tshark_counts(path, SAMPLES[sample])
    assert want, f"{sample} has no DNS query according to tshark"
    assert counts["dns-dpkt"] == want
    assert counts["dns-batch"] == want
    assert analyzers["dns-batch"].totals == analyzers["dns-dpkt"].totals == dict(want)


def _synthetic_frames() -> list[bytes]:
    """Ethernet frames covering what the batch path filters on, built with scapy."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether

    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    v4 = IP(src="10.0.0.1", dst="10.0.0.53")
    v6 = IPv6(src="fd00::1", dst="fd00::53")
    frames = [
        e / v4 / UDP(sport=40000, dport=53) / DNS(rd=1, qd=DNSQR(qname="example.com")),
        e / v4 / UDP(sport=53, dport=40000) / DNS(qr=1, qd=DNSQR(qname="example.com"),
                                                  an=DNSRR(rrname="example.com", rdata="192.0.2.1")),
        e / v6 / UDP(sport=40001, dport=53) / DNS(qd=DNSQR(qname="v6.example.org", qtype="AAAA")),
        e / Dot1Q(vlan=42) / v4 / UDP(sport=40002, dport=53) / DNS(qd=DNSQR(qname="tagged.example.net")),
        e / Dot1Q(vlan=7) / v6 / UDP(sport=40003, dport=53) / DNS(qd=DNSQR(qname="tagged6.example.net")),
        e / IP(src="10.0.0.2", dst="10.0.0.53", options=b"\x01\x01\x01\x00") / UDP(sport=40004, dport=53)
        / DNS(qd=DNSQR(qname="options.example.com")),
        e / v4 / UDP(sport=40005, dport=53) / DNS(qd=[DNSQR(qname="a.multi.example"), DNSQR(qname="b.multi.example")]),
        e / v4 / UDP(sport=40006, dport=80) / b"GET / HTTP/1.0\r\n\r\n",           # not DNS
        e / v4 / UDP(sport=40007, dport=53) / b"\x00\x01",                      # too short for DNS
        e / v4 / UDP(sport=40008, dport=53) / DNS(qd=DNSQR(qname=".")),
    ]
    q = bytes(DNS(id=7, qd=DNSQR(qname="tcp.example.com")))
    frames.append(e / v4 / TCP(sport=40009, dport=53, flags="PA") / (len(q).to_bytes(2, "big") + q))
    frames.append(e / v6 / TCP(sport=40010, dport=53, flags="PA") / (len(q).to_bytes(2, "big") + q))
    # a message whose second question's name is compressed (points into the first)
    hdr = bytes.fromhex("abcd0100000200000000 0000".replace(" ", ""))
    body = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01" + b"\x04mail\xc0\x10\x00\x01\x00\x01"
    frames.append(e / v4 / UDP(sport=40011, dport=53) / (hdr + body))
    frames += [frames[0]] * 3                                                 # repeated names
    return [bytes(f) for f in frames]


def test_synthetic_cases_match_tshark(ring_dir, tmp_path):
    path = tmp_path / "dns-cases.pcap"
    write_pcap(path, _synthetic_frames(), gap_us=1000)
    counts, analyzers = _replay(path, "53")
    want = _tshark_counts(path, "53")
    assert want["example.com"] == 4 and want["mail.example.com"] == 1 and want["tcp.example.com"] == 2
    assert counts["dns-dpkt"] == want
    assert counts["dns-batch"] == want
    st = analyzers["dns-batch"].stats()
    assert st["packets"] == len(_synthetic_frames()) and st["queries"] == 13


def test_periodic_emission_and_records(ring_dir, tmp_path):
    path = tmp_path / "dns-cases.pcap"
    write_pcap(path, _synthetic_frames(), gap_us=1000)
    DnsDpkt, _ = _classes()
    name = "dns-tick"
    ring.create(name, ndesc=1 << 10, arena_bytes=1 << 20)
    out = []
    try:
        with PcapSource(path) as src, ring.Consumer(name, "dns") as c, ring.Producer(name) as p:
            a = DnsDpkt()
            a.start(Context("dns-dpkt", {"interval": "0.5"}, name, consumer=c, emit=lambda s, r: out.append((s, r))))
            src.run(p, max_packets=10_000, duration=5.0)
            a.on_batch(c.next(timeout=1))
            a.on_tick(a.last_emit_ns + 10**8)          # too early: nothing
            assert out == []
            a.on_tick(a.last_emit_ns + 10**9)
            assert len(out) == 1 and out[0][0] == "dns"
            recs = out[0][1]
            assert recs[0]["qname"] == "example.com" and recs[0]["count"] == 4
            assert set(recs[0]) == {"qname", "count", "first_ts_ns", "last_ts_ns"}
            assert recs[0]["first_ts_ns"] < recs[0]["last_ts_ns"]
            a.stop()                                   # nothing new since the tick: no empty emission
            assert len(out) == 1
    finally:
        ring.remove(name)


@pytest.mark.parametrize("config, key", [({"interval": "0"}, "interval"), ({"interval": "soon"}, "interval"),
                                         ({"top": "-1"}, "top"), ({"ports": "53,99999"}, "ports"),
                                         ({"port": "53"}, "port")])
def test_bad_options_are_config_errors(config, key):
    for cls in _classes():
        with pytest.raises(ConfigError) as e:
            cls().start(Context("dns", config, "none"))
        assert e.value.key == key


def test_entry_points_are_declared():
    with open(EXAMPLE / "pyproject.toml", "rb") as f:
        meta = tomllib.load(f)
    eps = meta["project"]["entry-points"]["capfan.analyzers"]
    assert eps == {"dns-dpkt": "capfan_dns_counter.dpkt_counter:DnsDpkt",
                   "dns-batch": "capfan_dns_counter.batch_counter:DnsBatch"}
    DnsDpkt, DnsBatch = _classes()
    for value, cls in zip(eps.values(), (DnsDpkt, DnsBatch)):
        module, attr = value.split(":")
        assert getattr(importlib.import_module(module), attr) is cls
    assert (EXAMPLE / "README.md").read_text().count("capfan.analyzers") >= 1

"""Compare the flow meter with the tshark oracle (../shared/tools/oracle_flows.py).

The two tables differ where the two programs define a flow differently. Every difference must
be explained by one of the documented rules below (README, "Flow meter vs tshark"):

- ``split``: capfan ends flows (idle/active timeout, FIN/RST) and starts a new record for the
  same key; the oracle has one row per key for the whole capture. Records of one key are summed
  before comparing, so this rule never leaves a difference behind.
- ``icmp``: capfan keys ICMP by type/code (echo request+reply paired); the oracle has no ICMP
  key part (ports 0), except that it reads ports out of the datagram an ICMP error quotes.
- ``fragment``: capfan counts non-first fragments in their first fragment's flow (matched by
  fragment id); the oracle counts them in a port-0 flow.
- ``ipv6_ext``: capfan's protocol is the upper-layer one after IPv6 extension headers; the
  oracle's is the IPv6 header's Next Header (0, 43, 44, 60...).
- ``tunnel``: capfan meters the outer flow of GRE/ERSPAN/VXLAN/Geneve/IP-in-IP/PIM Register;
  the oracle takes the VLAN and ports from the first VLAN tag / transport header anywhere in the
  frame, inner ones included, and IPv4 addresses from an IPv4 packet inside an IPv6 tunnel (then
  the packets move to another address pair: totals over the pairs concerned must balance).
- ``other_ports``: capfan keys DCCP and UDP-Lite by their ports; the oracle reads ports of TCP,
  UDP and SCTP only.
- ``ip_len_zero``: a jumbogram or GSO/"big TCP" IPv6 frame has 0 in its payload length field;
  capfan takes the IP bytes from the wire length and still reads the transport header (flow
  flag len_from_frame); the oracle counts 40 IP bytes and may not dissect the ports. Packet
  counts per direction must still be equal (and frame bytes, in frame mode).
- ``invalid_timestamp``: a pcap record's sub-second field is out of range; programs disagree on
  its meaning, so first/last timestamps of that capture are not compared (counts still are).
- ``qinq``: capfan's key has the inner VLAN too; the oracle keys by the first tag only
  (projected away before comparing, so never left as a difference).
- ``not_metered``: packets capfan counts as non-IP or bad (link types/encapsulations it does not
  parse, malformed headers) that tshark still dissects; the oracle's surplus on an address pair
  is bounded by those counters.
- ``corrupt_file``: the capture is corrupt at a byte offset; capfan stops there (the error names
  the offset), tshark may read on.

For address pairs where the per-key tables differ, the per-direction totals over the address
pair must still be equal (rules icmp/fragment/ipv6_ext/tunnel only move packets between keys
of one address pair), unless not_metered/corrupt_file account for the oracle's surplus.
"""
from __future__ import annotations

import csv
import io
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from capfan import records as rec
from capfan import ring as ringlib
from capfan.analyzers import Context, validate_options
from capfan.analyzers.flowmeter import FlowMeter
from capfan.errors import CorruptCapture
from capfan.sources.pcap import PcapSource

ORACLE = Path(__file__).resolve().parents[3] / "shared" / "tools" / "oracle_flows.py"

# transport protocols with ports that capfan keys by and the oracle does not read
OTHER_PORTED = {33, 136}  # DCCP, UDP-Lite

EXPLAINING_FLAGS = {
    "fragment": rec.FLOW_FRAGMENTS | rec.FLOW_FRAG_ORPHAN,
    "ipv6_ext": rec.FLOW_IPV6_EXT,
    "tunnel": rec.FLOW_TUNNEL,
    "icmp": rec.FLOW_ICMP_ERROR,
}


def run_oracle(pcap: Path, mode: str = "frame", oracle: Path = ORACLE) -> list[dict]:
    """The oracle's flow table of a pcap (bytes = frame or ip)."""
    out = subprocess.run([sys.executable, str(oracle), str(pcap), "--bytes", mode], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return list(csv.DictReader(io.StringIO(out)))


def meter_pcap(pcap: Path, ring_name: str, **options) -> tuple[list, dict, str | None]:
    """Replay a pcap through a ring into the flowmeter analyzer; returns (records, meter stats,
    corrupt-file error or None)."""
    ringlib.create(ring_name, ndesc=16384, arena_bytes=32 << 20)
    try:
        got = []
        cons = ringlib.Consumer(ring_name, "flowmeter", policy="reliable")
        fm = FlowMeter()
        cfg = validate_options("flowmeter", FlowMeter.options, options)
        fm.start(Context("flowmeter", cfg, ring_name, consumer=cons, emit=lambda s, r: got.append(r)))
        error = None
        with PcapSource(pcap) as src, ringlib.Producer(ring_name) as prod:
            try:
                while src.run(prod, duration=1.0) >= 0:
                    pass
            except CorruptCapture as e:
                error = str(e)
        while (b := cons.next(timeout=0)) is not None:
            fm.on_batch(b)
        fm.stop()
        stats = fm.stats()
        cons.close()
        recs = [r for batch in got for r in rec.to_dicts(batch)]
        return recs, stats, error
    finally:
        ringlib.remove(ring_name)


def _canon(vlan, proto, ip1, p1, ip2, p2):
    """The oracle's key: endpoints ordered as it orders them ((ip text, port) tuples)."""
    e1, e2 = (ip1, int(p1)), (ip2, int(p2))
    fwd = e1 <= e2
    return (vlan, str(proto)) + (e1 + e2 if fwd else e2 + e1), fwd


def project(records: list[dict], bytes_field: str = "layer2OctetDeltaCount") -> dict:
    """capfan records summed onto the oracle's key space (rules split and qinq)."""
    rev_field = "reverse" + bytes_field[0].upper() + bytes_field[1:]
    out = defaultdict(lambda: {"c": [0, 0, 0, 0], "first": None, "last": None, "flags": 0})
    for r in records:
        vlan = str(r["vlanId"]) if r["vlanId"] else ""
        key, fwd = _canon(vlan, r["protocolIdentifier"], r["sourceIPAddress"], r["sourceTransportPort"],
                          r["destinationIPAddress"], r["destinationTransportPort"])
        f = out[key]
        ab = (r["packetDeltaCount"], r[bytes_field])
        ba = (r["reversePacketDeltaCount"], r[rev_field])
        if not fwd:
            ab, ba = ba, ab
        for i, v in enumerate(ab + ba):
            f["c"][i] += v
        f["first"] = r["flowStartNanoseconds"] if f["first"] is None else min(f["first"], r["flowStartNanoseconds"])
        f["last"] = r["flowEndNanoseconds"] if f["last"] is None else max(f["last"], r["flowEndNanoseconds"])
        f["flags"] |= r["flowFlags"]
        if r["protocolIdentifier"] in (1, 58):
            f["icmp"] = True
    return dict(out)


def oracle_table(rows: list[dict]) -> dict:
    """Oracle rows by key."""
    out = {}
    for r in rows:
        vlan = "" if r["vlan"] in ("", "0") else r["vlan"]
        key, fwd = _canon(vlan, r["proto"], r["a_ip"], r["a_port"], r["b_ip"], r["b_port"])
        assert fwd, r  # the oracle prints a <= b already
        c = [int(r["pkts_ab"]), int(r["bytes_ab"]), int(r["pkts_ba"]), int(r["bytes_ba"])]
        out[key] = {"c": c, "first": float(r["first_ts"]), "last": float(r["last_ts"])}
    return out


def _pair_totals(table: dict) -> dict:
    """Per unordered address pair: [pkts a->b, bytes a->b, pkts b->a, bytes b->a], a < b by text."""
    out = defaultdict(lambda: [0, 0, 0, 0])
    for key, f in table.items():
        a, b = key[2], key[4]
        c = f["c"]
        if a == b:  # same address both ends: direction by address is meaningless
            c = [c[0] + c[2], c[1] + c[3], 0, 0]
        elif a > b:
            c = [c[2], c[3], c[0], c[1]]
            a, b = b, a
        t = out[(a, b)]
        for i in range(4):
            t[i] += c[i]
    return dict(out)


def _pair(key) -> tuple:
    """The unordered address pair of a key."""
    return min(key[2], key[4]), max(key[2], key[4])


def _keys_of_pair(table: dict, pair) -> dict:
    """Counters of the table's keys on one address pair, keyed by text (for failure messages)."""
    return {" ".join(map(str, k)): v["c"] for k, v in table.items() if _pair(k) == pair}


def compare(ours: dict, theirs: dict, stats: dict, corrupt: str | None, mode: str = "frame",
            check_times: bool = True) -> dict:
    """Reconcile the two tables (bytes of `mode`: frame or ip); returns {"matched": n,
    "rules": {rule: address pairs}, "unexplained": [...]}."""
    matched = 0
    bad_pairs = set()
    for key in set(ours) | set(theirs):
        o, t = ours.get(key), theirs.get(key)
        if o is not None and t is not None and o["c"] == t["c"]:
            matched += 1
            if check_times:  # the oracle prints microseconds
                assert abs(o["first"] / 1e9 - t["first"]) < 2e-6 and abs(o["last"] / 1e9 - t["last"]) < 2e-6, \
                    (key, o, t)
            continue
        bad_pairs.add(_pair(key))
    rules = defaultdict(int)
    if not bad_pairs:
        return {"matched": matched, "rules": {}, "unexplained": []}
    po, pt = _pair_totals(ours), _pair_totals(theirs)
    flags_by_pair, protos_by_pair = defaultdict(int), defaultdict(set)
    for key, f in ours.items():
        flags_by_pair[_pair(key)] |= f["flags"]
        protos_by_pair[_pair(key)].add(int(key[1]))
    surplus_budget = stats.get("non_ip", 0) + sum(stats.get("bad", {}).values())
    left = []
    for p in sorted(bad_pairs):
        co, ct = po.get(p, [0, 0, 0, 0]), pt.get(p, [0, 0, 0, 0])
        moved = [name for name, bit in EXPLAINING_FLAGS.items() if flags_by_pair[p] & bit]
        if protos_by_pair[p] & {1, 58} and "icmp" not in moved:
            moved.append("icmp")
        if protos_by_pair[p] & OTHER_PORTED:
            moved.append("other_ports")
        same = co == ct
        if (flags_by_pair[p] & rec.FLOW_LEN_FROM_FRAME and co[0] == ct[0] and co[2] == ct[2]
                and (same or mode == "ip")):
            moved.append("ip_len_zero")  # same packets; the IP length field said 0
            same = True
        if same and moved:
            for name in moved:
                rules[name] += 1
            continue
        surplus = (ct[0] - co[0]) + (ct[2] - co[2])
        if all(ct[i] >= co[i] for i in range(4)) and surplus > 0:
            if surplus <= surplus_budget:
                surplus_budget -= surplus
                rules["not_metered"] += 1
                continue
            if corrupt:
                rules["corrupt_file"] += 1
                continue
        left.append(p)
    # tunnel, across pairs: the oracle takes IPv4 addresses from inside an IPv6 tunnel, so the
    # packets of our TUNNEL flows reappear on other address pairs; totals must still balance.
    if left and any(flags_by_pair[p] & rec.FLOW_TUNNEL for p in left):
        so = [sum(po.get(p, [0] * 4)[i] for p in left) for i in range(4)]
        st = [sum(pt.get(p, [0] * 4)[i] for p in left) for i in range(4)]
        if so[0] + so[2] == st[0] + st[2] and (mode == "ip" or so[1] + so[3] == st[1] + st[3]):
            rules["tunnel"] += len(left)
            left = []
    unexplained = [{"pair": p, "capfan": po.get(p), "oracle": pt.get(p), "flags": rec.flag_names(flags_by_pair[p]),
                    "keys_capfan": _keys_of_pair(ours, p), "keys_oracle": _keys_of_pair(theirs, p)} for p in left]
    return {"matched": matched, "rules": dict(rules), "unexplained": unexplained}


def invalid_timestamps(path: Path) -> int:
    """Records of a classic pcap whose sub-second field is out of range (>= 1 s); tools
    disagree on what such a timestamp means. pcapng files: 0 (64-bit timestamps)."""
    data = path.read_bytes()
    if len(data) < 24:
        return 0
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
             b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if order is None:
        return 0
    limit = 10**9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 10**6
    n, off = 0, 24
    while off + 16 <= len(data):
        _, frac, incl, _ = struct.unpack_from(order + "IIII", data, off)
        n += frac >= limit
        off += 16 + incl
    return n

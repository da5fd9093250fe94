"""Flow record schema: one numpy dtype, laid out exactly like `capfan_flow_record` in
capfan/_core/flowmeter.h, with IPFIX information-element names (RFC 7012; reverse elements
from RFC 5103 for the responder direction) where one exists.

Directions: the *initiator* (source) sent the flow's first packet, unless a later TCP SYN
without ACK says otherwise. Plain names count initiator -> responder, `reverse*` names the
other way. Bytes are kept twice: `octetDeltaCount` is IP-layer bytes (IPv4 total length,
IPv6 payload length + 40), `layer2OctetDeltaCount` is frame bytes on the wire (the capture's
wire length, so snaplen does not shrink it).
"""
import ipaddress

import numpy as np

# (name, numpy type, what it is)
FIELDS = [
    ("flowStartNanoseconds", "<u8", "first packet of the flow, ns since the epoch"),
    ("flowEndNanoseconds", "<u8", "last packet of the flow, ns since the epoch"),
    ("reverseFlowStartNanoseconds", "<u8", "first responder packet (0: none seen)"),
    ("reverseFlowEndNanoseconds", "<u8", "last responder packet (0: none seen)"),
    ("packetDeltaCount", "<u8", "packets initiator -> responder"),
    ("reversePacketDeltaCount", "<u8", "packets responder -> initiator"),
    ("octetDeltaCount", "<u8", "IP-layer bytes initiator -> responder"),
    ("reverseOctetDeltaCount", "<u8", "IP-layer bytes responder -> initiator"),
    ("layer2OctetDeltaCount", "<u8", "frame bytes on the wire initiator -> responder"),
    ("reverseLayer2OctetDeltaCount", "<u8", "frame bytes on the wire responder -> initiator"),
    ("sourceIPAddress", "V16", "initiator address, 16 bytes; IPv4 as ::ffff:a.b.c.d"),
    ("destinationIPAddress", "V16", "responder address, 16 bytes; IPv4 as ::ffff:a.b.c.d"),
    ("flowHash", "<u4", "symmetric flow hash (the ring descriptors' hash)"),
    ("sourceTransportPort", "<u2", "initiator port (ICMP: 0)"),
    ("destinationTransportPort", "<u2", "responder port (ICMP: type << 8 | code)"),
    ("vlanId", "<u2", "outer VLAN id, 0 = untagged"),
    ("dot1qCustomerVlanId", "<u2", "inner VLAN id of QinQ, 0 = none"),
    ("ingressInterface", "<u2", "ring port the packets came from (queue / pcapng interface)"),
    ("flowFlags", "<u2", "FLOW_* bits: what the flow contained"),
    ("ipVersion", "u1", "4 or 6"),
    ("protocolIdentifier", "u1", "IP protocol after IPv6 extension headers"),
    ("tcpControlBits", "u1", "TCP flags seen initiator -> responder (union)"),
    ("reverseTcpControlBits", "u1", "TCP flags seen responder -> initiator (union)"),
    ("flowEndReason", "u1", "1 idle, 2 active timeout, 3 FIN/RST, 4 forced, 5 lack of resources"),
    ("_pad", "V3", ""),
]

FLOW_DTYPE = np.dtype([(n, t) for n, t, _ in FIELDS])
assert FLOW_DTYPE.itemsize == 136, "must match sizeof(capfan_flow_record)"

END_REASONS = {1: "idle", 2: "active", 3: "end", 4: "forced", 5: "resources"}

# flowFlags bits (CAPFAN_FLOW_* in flowmeter.h)
FLOW_FRAGMENTS = 1 << 0
FLOW_FRAG_ORPHAN = 1 << 1
FLOW_IPV6_EXT = 1 << 2
FLOW_TUNNEL = 1 << 3
FLOW_DECAP = 1 << 4
FLOW_QINQ = 1 << 5
FLOW_MALFORMED = 1 << 6
FLOW_SYN_INITIATOR = 1 << 7
FLOW_ICMP_ERROR = 1 << 8
FLOW_MPLS = 1 << 9
FLOW_LEN_FROM_FRAME = 1 << 10
FLAG_NAMES = {FLOW_FRAGMENTS: "fragments", FLOW_FRAG_ORPHAN: "frag_orphan", FLOW_IPV6_EXT: "ipv6_ext",
              FLOW_TUNNEL: "tunnel", FLOW_DECAP: "decap", FLOW_QINQ: "qinq", FLOW_MALFORMED: "malformed",
              FLOW_SYN_INITIATOR: "syn_initiator", FLOW_ICMP_ERROR: "icmp_error", FLOW_MPLS: "mpls",
              FLOW_LEN_FROM_FRAME: "len_from_frame"}

_V4_PREFIX = b"\0" * 10 + b"\xff\xff"


def empty(n: int = 0) -> np.ndarray:
    """A zeroed record array of n flows."""
    return np.zeros(n, dtype=FLOW_DTYPE)


def address(raw: bytes, version: int) -> str:
    """Text form of a 16-byte record address (IPv4 when version is 4)."""
    raw = bytes(raw)
    if version == 4:
        return str(ipaddress.IPv4Address(raw[12:16]))
    return str(ipaddress.IPv6Address(raw))


def pack_address(text: str) -> bytes:
    """16-byte record form of an IPv4 or IPv6 address."""
    a = ipaddress.ip_address(text)
    return _V4_PREFIX + a.packed if a.version == 4 else a.packed


def flag_names(bits: int) -> list[str]:
    """Names of the flowFlags bits set in `bits`."""
    return [n for b, n in FLAG_NAMES.items() if bits & b]


def to_dicts(records: np.ndarray) -> list[dict]:
    """Records as JSON-ready dicts (addresses as text, end reason and flags by name); for
    sinks and tools, not for hot paths."""
    out = []
    names = [n for n, _, _ in FIELDS if not n.startswith("_")]
    for r in records:
        d = {}
        for n in names:
            v = r[n]
            if n in ("sourceIPAddress", "destinationIPAddress"):
                d[n] = address(v.tobytes(), int(r["ipVersion"]))
            else:
                d[n] = int(v)
        d["flowEndReasonName"] = END_REASONS.get(d["flowEndReason"], "?")
        d["flowFlagNames"] = flag_names(d["flowFlags"])
        out.append(d)
    return out

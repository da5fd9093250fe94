"""One-line, tcpdump-style packet summaries (what `tcpdump -n -r` prints, minus app-layer decoding).

`summarize()` runs on untrusted bytes from the wire, so every read is bounds-checked and the
function never raises: a header cut short ends the line with a tcpdump-style `[|proto]` marker.
L2-L4 offsets, addresses and ports come from the C parser (`capfan_parse`, the same code that
computes the ring's flow hash), so the summary and the flow hash always agree on a packet.
"""
from __future__ import annotations

import socket

from capfan._capfan_core import ffi, lib

# capfan_pkt_info.flags bits (ring.h)
_F_L3, _F_L4, _F_FRAGMENT = 16, 32, 128

ETH_IP, ETH_IP6, ETH_ARP, ETH_RARP = 0x0800, 0x86DD, 0x0806, 0x8035
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 4  # same limit as parse.c, so both agree on where the payload starts

#: transport protocols whose first 4 bytes are source and destination ports (as in parse.c)
PORT_PROTOS = {6: "TCP", 17: "UDP", 33: "DCCP", 132: "SCTP", 136: "UDPLite"}
#: a few well-known IP protocols without ports, for `NAME, length N`
PROTO_NAMES = {2: "IGMP", 4: "IPIP", 41: "IP6-in-IP", 46: "RSVP", 47: "GRE", 50: "ESP", 51: "AH",
               88: "EIGRP", 89: "OSPF", 103: "PIM", 112: "VRRP", 115: "L2TP"}

TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"),
             (0x40, "E"), (0x80, "W"))

ICMP_TYPES = {0: "echo reply", 4: "source quench", 8: "echo request", 9: "router advertisement",
              10: "router solicitation", 12: "parameter problem", 13: "time stamp request",
              14: "time stamp reply", 15: "information request", 16: "information reply",
              17: "address mask request", 18: "address mask reply"}
ICMP_TIMXCEED = {0: "time exceeded in-transit", 1: "ip reassembly time exceeded"}
ICMP_REDIRECT = {0: "net", 1: "host", 2: "tos net", 3: "tos host"}
ICMP6_TYPES = {1: "destination unreachable", 2: "packet too big", 3: "time exceeded in-transit",
               4: "parameter problem", 128: "echo request", 129: "echo reply",
               130: "multicast listener query", 131: "multicast listener report",
               132: "multicast listener done", 133: "router solicitation",
               134: "router advertisement", 135: "neighbor solicitation",
               136: "neighbor advertisement", 137: "redirect", 143: "multicast listener report v2"}
ARP_OPS = {1: "Request", 2: "Reply", 3: "Reverse Request", 4: "Reverse Reply",
           8: "Inverse Request", 9: "Inverse Reply"}
# IPv6 extension headers parse.c skips: (8-byte units) and AH (4-byte units)
_V6_EXT8 = (0, 43, 60, 135, 139, 140)
_V6_AH, _V6_FRAG, _V6_EXT_MAX = 51, 44, 8
LINKTYPE_NAMES = {0: "null", 1: "ether", 101: "raw", 108: "loop", 113: "sll", 228: "ip",
                  229: "ip6", 276: "sll2"}


def summarize(pkt: bytes, linktype: int, ts_ns: int, wirelen: int) -> str:
    """One tcpdump-style line `HH:MM:SS.uuuuuu <summary>` (UTC) for a captured frame; never raises."""
    return f"{format_ts(ts_ns)} {summary_body(pkt, linktype, wirelen)}"


def format_ts(ts_ns) -> str:
    """Time of day of a ns timestamp as `HH:MM:SS.uuuuuu` (UTC), like `tcpdump -r`."""
    try:
        secs, ns = divmod(int(ts_ns), 10**9)
        h, rem = divmod(secs % 86400, 3600)
        return f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}.{ns // 1000:06d}"
    except Exception:  # noqa: BLE001 - a bad timestamp must not cost the whole line
        return "??:??:??.??????"


def summary_body(pkt, linktype: int, wirelen: int) -> str:
    """The summary without the timestamp, e.g. `IP 10.0.0.1.1024 > 10.0.0.2.53: UDP, length 18`."""
    try:
        data = bytes(pkt)
        lt = int(linktype)
        wl = int(wirelen) if wirelen and int(wirelen) > 0 else len(data)
        return _link(data, lt, wl)
    except Exception:  # noqa: BLE001 - last resort: a bug here must never stop a dump
        return f"[|{LINKTYPE_NAMES.get(linktype, 'pkt')}]" if isinstance(linktype, int) else "[|pkt]"


# ---------------------------------------------------------------- helpers

def _u16(b: bytes, off: int) -> int:
    return b[off] << 8 | b[off + 1]


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off:off + 4], "big")


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _addr(raw: bytes) -> str:
    # inet_ntop formats IPv6 exactly like tcpdump (incl. ::ffff:a.b.c.d)
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


# ---------------------------------------------------------------- link layer

def _link(pkt: bytes, lt: int, wirelen: int) -> str:
    """Dispatch on the link type to the printer of its L2 header (or straight to IP)."""
    if lt == 1:
        return _ether(pkt, wirelen)
    if lt in (101, 12, 14, 228, 229):
        return _l3_by_parser(pkt, lt, wirelen, "ip6" if lt == 229 else "ip")
    if lt in (0, 108):
        return _null(pkt, lt, wirelen)
    if lt == 113:
        if len(pkt) < 16:
            return "[|sll]"
        return _ethertype(pkt, lt, _u16(pkt, 14), 16, wirelen)
    if lt == 276:
        if len(pkt) < 20:
            return "[|sll2]"
        return _ethertype(pkt, lt, _u16(pkt, 0), 20, wirelen)
    return f"linktype {lt}, length {wirelen}"


def _ether(pkt: bytes, wirelen: int) -> str:
    """Ethernet II / 802.3 with up to MAX_VLAN_TAGS VLAN tags, shown as a `vlan N, ` prefix."""
    if len(pkt) < 14:
        return "[|ether]"
    et, off, prefix = _u16(pkt, 12), 14, ""
    for _ in range(MAX_VLAN_TAGS):
        if et not in VLAN_TPIDS:
            break
        if off + 4 > len(pkt):
            return prefix + "[|vlan]"
        prefix += f"vlan {_u16(pkt, off) & 0x0FFF}, "
        et, off = _u16(pkt, off + 2), off + 4
    macs = f"{_mac(pkt[6:12])} > {_mac(pkt[0:6])}, "
    if et < 0x0600:  # an 802.3 length field, not an ethertype: LLC follows
        return prefix + macs + _llc(pkt, off, wirelen)
    return prefix + _ethertype(pkt, 1, et, off, wirelen, macs)


def _llc(pkt: bytes, off: int, wirelen: int) -> str:
    """802.2 LLC header of an 802.3 frame (STP, IS-IS, IPX...): only its SAPs, not the protocol."""
    if off + 3 > len(pkt):
        return f"802.3, length {wirelen} [|llc]"
    return f"802.3 LLC, dsap 0x{pkt[off]:02x}, ssap 0x{pkt[off + 1]:02x}, length {wirelen}"


def _null(pkt: bytes, lt: int, wirelen: int) -> str:
    """BSD null/loopback: a 4-byte address family (host order for null, network for loop)."""
    if len(pkt) < 4:
        return "[|null]"
    if len(pkt) > 4 and pkt[4] >> 4 in (4, 6):
        return _l3_by_parser(pkt, lt, wirelen, "ip6" if pkt[4] >> 4 == 6 else "ip")
    fam = int.from_bytes(pkt[:4], "big" if lt == 108 else "little")
    if fam > 0xFFFF:  # written on a host of the other byte order
        fam = int.from_bytes(pkt[:4], "little" if lt == 108 else "big")
    return f"AF {fam}, length {wirelen}"


def _ethertype(pkt: bytes, lt: int, et: int, off: int, wirelen: int, macs: str = "") -> str:
    """Summary of an L2 payload of ethertype `et` starting at `off`."""
    if et in (ETH_IP, ETH_IP6):
        return _l3_by_parser(pkt, lt, wirelen, "ip6" if et == ETH_IP6 else "ip")
    if et in (ETH_ARP, ETH_RARP):
        return _arp(pkt, off, wirelen - off)
    return f"{macs}ethertype 0x{et:04x}, length {wirelen}"


# ---------------------------------------------------------------- ARP

def _arp(pkt: bytes, off: int, length: int) -> str:
    """ARP/RARP as tcpdump prints it: `ARP, Request who-has T tell S, length N` (RARP frames
    also say ARP; the operation tells them apart)."""
    if off + 8 > len(pkt):
        return "ARP, [|arp]"
    htype, ptype, hln, pln, op = _u16(pkt, off), _u16(pkt, off + 2), pkt[off + 4], pkt[off + 5], _u16(pkt, off + 6)
    if (htype, ptype, hln, pln) != (1, ETH_IP, 6, 4):
        return f"ARP, hardware {htype} (len {hln}), protocol 0x{ptype:04x} (len {pln}), length {length}"
    if off + 28 > len(pkt):
        return f"ARP, {ARP_OPS.get(op, f'Unknown ({op})')} [|arp]"
    sha, spa = pkt[off + 8:off + 14], _addr(pkt[off + 14:off + 18])
    tha, tpa = pkt[off + 18:off + 24], _addr(pkt[off + 24:off + 28])
    if op == 1:
        who = f"{tpa} ({_mac(tha)})" if any(tha) else tpa
        text = f"Request who-has {who} tell {spa}"
    elif op == 2:
        text = f"Reply {spa} is-at {_mac(sha)}"
    elif op == 3:
        text = f"Reverse Request who-is {_mac(tha)} tell {_mac(sha)}"
    elif op == 4:
        text = f"Reverse Reply {_mac(tha)} at {tpa}"
    else:
        text = ARP_OPS.get(op, f"Unknown ({op})")
    return f"ARP, {text}, length {length}"


# ---------------------------------------------------------------- IP

def _l3_by_parser(pkt: bytes, lt: int, wirelen: int, family: str) -> str:
    """Run capfan_parse on the frame and summarise the IP packet it found."""
    info = ffi.new("capfan_pkt_info *")
    lib.capfan_parse(pkt, len(pkt), lt, info)
    if not info.flags & _F_L3:
        return "IP6 [|ip6]" if family == "ip6" else "IP [|ip]"
    if info.ip_version == 6:
        return _ipv6(pkt, info, wirelen)
    return _ipv4(pkt, info, wirelen)


def _ipv4(pkt: bytes, info, wirelen: int) -> str:
    """IPv4: header sanity (tcpdump's bad-hlen / bad-len), fragment tag, then the transport."""
    l3 = info.l3_off
    src, dst = _addr(bytes(info.src[0:4])), _addr(bytes(info.dst[0:4]))
    ihl, total = (pkt[l3] & 15) * 4, info.ip_len
    if ihl < 20:
        return f"IP {src} > {dst}: bad-hlen {ihl}"
    if total < ihl:  # includes 0, which parse.c (and so the flow hash) also calls malformed
        return f"IP {src} > {dst}: bad-len {total}"
    missing = _missing(total, wirelen - l3, "ip")
    paylen = total - ihl
    frag = ""
    if info.flags & _F_FRAGMENT:
        more = "+" if pkt[l3 + 6] & 0x20 else ""
        frag = f" (frag {info.frag_id}:{paylen}@{info.frag_off * 8}{more})"
    return _ip_common("IP", src, dst, pkt, info, paylen, frag, missing)


def _ipv6(pkt: bytes, info, wirelen: int) -> str:
    """IPv6: payload length net of the extension headers parse.c skipped, then the transport."""
    l3 = info.l3_off
    src, dst = _addr(bytes(info.src)), _addr(bytes(info.dst))
    total = _u16(pkt, l3 + 4) + 40
    if total == 40 and wirelen - l3 > 40:  # jumbogram / big TCP: payload length left 0
        total = wirelen - l3
    missing = _missing(total, wirelen - l3, "ip6")
    frag = _ipv6_frag(pkt, l3, total) if info.flags & _F_FRAGMENT else ""
    hdrs = (info.l4_off - l3) if info.l4_off else 40
    return _ip_common("IP6", src, dst, pkt, info, total - hdrs, frag, missing)


def _missing(total: int, avail: int, name: str) -> str:
    """tcpdump's note for an IP length beyond the frame (lengths shown still follow the header)."""
    return f" truncated-{name} - {total - avail} bytes missing!" if total > avail else ""


def _ipv6_frag(pkt: bytes, l3: int, total: int) -> str:
    """Find the fragment header (walking the extension headers as parse.c does) for its tag."""
    nh, p = pkt[l3 + 6], l3 + 40
    for _ in range(_V6_EXT_MAX):
        if p + 8 > len(pkt):
            break
        if nh == _V6_FRAG:
            fo = _u16(pkt, p + 2)
            more = "+" if fo & 1 else ""
            return f" (frag {_u32(pkt, p + 4)}:{total - (p + 8 - l3)}@{(fo >> 3) * 8}{more})"
        if nh in _V6_EXT8:
            nh, p = pkt[p], p + (pkt[p + 1] + 1) * 8
        elif nh == _V6_AH:
            nh, p = pkt[p], p + (pkt[p + 1] + 2) * 4
        else:
            break
    return " (frag)"


def _ip_common(ipname: str, src: str, dst: str, pkt: bytes, info, paylen: int, frag: str,
               note: str = "") -> str:
    """`IP[ note] src[.sport] > dst[.dport]: <transport summary>[ (frag ...)]`."""
    proto = info.proto
    later_frag = info.frag_off != 0
    if proto in PORT_PROTOS and not later_frag and info.flags & _F_L4:
        head = f"{ipname}{note} {src}.{info.sport} > {dst}.{info.dport}:"
    else:
        head = f"{ipname}{note} {src} > {dst}:"
    if later_frag:  # no transport header in this fragment
        return f"{head} {PORT_PROTOS.get(proto) or PROTO_NAMES.get(proto) or f'ip-proto-{proto}'}{frag}"
    if info.l4_off == 0 or paylen < 0:
        return f"{head} [|{ipname.lower()}]{frag}"
    return f"{head} {_transport(pkt, info, paylen, bool(frag))}{frag}"


def _transport(pkt: bytes, info, paylen: int, fragmented: bool) -> str:
    """Summary of the L4 header at info.l4_off; `paylen` = bytes after the IP headers."""
    proto, off = info.proto, info.l4_off
    if proto == 6:
        return _tcp(pkt, off, paylen)
    if proto == 17:
        return _udp(pkt, off, paylen, fragmented)
    if proto == 1:
        return _icmp(pkt, off, paylen)
    if proto == 58:
        return _icmp6(pkt, off, paylen)
    if proto in PORT_PROTOS:
        if off + 4 > len(pkt):
            return f"[|{PORT_PROTOS[proto].lower()}]"
        return f"{PORT_PROTOS[proto]}, length {paylen}"
    if proto in PROTO_NAMES:
        return f"{PROTO_NAMES[proto]}, length {paylen}"
    return f"ip-proto-{proto} {paylen}"


# ---------------------------------------------------------------- transport

def _tcp(pkt: bytes, off: int, paylen: int) -> str:
    """`Flags [S.], seq A[:B], ack C, win W, length N` (absolute sequence numbers, no options)."""
    if off + 20 > len(pkt):
        return "[|tcp]"
    seq, ack, flags = _u32(pkt, off + 4), _u32(pkt, off + 8), pkt[off + 13]
    hlen = (pkt[off + 12] >> 4) * 4
    names = "".join(ch for bit, ch in TCP_FLAGS if flags & bit) or "none"
    out = f"Flags [{names}]"
    if hlen < 20:
        return f"{out}, [bad hdr length {hlen} - too short, < 20]"
    if hlen > paylen:
        return f"{out}, [bad hdr length {hlen} - too long, > {paylen}]"
    length = paylen - hlen
    if length > 0 or flags & 0x07:  # SYN/FIN/RST consume a sequence number
        out += f", seq {seq}" + (f":{(seq + length) & 0xFFFFFFFF}" if length > 0 else "")
    if flags & 0x10:
        out += f", ack {ack}"
    out += f", win {_u16(pkt, off + 14)}"
    if flags & 0x20:
        out += f", urg {_u16(pkt, off + 18)}"
    return f"{out}, length {length}"


def _udp(pkt: bytes, off: int, paylen: int, fragmented: bool) -> str:
    """`UDP, length N` with N from the UDP header, checked against the IP payload length."""
    if off + 8 > len(pkt):
        return "[|udp]"
    ulen = _u16(pkt, off + 4)
    if ulen < 8:
        return f"UDP, bad length {ulen} < 8"
    if ulen > paylen and not fragmented:  # a first fragment carries only part of the datagram
        return f"UDP, bad length {ulen - 8} > {paylen - 8}"
    return f"UDP, length {ulen - 8}"


def _icmp(pkt: bytes, off: int, paylen: int) -> str:
    """`ICMP echo request, id I, seq S, length N` and friends."""
    if off + 2 > len(pkt):
        return "[|icmp]"
    typ, code = pkt[off], pkt[off + 1]
    if typ in (0, 8):
        if off + 8 > len(pkt):
            return f"ICMP {ICMP_TYPES[typ]} [|icmp]"
        text = f"{ICMP_TYPES[typ]}, id {_u16(pkt, off + 4)}, seq {_u16(pkt, off + 6)}"
    elif typ == 3:
        text = _icmp_unreach(pkt, off, code)
    elif typ == 5:
        text = _icmp_redirect(pkt, off, code)
    elif typ == 11:
        text = ICMP_TIMXCEED.get(code, f"time exceeded-#{code}")
    else:
        text = ICMP_TYPES.get(typ, f"type-#{typ}")
    return f"ICMP {text}, length {paylen}"


def _inner_ip(pkt: bytes, off: int):
    """capfan_parse of the IP header quoted in an ICMP error at `off`, or None."""
    inner = pkt[off:]
    info = ffi.new("capfan_pkt_info *")
    lib.capfan_parse(inner, len(inner), 101, info)
    return info if info.flags & _F_L3 and info.ip_version == 4 else None


def _icmp_unreach(pkt: bytes, off: int, code: int) -> str:
    """`ICMP 10.0.0.2 udp port 53 unreachable` style text from the quoted datagram."""
    inner = _inner_ip(pkt, off + 8)
    if inner is None:
        return "unreachable [|icmp]"
    dst = _addr(bytes(inner.dst[0:4]))
    if code == 0:
        return f"net {dst} unreachable"
    if code == 1:
        return f"host {dst} unreachable"
    if code == 2:
        return f"{dst} protocol {inner.proto} unreachable"
    if code == 3:
        if inner.proto in (6, 17) and inner.flags & _F_L4:
            return f"{dst} {'tcp' if inner.proto == 6 else 'udp'} port {inner.dport} unreachable"
        return f"{dst} protocol {inner.proto} port unreachable"
    if code == 4:
        mtu = _u16(pkt, off + 6)
        return f"{dst} unreachable - need to frag (mtu {mtu})"
    if code == 13:
        return f"{dst} unreachable - admin prohibited filter"
    return f"{dst} unreachable - #{code}"


def _icmp_redirect(pkt: bytes, off: int, code: int) -> str:
    """`redirect 10.0.0.9 to host 10.0.0.254`: quoted destination and the new gateway."""
    inner = _inner_ip(pkt, off + 8)
    if inner is None or off + 8 > len(pkt):
        return "redirect [|icmp]"
    gw = _addr(pkt[off + 4:off + 8])
    return f"redirect {_addr(bytes(inner.dst[0:4]))} to {ICMP_REDIRECT.get(code, f'#{code}')} {gw}"


def _icmp6(pkt: bytes, off: int, paylen: int) -> str:
    """`ICMP6, echo request, id I, seq S, length N`, neighbor discovery targets, and type names."""
    if off + 2 > len(pkt):
        return "[|icmp6]"
    typ = pkt[off]
    text = ICMP6_TYPES.get(typ, f"unknown icmp6 type ({typ})")
    if typ in (128, 129):
        if off + 8 > len(pkt):
            return f"ICMP6, {text} [|icmp6]"
        text += f", id {_u16(pkt, off + 4)}, seq {_u16(pkt, off + 6)}"
    elif typ in (135, 136):
        if off + 24 > len(pkt):
            return f"ICMP6, {text} [|icmp6]"
        text += (", who has " if typ == 135 else ", tgt is ") + _addr(pkt[off + 8:off + 24])
    return f"ICMP6, {text}, length {paylen}"

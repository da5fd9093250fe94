"""Test-only frame builders (Ethernet/VLAN/IPv4/IPv6/TCP/UDP) with correct lengths."""
import ipaddress
import struct


def _l4(proto, sport, dport, payload):
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    if proto == 17:
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return payload


def ipv4(src, dst, proto=17, sport=1000, dport=53, payload=b"x" * 18, frag=0, ident=1):
    """IPv4 packet (no L2). frag is the raw flags/fragment-offset field."""
    body = _l4(proto, sport, dport, payload) if not (frag & 0x1FFF) else payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, frag, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + body


def ipv6(src, dst, proto=17, sport=1000, dport=53, payload=b"x" * 18, ext=b"", first_nh=None):
    """IPv6 packet (no L2); ext is pre-built extension headers starting with first_nh."""
    body = ext + _l4(proto, sport, dport, payload)
    nh = first_nh if ext else proto
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), nh, 64,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return hdr + body


def ether(l3, vlan=None, ethertype=None):
    """Ethernet frame around an L3 packet (ethertype guessed from the IP version)."""
    et = ethertype or (0x86DD if l3[0] >> 4 == 6 else 0x0800)
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + tag + struct.pack("!H", et) + l3


def udp4(src, dst, sport, dport, payload=b"x" * 18, vlan=None):
    """Ethernet/IPv4/UDP frame."""
    return ether(ipv4(src, dst, 17, sport, dport, payload), vlan)


def tcp6(src, dst, sport, dport, payload=b"y" * 10):
    """Ethernet/IPv6/TCP frame."""
    return ether(ipv6(src, dst, 6, sport, dport, payload))

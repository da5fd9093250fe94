"""Minimal DNS message reading for the batch analyzer: the header and the question names."""
from __future__ import annotations

import struct

MAX_POINTERS = 16   # compression pointers followed per name: stops loops in hostile packets


class Undecodable(ValueError):
    """The bytes are not a DNS message this reader can decode."""


def label_text(label: bytes) -> str:
    """One label as text: printable ASCII kept, other bytes as \\ddd (as Wireshark shows them)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}" for b in label)


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """The name at pos (following compression pointers) and the position after it."""
    labels, end, jumps = [], None, 0
    while True:
        if pos >= len(msg):
            raise Undecodable("name runs past the message")
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg) or jumps >= MAX_POINTERS:
                raise Undecodable("bad compression pointer")
            if end is None:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            continue
        if n & 0xC0:
            raise Undecodable("reserved label type")
        if n == 0:
            return (".".join(labels) if labels else "<Root>"), (end if end is not None else pos + 1)
        labels.append(label_text(msg[pos + 1:pos + 1 + n]))
        if pos + 1 + n > len(msg):
            raise Undecodable("label runs past the message")
        pos += 1 + n


def query_names(msg: bytes) -> list[str] | None:
    """Question names of a DNS query message; None if it is a response (QR=1)."""
    if len(msg) < 12:
        raise Undecodable("shorter than a DNS header")
    _id, flags, qdcount = struct.unpack_from("!HHH", msg)
    if flags & 0x8000:
        return None
    names, pos = [], 12
    for _ in range(qdcount):
        name, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise Undecodable("question cut short")
        names.append(name)
        pos += 4   # QTYPE, QCLASS
    return names

"""AF_PACKET capture (TPACKET_V3 ring, PACKET_FANOUT, kernel BPF, hardware timestamps).

Options mirror `capfan_afpacket_opts` in capfan/_core/source.h. Every option also accepts the
text form `capfan capture -o key=value` produces ("4M", "yes", "defrag,rollover").
"""
from __future__ import annotations

import os
import zlib

from capfan import errors
from capfan._capfan_core import ffi, lib
from capfan.sources import Source, raise_last, register
from capfan.sources.options import parse_bool as _parse_bool, parse_int as _parse_int

FANOUT_MODES = {"none": -1, "hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "qm": 5}
FANOUT_FLAGS = {"defrag": 0x8000, "rollover": 0x1000}
DEFAULT_BLOCK_SIZE = 1 << 20      # see src_afpacket.c for why these defaults
DEFAULT_BLOCK_COUNT = 64
DEFAULT_BLOCK_TIMEOUT_MS = 10
MAX_RING_BYTES = 16 << 30


def parse_bool(name: str, value) -> bool:
    """An afpacket yes/no option."""
    return _parse_bool("afpacket", name, value)


def parse_int(name: str, value, lo: int, hi: int, size: bool = False) -> int:
    """An afpacket integer/size option within [lo, hi]."""
    return _parse_int("afpacket", name, value, lo, hi, size)


def parse_fanout_flags(value) -> int:
    """Fanout flags from names ('defrag', 'rollover', 'defrag,rollover' or a list) to bits."""
    if value is None or value == "" or value == ():
        return 0
    names = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    bits = 0
    for name in (n.strip().lower() for n in names):
        if name not in FANOUT_FLAGS:
            raise errors.SourceError(f"unknown fanout flag {name!r}; use {' or '.join(FANOUT_FLAGS)}")
        bits |= FANOUT_FLAGS[name]
    return bits


def default_fanout_group(ifname: str) -> int:
    """Group id used when none is given: stable per interface name, so every capture of one
    interface started with the same fanout mode joins the same group."""
    return zlib.crc32(ifname.encode()) & 0xFFFF


@register
class AfPacketSource(Source):
    """Capture the packets an interface receives through an AF_PACKET TPACKET_V3 socket.

    ifname: interface; block_size/block_count/block_timeout_ms: kernel ring geometry;
    fanout: none|hash|lb|cpu|rollover|random|qm with fanout_group (0-65535) and fanout_flags
    (defrag, rollover); bpf: tcpdump filter; promisc; hw_timestamps; queue/port: value stored
    in each descriptor's port field (with fanout qm, start the captures in queue order)."""

    kind = "afpacket"

    def __init__(self, ifname: str | None = None, *, block_size="1M", block_count=DEFAULT_BLOCK_COUNT,
                 block_timeout_ms=DEFAULT_BLOCK_TIMEOUT_MS, fanout="none", fanout_group=None,
                 fanout_flags=None, bpf: str | None = None, promisc=True, hw_timestamps=False,
                 queue=None, port=None, **unknown):
        super().__init__()
        if unknown:
            raise errors.SourceError(f"unknown afpacket option(s) {', '.join(sorted(unknown))}; valid: ifname, "
                                     "block_size, block_count, block_timeout_ms, fanout, fanout_group, "
                                     "fanout_flags, bpf, promisc, hw_timestamps, queue, port")
        if not ifname or not isinstance(ifname, str):
            raise errors.SourceError("afpacket capture needs an interface name (ifname)")
        self.ifname = ifname
        self.options = self._validate(block_size, block_count, block_timeout_ms, fanout, fanout_group,
                                      fanout_flags, bpf, promisc, hw_timestamps, queue, port)
        self._open()

    def _validate(self, block_size, block_count, block_timeout_ms, fanout, fanout_group, fanout_flags,
                  bpf, promisc, hw_timestamps, queue, port) -> dict:
        page = os.sysconf("SC_PAGESIZE")
        bs = parse_int("block_size", block_size, page, 1 << 30, size=True)
        if bs & (bs - 1) or bs % page:
            raise errors.SourceError(f"afpacket option block_size={block_size!r}: must be a power of two "
                                     f"and a multiple of the page size ({page})")
        bc = parse_int("block_count", block_count, 2, 1 << 20)
        if bs * bc > MAX_RING_BYTES:
            raise errors.SourceError(f"afpacket ring of {bc} x {bs} bytes is larger than {MAX_RING_BYTES >> 30} GiB")
        tmo = parse_int("block_timeout_ms", block_timeout_ms, 1, 60_000)
        mode_name = str(fanout).strip().lower()
        if mode_name not in FANOUT_MODES:
            raise errors.SourceError(f"unknown fanout mode {fanout!r}; use one of {', '.join(FANOUT_MODES)}")
        flags = parse_fanout_flags(fanout_flags)
        if mode_name == "none" and (flags or fanout_group is not None):
            raise errors.SourceError("fanout_group/fanout_flags need a fanout mode (e.g. fanout=hash)")
        group = (default_fanout_group(self.ifname) if fanout_group is None
                 else parse_int("fanout_group", fanout_group, 0, 0xFFFF))
        if queue is not None and port is not None and int(queue) != int(port):
            raise errors.SourceError(f"afpacket: queue={queue} and port={port} disagree (queue sets the port)")
        port_value = parse_int("queue" if queue is not None else "port",
                               queue if queue is not None else (port or 0), 0, 0xFFFF)
        if bpf is not None and not isinstance(bpf, str):
            raise errors.SourceError(f"afpacket option bpf={bpf!r}: expected a tcpdump filter expression")
        return {"block_size": bs, "block_count": bc, "block_timeout_ms": tmo, "fanout": mode_name,
                "fanout_group": group if mode_name != "none" else None, "fanout_flags": flags,
                "bpf": bpf or None, "promisc": parse_bool("promisc", promisc),
                "hw_timestamps": parse_bool("hw_timestamps", hw_timestamps), "port": port_value}

    def _open(self) -> None:
        o = self.options
        self._keep = [ffi.new("char[]", self.ifname.encode())]
        bpf = ffi.NULL
        if o["bpf"]:
            bpf = ffi.new("char[]", o["bpf"].encode())
            self._keep.append(bpf)
        opts = ffi.new("capfan_afpacket_opts *", {
            "ifname": self._keep[0], "block_size": o["block_size"], "block_count": o["block_count"],
            "block_timeout_ms": o["block_timeout_ms"], "fanout_mode": FANOUT_MODES[o["fanout"]],
            "fanout_group": o["fanout_group"] or 0, "fanout_flags": o["fanout_flags"], "bpf": bpf,
            "promisc": int(o["promisc"]), "hw_timestamps": int(o["hw_timestamps"]), "port": o["port"]})
        s = lib.capfan_afpacket_open(opts)
        if s == ffi.NULL:
            raise_last()
        self._s = s

    @property
    def port(self) -> int:
        """Port value written into every descriptor."""
        return self.options["port"]

    def describe(self) -> str:
        """One line: interface, ring geometry, fanout, filter."""
        o = self.options
        text = (f"afpacket on {self.ifname}: {o['block_count']} x {o['block_size'] >> 10} KiB blocks, "
                f"{o['block_timeout_ms']} ms block timeout")
        if o["fanout"] != "none":
            flags = [n for n, b in FANOUT_FLAGS.items() if o["fanout_flags"] & b]
            text += f", fanout {o['fanout']} group {o['fanout_group']}" + (f" ({'+'.join(flags)})" if flags else "")
        if o["bpf"]:
            text += f", filter '{o['bpf']}'"
        return text

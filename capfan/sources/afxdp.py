"""AF_XDP capture: the ring's packet arena is the UMEM, so packets land in the ring with no copy
in user space (and none at all on zero-copy drivers); consumers read the frames in place.

The C side needs the ring producer to register its arena, so the socket is opened lazily in
`prepare(producer)` (Source.run calls it first). Options mirror `capfan_afxdp_opts` in
capfan/_core/source.h and also accept the text form of `capfan capture -o key=value`.
"""
from __future__ import annotations

from capfan import errors
from capfan._capfan_core import ffi, lib
from capfan.sources import STAT_FIELDS, Source, raise_last, register
from capfan.sources.options import parse_bool, parse_choice, parse_int

XDP_MODES = {"auto": 0, "skb": 1, "generic": 1, "native": 2, "drv": 2}
BIND_MODES = {"auto": 0, "copy": 1, "zerocopy": 2, "zero-copy": 2, "zc": 2}
XDP_MODE_NAMES = {0: None, 1: "skb", 2: "native"}
LINKTYPE_ETHERNET = 1
_EBUSY = 5  # CAPFAN_EBUSY


def _bool(name: str, value) -> bool:
    return parse_bool("afxdp", name, value)


def _int(name: str, value, lo: int, hi: int) -> int:
    return parse_int("afxdp", name, value, lo, hi)


def _choice(name: str, value, table: dict) -> int:
    return parse_choice("afxdp", name, value, table)


@register
class AfXdpSource(Source):
    """Capture one receive queue of an interface through an AF_XDP socket whose UMEM is the
    ring's arena.

    ifname/queue: what to capture; frame_size: UMEM frame (2048 or 4096; the ring arena holds
    arena_bytes / frame_size frames, at least 2 x rx_size); rx_size: RX and FILL ring size;
    xdp_mode: auto|skb|native; bind_mode: auto|copy|zerocopy; busy_poll (+ busy_poll_us,
    busy_poll_budget): SO_PREFER_BUSY_POLL; port: value stored in each descriptor's port."""

    kind = "afxdp"

    def __init__(self, ifname: str, queue=0, frame_size=2048, rx_size=2048, xdp_mode="auto",
                 bind_mode="auto", busy_poll=False, busy_poll_us=20, busy_poll_budget=64, port=0):
        super().__init__()
        if not ifname:
            raise errors.SourceError("afxdp needs an interface name (ifname)")
        self.ifname = str(ifname)
        self.queue = _int("queue", queue, 0, 0xFFFFFFFF)
        self.frame_size = _int("frame_size", frame_size, 2048, 4096)
        if self.frame_size not in (2048, 4096):
            raise errors.SourceError(f"afxdp option frame_size={frame_size!r}: must be 2048 or 4096")
        self.rx_size = _int("rx_size", rx_size, 64, 65536)
        self.xdp_mode = _choice("xdp_mode", xdp_mode, XDP_MODES)
        self.bind_mode = _choice("bind_mode", bind_mode, BIND_MODES)
        self.busy_poll = _bool("busy_poll", busy_poll)
        self.busy_poll_us = _int("busy_poll_us", busy_poll_us, 0, 1_000_000)
        self.busy_poll_budget = _int("busy_poll_budget", busy_poll_budget, 0, 65535)
        self.port = _int("port", port, 0, 255)
        self._producer = None

    def _open(self, producer) -> None:
        keep = ffi.new("char[]", self.ifname.encode())
        o = ffi.new("capfan_afxdp_opts *", {
            "ifname": keep, "queue": self.queue, "frame_size": self.frame_size, "rx_size": self.rx_size,
            "xdp_mode": self.xdp_mode, "bind_mode": self.bind_mode, "busy_poll": int(self.busy_poll),
            "busy_poll_us": self.busy_poll_us, "busy_poll_budget": self.busy_poll_budget, "port": self.port})
        s = lib.capfan_afxdp_open(o, producer._p)
        if s == ffi.NULL:
            _raise_source_error()
        self._s = s
        # the kernel writes into the producer's mapping: keep it mapped while the socket lives
        self._producer = producer

    def prepare(self, producer) -> None:
        """Open the socket over this producer's arena (once) and switch it to external placement."""
        if self._s is None:
            self._open(producer)
        elif producer is not self._producer:
            raise errors.SourceError(f"this afxdp source captures into ring {self._producer.name!r}; "
                                     "open another source for another ring")
        super().prepare(producer)

    def linktype(self, port: int = 0) -> int:
        """Always Ethernet."""
        return LINKTYPE_ETHERNET

    def stats(self) -> dict:
        """Counters, incl. XDP_STATISTICS (kernel_drops, xdp_fill_empty, xdp_rx_ring_full,
        xdp_rx_invalid), zerocopy (bind mode obtained) and xdp_mode (1 skb, 2 native)."""
        if self._s is None:
            return {k: 0 for k in STAT_FIELDS}
        return super().stats()

    def describe(self) -> str:
        """One line for humans: interface, queue, XDP mode and bind mode obtained."""
        if self._s is None:
            return f"afxdp on {self.ifname} queue {self.queue}"
        return (f"afxdp on {self.ifname} queue {self.queue} ({self.mode} XDP, "
                f"{'zero-copy' if self.zerocopy else 'copy'} mode)")

    @property
    def mode(self) -> str | None:
        """XDP mode obtained: 'skb' or 'native' (None before prepare)."""
        return XDP_MODE_NAMES.get(self.stats()["xdp_mode"])

    @property
    def zerocopy(self) -> bool:
        """True if the socket is bound in zero-copy mode."""
        return bool(self.stats()["zerocopy"])

    def close(self) -> None:
        """Close the socket; the last capfan socket on the interface detaches the XDP program."""
        super().close()
        self._producer = None


def _raise_source_error():
    """raise_last, but a busy interface/queue is a SourceError, not a ring error."""
    if lib.capfan_last_error_code() == _EBUSY:
        raise errors.SourceError(ffi.string(lib.capfan_last_error()).decode(errors="replace"))
    raise_last()


def cleanup(ifname: str) -> int:
    """Remove the XDP program (and its pins in $CAPFAN_BPF_DIR) a killed capfan capture left on
    `ifname` (in this network namespace); returns how many were removed (0 if none, or if a live
    capture uses it)."""
    n = lib.capfan_afxdp_cleanup(ifname.encode())
    if n < 0:
        _raise_source_error()
    return n

"""Capture sources: one C backend per capture method behind one interface, selected by name.

`open_source(kind, **options)` returns a Source; `SOURCES` maps names to their classes.
Backends register themselves with @register when their module is imported.
"""
from __future__ import annotations

import importlib

from capfan import errors
from capfan._capfan_core import ffi, lib

SOURCES: dict[str, type["Source"]] = {}
_MODULES = {"pcap": "capfan.sources.pcap", "afpacket": "capfan.sources.afpacket", "afxdp": "capfan.sources.afxdp",
            "snf": "capfan.sources.snf", "efvi": "capfan.sources.efvi"}

_EEOF = 10


def register(cls):
    """Class decorator: make a Source subclass available under cls.kind."""
    SOURCES[cls.kind] = cls
    return cls


def backends_built() -> list[str]:
    """Backends compiled into this build of the C core."""
    return ffi.string(lib.capfan_source_backends()).decode().split()


def source_class(kind: str) -> type["Source"]:
    """The Source class for a backend name, with a clear error for unknown names."""
    if kind not in _MODULES:
        raise errors.SourceError(f"unknown capture source {kind!r}; choose one of {', '.join(_MODULES)}")
    importlib.import_module(_MODULES[kind])
    return SOURCES[kind]


def open_source(kind: str, **options) -> "Source":
    """Open a capture source by name (pcap, afpacket, afxdp) with backend options."""
    return source_class(kind)(**options)


def raise_last(default=errors.SourceError):
    """Raise the capfan error matching the C core's last error."""
    from capfan.ring import _raise
    code = lib.capfan_last_error_code()
    msg = ffi.string(lib.capfan_last_error()).decode(errors="replace")
    exc = {11: errors.SourceNotSupported, 12: errors.CorruptCapture, 13: errors.CapturePermissionError}.get(code)
    if exc is not None:
        raise exc(msg)
    if code in (1, 7):
        raise default(msg)
    _raise()


STAT_FIELDS = ("packets", "bytes", "published", "ring_drops", "kernel_drops", "kernel_freezes", "malformed",
               "truncated", "hw_timestamps", "xdp_rx_invalid", "xdp_rx_ring_full", "xdp_fill_empty",
               "loops_done", "file_offset", "file_bytes", "zerocopy", "xdp_mode", "eof", "nic_drops",
               "ring_overflows", "shared_overflows")


class Source:
    """A capture backend instance. Subclasses open the C source in __init__ (self._s)."""

    kind = "?"

    def __init__(self):
        self._s = None
        self._prepared = None

    def linktype(self, port: int = 0) -> int:
        """pcap link type of the packets from a port."""
        return lib.capfan_source_linktype(self._s, port)

    def prepare(self, producer) -> None:
        """Bind to a ring producer (declares link types, external arena placement)."""
        if self._prepared is producer:
            return
        if lib.capfan_source_prepare(self._s, producer._p) != 0:
            raise_last()
        self._prepared = producer

    def run(self, producer, max_packets: int = 0, duration: float = 0.1) -> int:
        """Receive into the ring for up to `duration` seconds (C loop); returns packets published,
        or -1 once a replay has ended."""
        self.prepare(producer)
        n = lib.capfan_source_run(self._s, producer._p, max_packets, int(duration * 1e9))
        if n == -_EEOF:
            return -1
        if n < 0:
            raise_last()
        return n

    def stats(self) -> dict:
        """Counters: packets, bytes, published, ring/kernel drops, ..."""
        st = ffi.new("capfan_source_stats *")
        lib.capfan_source_get_stats(self._s, st)
        return {k: getattr(st, k) for k in STAT_FIELDS}

    def close(self) -> None:
        """Release the backend (sockets, XDP program, file mapping)."""
        if getattr(self, "_s", None) is not None:  # __init__ may have failed before setting it
            lib.capfan_source_close(self._s)
            self._s = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

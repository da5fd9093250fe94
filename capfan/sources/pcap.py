"""pcap / pcapng replay source: publishes the packets of a capture file into a ring.

The file is read by the C core (src_pcap.c) through mmap; pcapng interface i is published as
port `port_base + i` with its own link type. Speed 0 replays as fast as possible, 1 as
recorded, k k-times faster; `loops` passes over the file keep timestamps increasing.
"""
from __future__ import annotations

import math
import os
import re

from capfan import errors
from capfan._capfan_core import ffi, lib
from capfan.sources import Source, raise_last, register

_SPEED_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX]?\s*$")
MAX_LOOPS = 2**32 - 1


def parse_speed(speed) -> float:
    """'max' -> 0 (as fast as possible); '1x', '10x', '0.5x', 2, 2.5 -> that factor."""
    if isinstance(speed, bool):
        raise errors.SourceError(f"replay speed must be 'max', '1x', '10x' or a positive number, not {speed!r}")
    if isinstance(speed, (int, float)):
        value = float(speed)
    elif isinstance(speed, str):
        text = speed.strip().lower()
        if text in ("max", "0", "0x"):
            return 0.0
        m = _SPEED_RE.match(text)
        if not m:
            raise errors.SourceError(
                f"replay speed {speed!r} not understood: use 'max' (as fast as possible), "
                f"'1x' (as recorded), '10x' (ten times faster) or a positive number")
        value = float(m.group(1))
        if value == 0:
            raise errors.SourceError(f"replay speed {speed!r} would never send anything; use 'max' for no pacing")
    else:
        raise errors.SourceError(f"replay speed must be 'max', '1x', '10x' or a number, not {type(speed).__name__}")
    if not math.isfinite(value) or value < 0:
        raise errors.SourceError(f"replay speed must be 0 ('max') or a positive finite factor, not {speed!r}")
    return value


@register
class PcapSource(Source):
    """Replay a pcap or pcapng file into a ring (once or `loops` times, paced by `speed`)."""

    kind = "pcap"

    def __init__(self, path, speed=0.0, loops: int = 1, port_base: int = 0):
        super().__init__()
        self.path = os.fspath(path)
        self.speed = parse_speed(speed)
        if isinstance(loops, bool) or not isinstance(loops, int) or not 1 <= loops <= MAX_LOOPS:
            raise errors.SourceError(f"loops must be a whole number of passes from 1 to {MAX_LOOPS}, not {loops!r}")
        if isinstance(port_base, bool) or not isinstance(port_base, int) or not 0 <= port_base <= 0xFFFF:
            raise errors.SourceError(f"port_base must be 0..65535, not {port_base!r}")
        self.loops = loops
        self.port_base = port_base
        self._opts = ffi.new("capfan_pcap_opts *", {"speed": self.speed, "loops": loops, "port_base": port_base})
        s = lib.capfan_pcap_open(self.path.encode(), self._opts)
        if s == ffi.NULL:
            code = lib.capfan_last_error_code()
            msg = ffi.string(lib.capfan_last_error()).decode(errors="replace")
            if code == 3:
                raise errors.SourceError(f"{msg} (check the path)")
            raise_last()
        self._s = s

    def linktype(self, port: int | None = None) -> int:
        """pcap link type of a port (default: the file's first interface)."""
        return super().linktype(self.port_base if port is None else port)

    @property
    def file_bytes(self) -> int:
        """Size of the capture file in bytes."""
        return self.stats()["file_bytes"]

    @property
    def total_bytes(self) -> int:
        """Bytes to read over all passes (file size x loops): the progress bar's total."""
        return self.file_bytes * self.loops

    @property
    def bytes_done(self) -> int:
        """File bytes consumed over all passes so far."""
        st = self.stats()
        if st["eof"]:
            return st["file_bytes"] * self.loops
        return min(st["loops_done"] * st["file_bytes"] + st["file_offset"], st["file_bytes"] * self.loops)

    @property
    def progress(self) -> float:
        """Fraction of the replay done, 0.0 to 1.0."""
        total = self.total_bytes
        return 1.0 if total == 0 else self.bytes_done / total

    @property
    def done(self) -> bool:
        """True once every pass is finished."""
        return bool(self.stats()["eof"])

    def __repr__(self):
        speed = "max" if self.speed == 0 else f"{self.speed:g}x"
        return f"PcapSource({self.path!r}, speed={speed}, loops={self.loops}, port_base={self.port_base})"

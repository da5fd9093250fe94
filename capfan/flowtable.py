"""FlowTable: Python face of the C flow meter (capfan/_core/flowmeter.c).

Feed it packets (numpy arrays or a ring batch), let time pass with `tick`, and `drain` the
ended flows as FLOW_DTYPE records (capfan.records). Times are in seconds here, ns in C.
"""
from __future__ import annotations

import time

import numpy as np

from capfan._capfan_core import ffi, lib
from capfan.errors import CapfanError, ConfigError
from capfan.records import END_REASONS, FLOW_DTYPE

#: decap names -> CAPFAN_DECAP_* bits
DECAP = {"mpls": 1, "gre": 2, "vxlan": 4}
_BAD_MAX = 10
_END_NAMES = {1: "idle", 2: "active", 3: "end", 4: "forced", 5: "resources"}
assert _END_NAMES == END_REASONS
_U32_MAX = (1 << 32) - 1


def _ns(key: str, seconds, allow_zero: bool = True) -> int:
    """Seconds (int/float) -> ns; ConfigError naming `key` if negative or not a number."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{seconds!r} is not a number of seconds") from None
    if not s >= 0 or s == float("inf"):
        raise ConfigError(key, f"must be a finite number of seconds >= 0, not {seconds!r}")
    if s == 0 and not allow_zero:
        raise ConfigError(key, "must be > 0 seconds")
    return int(round(s * 1e9))


def _count(key: str, value, limit: int = 1 << 30) -> int:
    """A positive table size; ConfigError naming `key` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(key, f"must be a whole number, not {value!r}")
    if not 1 <= value <= limit:
        raise ConfigError(key, f"must be between 1 and {limit}, not {value}")
    return int(value)


def parse_decap(decap) -> tuple[str, ...]:
    """Decap switches from a comma list ("gre,vxlan"), "none"/"" or an iterable of names."""
    if decap is None:
        return ()
    if isinstance(decap, str):
        items = [] if decap.strip().lower() in ("", "none") else decap.split(",")
    else:
        items = list(decap)
    out = []
    for d in items:
        name = str(d).strip().lower()
        if name not in DECAP:
            raise ConfigError("decap", f"unknown decapsulation {d!r}; use a comma list of "
                              f"{', '.join(DECAP)} or 'none'")
        if name not in out:
            out.append(name)
    return tuple(out)


def _optional_array(values, dtype, n: int, name: str):
    """values as a contiguous array of n entries of dtype, or None when not given."""
    if values is None:
        return None
    a = np.ascontiguousarray(values, dtype=dtype)
    if len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries for {n} packets")
    return a


class FlowTable:
    """A bidirectional flow table. Not thread-safe: one per consumer."""

    def __init__(self, max_flows=1_048_576, idle_timeout=60.0, active_timeout=300.0, end_linger=1.0,
                 fragment_timeout=30.0, max_fragments=65536, decap=()):
        cfg = ffi.new("capfan_flowmeter_config *")
        cfg.max_flows = _count("max_flows", max_flows)
        cfg.max_fragments = _count("max_fragments", max_fragments)
        cfg.idle_timeout_ns = _ns("idle_timeout", idle_timeout)
        cfg.active_timeout_ns = _ns("active_timeout", active_timeout)
        cfg.end_linger_ns = _ns("end_linger", end_linger)
        cfg.fragment_timeout_ns = _ns("fragment_timeout", fragment_timeout, allow_zero=False)
        self.decap = parse_decap(decap)
        cfg.decap = sum(DECAP[d] for d in self.decap)
        fm = lib.capfan_flowmeter_new(cfg)
        if fm == ffi.NULL:
            msg = ffi.string(lib.capfan_last_error()).decode(errors="replace")
            raise CapfanError(f"cannot create the flow table: {msg}")
        self._fm = ffi.gc(fm, lib.capfan_flowmeter_free)
        self._st = ffi.new("capfan_flowmeter_stats *")

    def _live(self):
        if self._fm is None:
            raise CapfanError("the flow table is closed")
        return self._fm

    def add_packets(self, buf, offs, caplens, wirelens=None, ts_ns=None, linktype=1, port=0) -> int:
        """Meter packets held in `buf` at offs[i] (caplens, optional wirelens and ts_ns per
        packet) of one link type; returns how many were metered into flows."""
        fm = self._live()
        caplens = np.ascontiguousarray(caplens, dtype=np.uint32)
        offs = np.ascontiguousarray(offs, dtype=np.uint64)
        n = len(caplens)
        if len(offs) != n:
            raise ValueError(f"offs has {len(offs)} entries for {n} packets")
        if n == 0:
            return 0
        if isinstance(buf, np.ndarray):
            buf = np.ascontiguousarray(buf)
        size = memoryview(buf).nbytes
        if int((offs + caplens).max()) > size:
            raise ValueError("a packet runs past the end of buf (offs + caplens > len(buf))")
        w = _optional_array(wirelens, np.uint32, n, "wirelens")
        t = _optional_array(ts_ns, np.uint64, n, "ts_ns")
        wl = ffi.NULL if w is None else ffi.from_buffer("uint32_t[]", w)
        ts = ffi.NULL if t is None else ffi.from_buffer("uint64_t[]", t)
        return lib.capfan_flowmeter_packets(fm, ffi.from_buffer("uint8_t[]", buf),
                                            ffi.from_buffer("uint64_t[]", offs),
                                            ffi.from_buffer("uint32_t[]", caplens), wl, ts, n,
                                            int(linktype), int(port))

    def add_batch(self, batch) -> int:
        """Meter a capfan.ring.Batch in place (link types from the ring's ports)."""
        c, b = batch.c_handles
        return lib.capfan_flowmeter_batch(self._live(), c, b)

    def tick(self, wall_ns=None) -> None:
        """Let wall time (ns since the epoch, default now) advance the clock; ends due flows."""
        lib.capfan_flowmeter_tick(self._live(), time.time_ns() if wall_ns is None else int(wall_ns))

    def flush(self) -> None:
        """End every flow now (forced)."""
        lib.capfan_flowmeter_flush(self._live())

    def drain(self) -> np.ndarray:
        """All ended flows not drained yet, as a FLOW_DTYPE array."""
        fm = self._live()
        lib.capfan_flowmeter_get_stats(fm, self._st)
        n = self._st.records_pending
        out = np.zeros(n, dtype=FLOW_DTYPE)
        if n:
            got = lib.capfan_flowmeter_drain(fm, ffi.cast("capfan_flow_record *", ffi.from_buffer(out)), n)
            out = out[:got]
        return out

    def stats(self) -> dict:
        """Counters: packets, ip_packets, non_ip, bad (by reason name), fragments,
        fragment_orphans, flows_created, ended (by end reason name), flows_active(_max),
        records_pending, records_lost, now_ns."""
        lib.capfan_flowmeter_get_stats(self._live(), self._st)
        s = self._st
        bad = {ffi.string(lib.capfan_flowmeter_bad_name(i)).decode(): s.bad[i] for i in range(1, _BAD_MAX)}
        return {
            "packets": s.packets, "ip_packets": s.ip_packets, "non_ip": s.non_ip, "bad": bad,
            "fragments": s.fragments, "fragment_orphans": s.fragment_orphans,
            "flows_created": s.flows_created,
            "ended": {name: s.flows_ended[i] for i, name in _END_NAMES.items()},
            "flows_active": s.flows_active, "flows_active_max": s.flows_active_max,
            "records_pending": s.records_pending, "records_lost": s.records_lost, "now_ns": s.now_ns,
        }

    def close(self):
        """Free the table (pending records are lost: drain first)."""
        if self._fm is not None:
            fm, self._fm = self._fm, None
            ffi.release(fm)  # runs capfan_flowmeter_free now, once

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

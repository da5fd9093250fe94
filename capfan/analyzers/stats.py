"""`stats` analyzer: traffic counters per interval from the ring descriptors alone (no packet
bytes are read), emitted on stream "stats". Cheap enough to run beside anything."""
from __future__ import annotations

import time

import numpy as np

from capfan import ring
from capfan.errors import ConfigError
from capfan.analyzers import Analyzer, Option

STATS_DTYPE = np.dtype([
    ("intervalStartNanoseconds", "<u8"), ("intervalEndNanoseconds", "<u8"),
    ("packets", "<u8"), ("bytes", "<u8"), ("ipv4", "<u8"), ("ipv6", "<u8"), ("non_ip", "<u8"),
    ("fragments", "<u8"), ("malformed", "<u8"), ("truncated", "<u8"), ("first_ts_ns", "<u8"), ("last_ts_ns", "<u8"),
])
_COUNTERS = ("packets", "bytes", "ipv4", "ipv6", "non_ip", "fragments", "malformed", "truncated")


class Stats(Analyzer):
    """Packet, byte and protocol-class counters per interval, from descriptors only."""

    options = {"interval": Option(float, 10.0, "seconds per emitted record (wall clock)")}
    policy = "lossy"

    def start(self, ctx) -> None:
        """Validate the interval and start the first one."""
        self.ctx = ctx
        if ctx.config["interval"] <= 0:
            raise ConfigError("interval", "must be a positive number of seconds")
        self.total = dict.fromkeys(_COUNTERS, 0)
        self._reset(time.time_ns())

    def _reset(self, now_ns):
        self.cur = dict.fromkeys(_COUNTERS, 0)
        self.cur["first_ts_ns"] = 0
        self.cur["last_ts_ns"] = 0
        self.interval_start = now_ns

    def on_batch(self, batch) -> None:
        """Count the batch with vectorised descriptor arithmetic."""
        d = batch.desc
        if len(d) == 0:
            return
        fl = np.array(d["flags"])  # copies: the seqlock check below must cover what we use
        wl = batch.wirelens()
        ts = np.array(d["ts_ns"])
        # lossy: the first k descriptors may have been overwritten while we read them (seqlock)
        k = batch.torn()
        if k:
            pos = np.arange(len(d)) if batch._sel is None else batch._sel
            keep = pos >= k
            fl, wl, ts = fl[keep], wl[keep], ts[keep]
            if len(fl) == 0:
                return
        l3 = (fl & ring.F_L3) != 0
        v6 = (fl & ring.F_IPV6) != 0
        c = {
            "packets": len(fl),
            "bytes": int(wl.sum(dtype=np.uint64)),
            "ipv4": int(np.count_nonzero(l3 & ~v6)),
            "ipv6": int(np.count_nonzero(l3 & v6)),
            "non_ip": int(np.count_nonzero(~l3)),
            "fragments": int(np.count_nonzero(fl & ring.F_FRAGMENT)),
            "malformed": int(np.count_nonzero(fl & ring.F_MALFORMED)),
            "truncated": int(np.count_nonzero(fl & ring.F_TRUNCATED)),
        }
        for k, v in c.items():
            self.cur[k] += v
            self.total[k] += v
        if not self.cur["first_ts_ns"]:
            self.cur["first_ts_ns"] = int(ts.min())
        self.cur["last_ts_ns"] = max(self.cur["last_ts_ns"], int(ts.max()))

    def _emit(self, now_ns: int) -> None:
        rec = np.zeros(1, dtype=STATS_DTYPE)
        rec["intervalStartNanoseconds"] = self.interval_start or now_ns
        rec["intervalEndNanoseconds"] = now_ns
        for k in _COUNTERS + ("first_ts_ns", "last_ts_ns"):
            rec[k] = self.cur[k]
        if self.cur["packets"]:
            self.ctx.emit("stats", rec)
        self._reset(now_ns)

    def on_tick(self, now_ns: int) -> None:
        """Emit the interval's record when the interval is over."""
        if now_ns - self.interval_start >= self.ctx.config["interval"] * 1e9:
            self._emit(now_ns)

    def stop(self) -> None:
        """Emit the partial last interval."""
        self._emit(time.time_ns())

    def stats(self) -> dict:
        """Totals since start."""
        return dict(self.total)

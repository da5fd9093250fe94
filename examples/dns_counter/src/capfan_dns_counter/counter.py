"""What both DNS analyzers share: options, the per-name table, periodic and final emission."""
from __future__ import annotations

import time

from capfan.analyzers import Analyzer, Option, validate_options
from capfan.errors import ConfigError

STREAM = "dns"

# pcap link types the analyzers understand (others are skipped and counted)
ETHERNET, RAW, RAW_IPV4, RAW_IPV6 = 1, 101, 228, 229
RAW_TYPES = (RAW, RAW_IPV4, RAW_IPV6)


def parse_ports(value) -> tuple[int, ...]:
    """'53,5353' (or an int, or a list of ints) -> (53, 5353): UDP/TCP ports that carry DNS."""
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in str(value).split(",") if v.strip()]
    try:
        ports = tuple(sorted({int(v) for v in items}))
    except ValueError:
        raise ValueError(f"{value!r} is not a comma-separated list of port numbers (e.g. 53,5353)") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"ports must be 1..65535, got {value!r}")
    return ports


class DnsCounter(Analyzer):
    """Counts DNS queries (QR=0) per query name; subclasses say how packets are decoded."""

    options = {
        "interval": Option(float, 60.0, "seconds between emissions of the per-name counts"),
        "top": Option(int, 10, "how many of the most queried names to log at stop (0: none)"),
        "ports": Option(parse_ports, (53,), "comma-separated UDP/TCP ports carrying DNS"),
    }

    def start(self, ctx) -> None:
        """Validate the options and start counting."""
        self.ctx = ctx
        cfg = validate_options(ctx.name, self.options, ctx.config)
        if not cfg["interval"] > 0:
            raise ConfigError("interval", f"must be a positive number of seconds, not {cfg['interval']!r} "
                                          "(e.g. -o interval=60)")
        if cfg["top"] < 0:
            raise ConfigError("top", f"must be 0 (log nothing) or more, not {cfg['top']!r}")
        self.interval_ns = int(cfg["interval"] * 1e9)
        self.top = cfg["top"]
        self.ports = cfg["ports"]
        self.window: dict[str, list[int]] = {}   # name -> [count, first ts, last ts] since last emit
        self.totals: dict[str, int] = {}         # name -> count since start (for the final log)
        self.counters = {"packets": 0, "queries": 0, "questions": 0, "undecodable": 0, "other_linktype": 0}
        self.last_emit_ns = time.time_ns()

    def count(self, names: list[str], ts_ns: int) -> None:
        """Record one query message asking for `names`."""
        self.counters["queries"] += 1
        for name in names:
            self.counters["questions"] += 1
            w = self.window.get(name)
            if w is None:
                self.window[name] = [1, ts_ns, ts_ns]
            else:
                w[0] += 1
                w[2] = ts_ns
            self.totals[name] = self.totals.get(name, 0) + 1

    def on_tick(self, now_ns: int) -> None:
        """Emit the window's counts every `interval` seconds."""
        if now_ns - self.last_emit_ns >= self.interval_ns:
            self.emit_window()
            self.last_emit_ns = now_ns

    def emit_window(self) -> None:
        """Send the counts since the last emission on the 'dns' stream and start a new window."""
        records = [{"qname": n, "count": c, "first_ts_ns": f, "last_ts_ns": la}
                   for n, (c, f, la) in sorted(self.window.items(), key=lambda kv: (-kv[1][0], kv[0]))]
        self.window = {}
        self.ctx.emit(STREAM, records)

    def stop(self) -> None:
        """Emit what is left and log the most queried names."""
        self.emit_window()
        if self.top:
            best = sorted(self.totals.items(), key=lambda kv: (-kv[1], kv[0]))[:self.top]
            self.ctx.log.info("%s: %d queries, %d names; top %d: %s", self.ctx.name, self.counters["queries"],
                              len(self.totals), len(best), ", ".join(f"{n} {c}" for n, c in best) or "none")

    def stats(self) -> dict:
        """Packets seen, queries and questions counted, messages that did not decode."""
        return {**self.counters, "names": len(self.totals)}

"""The agent's status snapshot: per queue rates and drops, ring fill, per consumer accounting,
per worker process state and CPU. One dict (schema version 1, documented in the README under
"Status"), written to status.json and rendered by /metrics, `capfan status` and `capfan top`."""
from __future__ import annotations

import os
import time

import numpy as np

from capfan import errors
from capfan import ring as ringlib
from capfan.agents.worker import read_state

SCHEMA_VERSION = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
NIC_DROP_COUNTERS = ("rx_missed_errors", "rx_fifo_errors", "rx_over_errors")
# the "health" stream the exporter ships to the collector: one record per queue
HEALTH_DTYPE = np.dtype([("ts_ns", "<u8"), ("rx_packets", "<u8"), ("rx_bytes", "<u8"), ("published", "<u8"),
                         ("kernel_drops", "<u8"), ("ring_drops", "<u8"), ("nic_drops", "<u8"),
                         ("consumer_dropped", "<u8")])


def proc_cpu_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds used, resident bytes) of a process from /proc, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    # after the command name: state is field 3, utime 14 and stime 15 (1-based, proc(5))
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, rss_pages * _PAGE


def nic_counters(iface: str, sysfs: str = "/sys") -> dict | None:
    """rx packets/bytes and NIC-level drops (missed, FIFO, overrun) of an interface."""
    base = os.path.join(sysfs, "class", "net", iface, "statistics")

    def read(name):
        try:
            with open(os.path.join(base, name), encoding="ascii") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0
    if not os.path.isdir(base):
        return None
    return {"rx_packets": read("rx_packets"), "rx_bytes": read("rx_bytes"),
            "nic_drops": sum(read(n) for n in NIC_DROP_COUNTERS)}


class StatusBuilder:
    """Builds snapshots; keeps the rings open and the previous numbers for rates."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._rings: dict[str, ringlib.Ring] = {}
        self._prev_t: float | None = None
        self._prev: dict = {}

    def _ring(self, name: str):
        r = self._rings.get(name)
        if r is None:
            try:
                r = self._rings[name] = ringlib.Ring(name)
            except errors.RingError:
                return None
        return r

    def _rate(self, key, value: float, dt: float | None) -> float:
        prev = self._prev.get(key)
        self._next[key] = value
        if prev is None or not dt:
            return 0.0
        return max(0.0, (value - prev) / dt)

    def build(self, agent: dict, procs: list, warnings: list[str]) -> dict:
        """A snapshot of the whole agent now."""
        now = time.monotonic()
        dt = None if self._prev_t is None else now - self._prev_t
        self._next: dict = {}
        states = {p.id: (read_state(p.state_file) or {}) for p in procs}
        analyzers = {(p.spec.ring, p.spec.consumer): p for p in procs if p.spec.kind == "analyzer"}
        queues = [self._queue(p, states[p.id], analyzers, dt) for p in procs if p.spec.kind == "capture"]
        workers = [self._worker(p, states[p.id], dt) for p in procs]
        interfaces = {}
        for w in self.cfg.captures:
            if w.live and w.interface not in interfaces:
                c = nic_counters(w.interface)
                if c is not None:
                    interfaces[w.interface] = c
        for q in queues:
            q["nic_drops"] = interfaces.get(q["interface"], {}).get("nic_drops")
        self._prev, self._prev_t = self._next, now
        return {"version": SCHEMA_VERSION, "agent": agent, "interfaces": interfaces, "queues": queues,
                "workers": workers, "warnings": list(warnings)}

    def _queue(self, p, state: dict, analyzers: dict, dt) -> dict:
        w = p.spec
        st = state.get("stats") or {}
        cur = lambda k: int(p.base.get(k, 0)) + (int(st.get(k, 0)) if p.pid is not None else 0)  # noqa: E731
        q = {"ring": w.ring, "capture": w.capture, "interface": w.interface, "source": w.source, "queue": w.queue,
             "rx_packets": cur("packets"), "rx_bytes": cur("bytes"), "kernel_drops": cur("kernel_drops"),
             "ring_drops": 0, "published": 0, "ring_used": 0, "ring_size": w.geometry["ndesc"],
             "ring_fill": 0.0, "consumers": []}
        q["rx_pps"] = round(self._rate(("pkts", w.ring), q["rx_packets"], dt), 1)
        q["rx_bps"] = round(8 * self._rate(("bytes", w.ring), q["rx_bytes"], dt), 1)
        r = self._ring(w.ring)
        if r is None:
            return q
        rs = r.stats()
        q.update(ring_drops=rs["dropped_full"], published=rs["head"], ring_size=rs["ndesc"])
        most_behind = 0
        for c in r.consumers():
            # detached: an analyzer that finished keeps its slot, so its final numbers stay visible
            if c["state"] not in ("active", "dead", "detached"):
                continue
            lag = max(0, rs["head"] - c["cursor"])
            if c["alive"]:
                most_behind = max(most_behind, lag)
            a = analyzers.get((w.ring, c["name"]))
            row = {
                "consumer": c["name"], "analyzer": a.spec.analyzer if a else None, "policy": c["policy"],
                "state": c["state"] if c["alive"] or c["state"] != "active" else "dead",
                "group": c["group"], "member": c["group_member"], "group_size": c["group_size"],
                "pid": c["pid"] if c["alive"] else None, "delivered": c["delivered"], "dropped": c["dropped"],
                "filtered": c["filtered"], "demotions": c["demotions"], "lag": lag, "spin_us": c["spin_us"],
                "rate_pps": round(self._rate(("consumer", w.ring, c["name"]), c["delivered"] + c["filtered"], dt), 1),
            }
            q["consumers"].append(row)
        # fill: the backlog of the slowest live consumer, as a share of the ring; a reliable
        # consumer at 100 % holds the capture, a lossy one starts losing packets
        q["ring_used"] = most_behind
        q["ring_fill"] = round(min(1.0, most_behind / rs["ndesc"]), 6) if rs["ndesc"] else 0.0
        return q

    def _worker(self, p, state: dict, dt) -> dict:
        w = p.spec
        pid = p.pid
        cpu_s = rss = None
        cpu_pct = 0.0
        if pid is not None:
            got = proc_cpu_rss(pid)
            if got is not None:
                cpu_s, rss = got
                cpu_pct = round(100 * self._rate(("cpu", pid), cpu_s, dt), 1)
        return {"id": p.id, "kind": w.kind, "ring": w.ring,
                "consumer": getattr(w, "consumer", None), "analyzer": getattr(w, "analyzer", None),
                "pid": pid, "state": p.state, "restarts": p.restarts, "last_exit": p.last_exit,
                "cpu": w.cpu, "cpu_percent": cpu_pct, "cpu_seconds": round(cpu_s, 3) if cpu_s is not None else None,
                "rss_bytes": rss, "uptime": round(time.monotonic() - p.started, 1) if pid is not None else None,
                "stats": state.get("stats") or {}}

    def close(self) -> None:
        """Unmap the rings."""
        for r in self._rings.values():
            r.close()
        self._rings.clear()


def health_records(snapshot: dict) -> dict[str, np.ndarray]:
    """ring -> one HEALTH_DTYPE record of that queue's counters (the collector keeps the latest)."""
    out = {}
    now = int(snapshot["agent"]["time"] * 1e9)
    for q in snapshot["queues"]:
        r = np.zeros(1, dtype=HEALTH_DTYPE)
        r["ts_ns"] = now
        for k in ("rx_packets", "rx_bytes", "published", "kernel_drops", "ring_drops"):
            r[k] = q.get(k) or 0
        r["nic_drops"] = q.get("nic_drops") or 0
        r["consumer_dropped"] = sum(c["dropped"] for c in q["consumers"])
        out[q["ring"]] = r
    return out

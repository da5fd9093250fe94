"""Run one analyzer as its own process on a ring consumer: pinning, the batch/tick loop, clean
shutdown on SIGTERM/SIGINT (the analyzer's stop() flushes), live status and a final summary."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import traceback

from capfan import errors
from capfan.analyzers import Context, load, validate_options
from capfan.ring import Consumer

log = logging.getLogger("capfan.analyze")


class AnalyzerFailed(errors.CapfanError):
    """The analyzer's own code raised; the consumer slot is kept so a restart resumes."""


@dataclasses.dataclass
class RunSpec:
    """Everything `capfan analyze` needs to run one analyzer."""

    ring: str
    analyzer: str
    options: dict = dataclasses.field(default_factory=dict)
    name: str | None = None          # consumer name; default: analyzer[-group-member]
    policy: str | None = None        # default: the analyzer's own
    group: str | None = None
    member: int = 0
    group_size: int = 0
    cpu: int | None = None
    spin_us: int = 0
    stall_budget_us: int = 1_000_000
    start: str = "head"
    tick: float = 1.0                # seconds between on_tick calls
    exit_on_eof: bool = False        # stop once the producer is gone and the ring is drained
    keep: bool = False               # keep the consumer slot at exit (next run resumes)
    status_every: float = 0.0        # seconds between status lines on stderr (0 = none)


def consumer_name(spec: RunSpec) -> str:
    """The ring consumer name a spec attaches as."""
    if spec.name:
        return spec.name
    base = spec.analyzer.rpartition(":")[2]  # module:Class -> Class
    return f"{base}-{spec.group}-{spec.member}" if spec.group else base


def pin(cpu: int) -> None:
    """Pin this process to one CPU; ConfigError when the CPU is not ours to use."""
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise errors.ConfigError("cpu", f"CPU {cpu} is not available to this process "
                                        f"(allowed: {_cpu_list(allowed)})")
    os.sched_setaffinity(0, {cpu})


def _cpu_list(cpus) -> str:
    return ",".join(str(c) for c in sorted(cpus))


class Runner:
    """One analyzer instance bound to one consumer; `run()` returns the summary dict."""

    def __init__(self, spec: RunSpec, emit=None, report=None, report_every: float = 1.0):
        self.spec = spec
        # report(dict): called once attached, then every report_every seconds (the agent's
        # workers write it to their state file)
        self._report, self._report_every = report, report_every
        cls = load(spec.analyzer)
        self.config = validate_options(spec.analyzer, getattr(cls, "options", {}), spec.options, prefix="-o ")
        self.analyzer = cls()
        self.policy = spec.policy or getattr(cls, "policy", "reliable")
        if spec.group and not 0 <= spec.member < spec.group_size:
            raise errors.ConfigError("member", f"group member must be 0..{spec.group_size - 1} for a group "
                                               f"of {spec.group_size}, not {spec.member}")
        self._emit = emit
        self._stop = False
        self.consumer: Consumer | None = None
        self.ctx: Context | None = None
        self.batches = 0
        self.packets = 0

    def request_stop(self, *_):
        """Signal handler: finish the current batch, then stop cleanly."""
        self._stop = True

    def _eof(self, st: dict, seen_producer: bool) -> bool:
        """True once the producer seen earlier is gone and every packet it left is read
        (`st`: the ring's stats, read once per idle poll)."""
        if st["producer_alive"] or not seen_producer:
            return False
        return self.consumer.stats()["cursor"] >= st["head"]

    def run(self) -> dict:
        """Attach, start the analyzer, loop until stopped, stop it, detach; returns a summary."""
        spec = self.spec
        if spec.cpu is not None:
            pin(spec.cpu)
        old = {s: signal.signal(s, self.request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        cname = consumer_name(spec)
        self.consumer = Consumer(spec.ring, cname, policy=self.policy, stall_budget_us=spec.stall_budget_us,
                                 spin_us=spec.spin_us, group=spec.group, member=spec.member,
                                 group_size=spec.group_size if spec.group else 0, start=spec.start)
        rs = self.consumer.ring.stats()
        gen0 = rs["generation"]
        # A producer counts as "seen" if it is alive now, appears later (generation bumps), or
        # left packets we are told to start from.
        seen = bool(rs["producer_alive"]) or (spec.start == "oldest" and rs["head"] > rs["tail"])
        self.ctx = Context(spec.analyzer, self.config, spec.ring, consumer=self.consumer, emit=self._emit)
        failed = None
        t0 = time.monotonic()
        cpu0 = time.process_time()
        try:
            self.analyzer.start(self.ctx)
            next_report = self._send_report(0.0)
            next_tick = time.monotonic() + spec.tick
            next_status = time.monotonic() + spec.status_every if spec.status_every > 0 else None
            last = (t0, 0)
            while not self._stop:
                wait = max(0.0, min(0.2, next_tick - time.monotonic()))
                b = self.consumer.next(timeout=wait)
                if b is not None:
                    self.batches += 1
                    self.packets += len(b)
                    self.analyzer.on_batch(b)
                now = time.monotonic()
                if now >= next_tick:
                    self.analyzer.on_tick(time.time_ns())
                    next_tick = now + spec.tick
                if next_report is not None and now >= next_report:
                    next_report = self._send_report(now)
                if next_status is not None and now >= next_status:
                    last = self._status_line(last)
                    next_status = now + spec.status_every
                if b is None and spec.exit_on_eof:
                    st = self.consumer.ring.stats()
                    seen = seen or bool(st["producer_alive"]) or st["generation"] != gen0
                    if self._eof(st, seen):
                        break
        except errors.CapfanError:
            raise
        except Exception as e:
            failed = e
            sys.stderr.write(traceback.format_exc())
        finally:
            try:
                self.analyzer.stop()
            except Exception as e:
                failed = failed or e
                sys.stderr.write(traceback.format_exc())
            if self.consumer._current is not None:
                self.consumer._current.release()  # count the last batch as delivered
            summary = self.summary(time.monotonic() - t0, time.process_time() - cpu0)
            self.consumer.close(keep=spec.keep or failed is not None)
            for s, h in old.items():
                signal.signal(s, h)
        if failed is not None:
            raise AnalyzerFailed(f"analyzer {spec.analyzer!r} raised {type(failed).__name__}: {failed} "
                                 f"(consumer {cname!r} kept: a restart resumes where it stopped)")
        return summary

    def _send_report(self, now: float) -> float | None:
        """Hand live counters to the report callback; the next time to do it (None: no callback)."""
        if self._report is None:
            return None
        try:
            astats = self.analyzer.stats()
        except Exception as e:  # informative only
            astats = {"error": str(e)}
        self._report({"batches": self.batches, "packets": self.packets, "records": dict(self.ctx.emitted),
                      "analyzer": astats})
        return (now or time.monotonic()) + self._report_every

    def _status_line(self, last):
        now = time.monotonic()
        st = self.consumer.stats()
        rate = (self.packets - last[1]) / max(now - last[0], 1e-9)
        lag = self.consumer.ring.stats()["head"] - st["cursor"]
        extra = " ".join(f"{k}={v}" for k, v in self.ctx.emitted.items())
        sys.stderr.write(f"{self.spec.ring} {consumer_name(self.spec)}: {rate / 1e6:.3f} Mpps "
                         f"delivered={st['delivered']} dropped={st['dropped']} lag={lag} {extra}\n")
        sys.stderr.flush()
        return now, self.packets

    def summary(self, seconds: float, cpu: float) -> dict:
        """Counters of this run: consumer accounting, records emitted, the analyzer's stats."""
        st = self.consumer.stats() if self.consumer and self.consumer._c is not None else {}
        try:
            astats = self.analyzer.stats()
        except Exception as e:  # stats are informative; never fail a clean shutdown over them
            astats = {"error": str(e)}
        return {
            "ring": self.spec.ring, "analyzer": self.spec.analyzer, "consumer": consumer_name(self.spec),
            "policy": self.policy, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "batches": self.batches, "packets": self.packets,
            "delivered": st.get("delivered"), "dropped": st.get("dropped"), "filtered": st.get("filtered"),
            "demotions": st.get("demotions"), "records": dict(self.ctx.emitted) if self.ctx else {},
            "analyzer_stats": astats,
        }

"""The per-host supervisor behind `capfan agent`: rings, worker processes, restarts, shutdown.

Start-up order: rings are created, analyzers start and attach (so they miss nothing), then the
captures start. Start-up is all or nothing: a worker that fails before it is ready stops the
agent with the worker's own error message. Afterwards a worker that dies is restarted with
exponential backoff (a restarted analyzer resumes from its ring cursor: nothing in the window is
lost) until it failed `max_failures` times within `window` seconds; then it is given up loudly.

Shutdown (SIGTERM/SIGINT, or the end of every replay with exit_when_done): captures stop first,
analyzers get `drain_timeout` seconds to read what is left, then SIGTERM (their stop() flushes
open flows), then the rings are removed. XDP programs go with their capture's socket; one left
by a killed capture worker is removed by the supervisor.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time

from capfan import errors
from capfan import ring as ringlib
from capfan.agents import placement
from capfan.agents.config import AgentConfig
from capfan.agents.snapshot import StatusBuilder
from capfan.agents.worker import read_state, write_state

log = logging.getLogger("capfan.agent")
POLL_S = 0.05


class AgentError(errors.CapfanError):
    """The agent could not start or had to stop: a worker failed to start, a ring is in use."""


@dataclasses.dataclass
class Proc:
    """A worker spec and the state of its current process."""

    spec: object                      # CaptureWorker or AnalyzerWorker
    state_file: str
    popen: subprocess.Popen | None = None
    state: str = "starting"           # starting | running | backoff | failed | done | stopped
    restarts: int = 0
    last_exit: str | None = None
    next_start: float = 0.0
    started: float = 0.0              # monotonic time of the current process's start
    failures: collections.deque = dataclasses.field(default_factory=collections.deque)
    ready: bool = False
    error: str | None = None
    base: dict = dataclasses.field(default_factory=dict)   # counters of earlier incarnations

    @property
    def id(self) -> str:
        """The worker id (capture-eth0.q0, analyzer-eth0.q0-flows)."""
        return self.spec.id

    @property
    def pid(self) -> int | None:
        """pid of the live process, None when not running."""
        return self.popen.pid if self.popen is not None and self.popen.returncode is None else None


def describe_exit(rc: int) -> str:
    """'exit status 2' / 'killed by SIGKILL' from a Popen return code."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class Supervisor:
    """Runs one agent config until stopped; `run()` returns the process exit code."""

    def __init__(self, cfg: AgentConfig, on_event=None):
        self.cfg = cfg
        self.procs: list[Proc] = []
        self.warnings: list[str] = []
        self.stop_signal: int | None = None
        self.hurry = False
        self.state = "starting"
        self.started = time.time()
        self._metrics = None
        self._status = None
        self._health: dict = {}
        self._last_snapshot: dict | None = None
        self._created: list[str] = []
        self._say = on_event or (lambda msg: log.warning(msg))
        self._env = dict(os.environ, CAPFAN_RING_DIR=cfg.ring_dir, CAPFAN_RUN_DIR=cfg.run_dir)

    # ---------------------------------------------------------------- set-up

    def place(self) -> None:
        """Choose each worker's CPU and collect placement warnings."""
        # captures first: with "auto" they get the best cores (on the NIC's node, not CPU 0)
        workers = [*self.cfg.captures, *self.cfg.analyzers, *([self.cfg.exporter] if self.cfg.exporter else [])]
        reqs = [placement.PinRequest(key=f"{w.key}.cpus", label=w.label, want=w.cpu_want,
                                     iface=w.interface,
                                     queue=(w.queue if getattr(w, "live", False) else None),
                                     live=bool(getattr(w, "live", False)))
                for w in workers]
        cpus, warnings = placement.place(reqs)
        for w, cpu in zip(workers, cpus):
            w.cpu = cpu
        self.warnings.extend(warnings)
        from capfan.agents.metrics import is_loopback  # noqa: PLC0415
        if self.cfg.metrics and not is_loopback(self.cfg.metrics[0]):
            host = self.cfg.metrics[0]
            self.warnings.append(f"metrics listen on {host}: anyone who reaches it sees this sensor's "
                                 "traffic numbers; keep it on loopback or firewall it")

    def _prepare_dirs(self) -> None:
        try:
            os.makedirs(os.path.join(self.cfg.state_dir, "workers"), exist_ok=True)
            os.makedirs(self.cfg.out, exist_ok=True)
        except OSError as e:
            raise errors.ConfigError("agent.run_dir" if self.cfg.run_dir in (e.filename or "") else "agent.out",
                                     f"cannot create {e.filename}: {e.strerror}") from None
        if self.cfg.exporter:
            try:
                os.makedirs(self.cfg.exporter.spool_dir, exist_ok=True)
            except OSError as e:
                raise errors.ConfigError("export.spool_dir", f"cannot create {e.filename}: {e.strerror}") from None
        for name in os.listdir(os.path.join(self.cfg.state_dir, "workers")):
            os.unlink(os.path.join(self.cfg.state_dir, "workers", name))  # a previous run's leftovers

    def _create_rings(self) -> None:
        # this process opens the rings too, and removes XDP programs killed captures left
        os.environ["CAPFAN_RING_DIR"] = self.cfg.ring_dir
        os.environ["CAPFAN_RUN_DIR"] = self.cfg.run_dir
        for w in self.cfg.captures:
            if os.path.exists(ringlib.ring_path(w.ring)):
                try:
                    with ringlib.Ring(w.ring) as r:
                        st = r.stats()
                except errors.RingError:
                    st = {"producer_alive": 0}
                if st["producer_alive"]:
                    raise AgentError(f"ring {w.ring} is in use by a live capture (pid {st['producer_pid']}): "
                                     "is another capfan agent running with this config? Stop it first, "
                                     "or give this capture another name")
                log.info("removing stale ring %s left by an earlier run", w.ring)
                ringlib.remove(w.ring)
            g = w.geometry
            ringlib.create(w.ring, ndesc=g["ndesc"], arena_bytes=g["arena"], snaplen=g["snaplen"],
                           full_policy=g["full"])
        self._created = [w.ring for w in self.cfg.captures]

    def _proc_spec(self, p: Proc) -> dict:
        w = p.spec
        spec = dataclasses.asdict(w)
        spec.update(parent=os.getpid(), state_file=p.state_file, cpu=w.cpu,
                    title=("cf:" + {"capture": w.ring, "analyzer": getattr(w, "consumer", "")}.get(w.kind, w.kind))[:15])
        if w.kind == "analyzer" and self.cfg.exit_when_done:
            spec["exit_on_eof"] = True
        if w.kind == "analyzer" and self.cfg.exporter:
            e = self.cfg.exporter
            spec["spool"] = {"dir": e.spool_dir, "host": e.host, "max_bytes": e.spool_max, "policy": e.spool_policy}
        return spec

    def _spawn(self, p: Proc) -> None:
        try:
            os.unlink(p.state_file)
        except FileNotFoundError:
            pass
        p.ready, p.error = False, None
        # an analyzer runs in its own output directory: relative paths in its options (a
        # recorder's dir) land there, apart from every other process
        cwd = p.spec.out if p.spec.kind == "analyzer" else None
        if cwd:
            os.makedirs(cwd, exist_ok=True)
        p.popen = subprocess.Popen([sys.executable, "-m", "capfan.agents.worker", json.dumps(self._proc_spec(p))],
                                   env=self._env, stdin=subprocess.DEVNULL, cwd=cwd)
        p.started = time.monotonic()
        p.state = "starting"

    def _start_all(self, procs: list[Proc]) -> None:
        """Start the workers and wait until each reports ready (False: a signal came first);
        AgentError with the worker's message if one fails."""
        for p in procs:
            self._spawn(p)
        deadline = time.monotonic() + self.cfg.start_timeout
        pending = list(procs)
        while pending:
            if self.stop_signal is not None:
                return False
            for p in list(pending):
                st = read_state(p.state_file) or {}
                rc = p.popen.poll()
                if st.get("ready"):
                    p.ready, p.state = True, "running"
                    pending.remove(p)
                elif rc is not None:
                    if st.get("state") == "done":  # a replay that ended while we looked elsewhere
                        p.ready, p.state = True, "done"
                        pending.remove(p)
                        continue
                    why = st.get("error") or describe_exit(rc)
                    raise AgentError(f"{p.spec.label} failed to start ({p.spec.key}): {why}")
            if time.monotonic() > deadline:
                slow = ", ".join(p.spec.label for p in pending)
                raise AgentError(f"{slow} not ready after {self.cfg.start_timeout:g} s "
                                 "(agent.start_timeout); see the worker's messages above")
            time.sleep(POLL_S)
        return True

    # ---------------------------------------------------------------- running

    def _install_signals(self):
        def handler(signum, frame):
            if self.stop_signal is not None:
                self.hurry = True  # a second signal: stop waiting for workers, clean up now
            self.stop_signal = signum
        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def run(self) -> int:
        """Start everything, supervise until stopped, shut down cleanly; the exit code."""
        old = self._install_signals()
        code = 0
        try:
            self._prepare_dirs()
            self.place()
            for w in self.warnings:
                self._say(f"warning: {w}")
            self._create_rings()
            self.procs = [Proc(w, os.path.join(self.cfg.state_dir, "workers", f"{w.id}.json"))
                          for w in self.cfg.workers]
            self._status = StatusBuilder(self.cfg)
            self._start_metrics()
            if not (self._start_all([p for p in self.procs if p.spec.kind in ("exporter", "analyzer")])
                    and self._start_all([p for p in self.procs if p.spec.kind == "capture"])):
                return 0  # stopped while starting: the finally below cleans up
            self.state = "running"
            self._say(f"agent {self.cfg.name}: {len(self.cfg.captures)} capture(s), "
                      f"{len(self.cfg.analyzers)} analyzer process(es) running")
            self.write_status()
            code = self._supervise()
        finally:
            self.state = "stopping"
            try:
                self.shutdown()
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
        return code

    def _supervise(self) -> int:
        next_status = time.monotonic() + self.cfg.status_interval
        next_health = time.monotonic()
        while self.stop_signal is None:
            now = time.monotonic()
            for p in self.procs:
                self._check(p, now)
            if self._all_captures_given_up():
                self._say(f"error: every capture worker failed; agent {self.cfg.name} stops")
                return 1
            if self.cfg.exit_when_done and self._replays_done():
                self._say(f"agent {self.cfg.name}: every replay ended and the analyzers drained")
                break
            if now >= next_status:
                self.write_status()
                next_status = now + self.cfg.status_interval
            if self.cfg.exporter and now >= next_health:
                self.send_health()
                next_health = now + self.cfg.exporter.health_interval
            time.sleep(POLL_S)
        return 0

    def _check(self, p: Proc, now: float) -> None:
        """Notice a worker's exit (restart it or give up) and start it again after its backoff."""
        if p.state == "backoff" and now >= p.next_start:
            p.restarts += 1
            self._say(f"restarting {p.spec.label} (restart {p.restarts})")
            self._spawn(p)
            return
        if p.popen is None or p.state in ("backoff", "failed", "done", "stopped"):
            return
        st = None
        if not p.ready:
            st = read_state(p.state_file) or {}
            if st.get("ready"):
                p.ready, p.state = True, "running"
        rc = p.popen.poll()
        if rc is None:
            return
        st = read_state(p.state_file) or {}
        self._remember_counters(p, st)
        if rc == 0 and st.get("state") == "done":
            p.state, p.last_exit = "done", "finished"
            self._say(f"{p.spec.label}: finished" + (" (replay ended)" if p.spec.kind == "capture" else ""))
            return
        p.last_exit = describe_exit(rc) + (f": {st['error']}" if st.get("error") else "")
        if p.spec.kind == "capture" and p.spec.source == "afxdp":
            _remove_stale_xdp(p.spec.interface)
        window = self.cfg.restart["window"]
        p.failures.append(now)
        while p.failures and now - p.failures[0] > window:
            p.failures.popleft()
        if len(p.failures) >= self.cfg.restart["max_failures"]:
            p.state = "failed"
            self._say(f"error: giving up on {p.spec.label}: it failed {len(p.failures)} times within "
                      f"{window:g} s (last: {p.last_exit}); fix the cause and restart the agent")
            return
        delay = min(self.cfg.restart["backoff_max"], self.cfg.restart["backoff_initial"] * 2 ** (len(p.failures) - 1))
        p.state, p.next_start = "backoff", now + delay
        self._say(f"warning: {p.spec.label} died ({p.last_exit}); restarting in {delay:g} s")

    def _remember_counters(self, p: Proc, st: dict) -> None:
        """Keep a dead capture's counters so the queue totals stay cumulative across restarts."""
        if p.spec.kind != "capture":
            return
        for k in ("packets", "bytes", "kernel_drops"):
            p.base[k] = p.base.get(k, 0) + int((st.get("stats") or {}).get(k, 0))

    def _all_captures_given_up(self) -> bool:
        caps = [p for p in self.procs if p.spec.kind == "capture"]
        return bool(caps) and all(p.state == "failed" for p in caps)

    def _replays_done(self) -> bool:
        """Every capture finished and every analyzer has read everything (or exited)."""
        if any(p.state not in ("done", "failed") for p in self.procs if p.spec.kind == "capture"):
            return False
        return all(p.state in ("done", "failed") for p in self.procs if p.spec.kind == "analyzer")

    # ---------------------------------------------------------------- status

    def _start_metrics(self) -> None:
        if not self.cfg.metrics:
            return
        from capfan.agents.metrics import MetricsServer  # noqa: PLC0415
        self._metrics = MetricsServer(*self.cfg.metrics, snapshot=self.snapshot)
        self._metrics.start()

    @property
    def metrics_address(self) -> str | None:
        """host:port the metrics server listens on (the bound port when 0 was configured)."""
        return self._metrics.address if self._metrics is not None else None

    def snapshot(self) -> dict:
        """The current status snapshot (last one written; built fresh before the first)."""
        return self._last_snapshot if self._last_snapshot is not None else self._build_snapshot()

    def _build_snapshot(self) -> dict:
        agent = {"name": self.cfg.name, "pid": os.getpid(), "config": self.cfg.path, "started": self.started,
                 "time": time.time(), "uptime": round(time.time() - self.started, 3), "state": self.state,
                 "metrics": self.metrics_address}
        return self._status.build(agent, self.procs, self.warnings)

    def write_status(self) -> None:
        """Build a snapshot and write <state_dir>/status.json."""
        if self._status is None:
            return
        snap = self._build_snapshot()
        self._last_snapshot = snap
        write_state(os.path.join(self.cfg.state_dir, "status.json"), snap)

    def send_health(self) -> None:
        """Spool one health record per queue (rx, drops) for the collector's health view."""
        from capfan.agents.spool import SpoolWriter  # noqa: PLC0415 - only when exporting
        from capfan.agents.snapshot import health_records  # noqa: PLC0415

        e = self.cfg.exporter
        snap = self.snapshot()
        for ring, rec in health_records(snap).items():
            w = self._health.get(ring)
            if w is None:
                w = self._health[ring] = SpoolWriter(e.spool_dir, e.host, ring, e.spool_max, e.spool_policy)
            w("health", rec)

    # ---------------------------------------------------------------- shutdown

    def _stop_procs(self, procs: list[Proc]) -> None:
        """SIGTERM, wait stop_timeout, then SIGKILL what is left."""
        live = [p for p in procs if p.pid is not None]
        for p in live:
            p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.stop_timeout
        while any(p.popen.poll() is None for p in live) and time.monotonic() < deadline and not self.hurry:
            time.sleep(POLL_S)
        for p in live:
            if p.popen.poll() is None:
                why = "a second signal came" if self.hurry else \
                    f"it did not stop within {self.cfg.stop_timeout:g} s (agent.stop_timeout)"
                self._say(f"warning: killing {p.spec.label}: {why}")
                p.popen.kill()
                p.popen.wait()
                if p.spec.kind == "capture" and p.spec.source == "afxdp":
                    _remove_stale_xdp(p.spec.interface)
            self._remember_counters(p, read_state(p.state_file) or {})
            if p.state not in ("done", "failed"):
                p.state = "stopped"
        for p in procs:
            if p.state == "backoff":
                p.state = "stopped"

    def _drain(self) -> None:
        """Let running analyzers read what the captures left in the rings (drain_timeout)."""
        deadline = time.monotonic() + self.cfg.drain_timeout
        rings = {}
        try:
            for name in self._created:
                try:
                    rings[name] = ringlib.Ring(name)
                except errors.RingError:
                    pass
            while time.monotonic() < deadline and not self.hurry:
                behind = False
                for r in rings.values():
                    head = r.stats()["head"]
                    behind |= any(c["alive"] and c["state"] == "active" and c["cursor"] < head
                                  for c in r.consumers())
                if not behind:
                    return
                time.sleep(POLL_S)
            self._say(f"warning: analyzers still behind after {self.cfg.drain_timeout:g} s "
                      "(agent.drain_timeout); stopping them anyway")
        finally:
            for r in rings.values():
                r.close()

    def _drain_spool(self) -> None:
        """Give the exporter export.drain_timeout seconds to deliver what the analyzers flushed;
        anything left stays in the spool and goes out on the next start."""
        e = self.cfg.exporter
        deadline = time.monotonic() + e.drain_timeout
        while time.monotonic() < deadline and not self.hurry:
            if _unacked(e.spool_dir) == 0:
                return
            time.sleep(POLL_S)
        left = _unacked(e.spool_dir)
        if left:
            self._say(f"warning: {left} record batch(es) not yet acknowledged after {e.drain_timeout:g} s "
                      f"(export.drain_timeout); they stay in {e.spool_dir} and are sent on the next start")

    def shutdown(self) -> None:
        """Stop captures, drain, stop analyzers (they flush), remove rings and state files."""
        self.state = "stopping"
        if self.stop_signal is not None:
            self._say(f"agent {self.cfg.name}: {signal.Signals(self.stop_signal).name}: stopping the captures, "
                      "letting the analyzers drain and flush")
        caps = [p for p in self.procs if p.spec.kind == "capture"]
        anas = [p for p in self.procs if p.spec.kind == "analyzer"]
        exps = [p for p in self.procs if p.spec.kind == "exporter"]
        self._stop_procs(caps)
        if any(p.pid is not None for p in anas):
            self._drain()
        self._stop_procs(anas)
        if self.cfg.exporter and self._status is not None:
            self.write_status()
            self.send_health()  # the final counters
        if any(p.pid is not None for p in exps):
            self._drain_spool()
        self._stop_procs(exps)
        if self._status is not None:
            self.state = "done"
            self.write_status()
            self._status.close()
        if self._metrics is not None:
            self._metrics.close()
        for name in self._created:
            try:
                ringlib.remove(name)
            except errors.RingNotFound:
                pass
        for p in self.procs:
            try:
                os.unlink(p.state_file)
            except FileNotFoundError:
                pass
        if self._created:
            self._say(f"agent {self.cfg.name} stopped; rings {', '.join(self._created)} removed")


def _unacked(spool_dir: str) -> int:
    """Batches in a spool not yet acknowledged (incoming, being claimed, outgoing)."""
    from capfan.agents.spool import spool_stats  # noqa: PLC0415 - only when exporting

    st = spool_stats(spool_dir)
    return st["incoming_batches"] + st["claiming_batches"] + st["outgoing_batches"]


def _remove_stale_xdp(iface: str | None) -> None:
    """Detach an XDP program a killed capture left on the interface (none if a live one uses it)."""
    if not iface:
        return
    try:
        from capfan.sources import afxdp  # noqa: PLC0415
        if afxdp.cleanup(iface):
            log.warning("removed the XDP program a killed capture left on %s", iface)
    except errors.CapfanError as e:
        log.warning("could not check %s for a stale XDP program: %s", iface, e)

"""A worker process of the agent: `python -m capfan.agents.worker SPEC_JSON`.

Two kinds, both pinned to their CPU and tied to the supervisor's life (PR_SET_PDEATHSIG):
- capture: opens one backend on one NIC queue (or a replay) and publishes into its ring;
- analyzer: runs one analyzer on one ring consumer (capfan.analyzers.runner).

A worker reports through its state file (JSON, replaced atomically): `ready` once it captures or
is attached, live counters every second, and `error` with a one-line message when it fails, so
the supervisor can tell a configuration problem from a crash.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

from capfan import errors

REPORT_EVERY_S = 1.0
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15


def write_state(path: str, state: dict) -> None:
    """Replace the JSON state file atomically (readers never see half a file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, separators=(",", ":"), default=str)
    os.replace(tmp, path)


def read_state(path: str) -> dict | None:
    """A worker's last state, or None if it wrote none yet."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _prctl(option: int, arg) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor still stops us explicitly
        pass


def bind_to_parent(parent: int, title: str) -> None:
    """Die with the supervisor (SIGTERM when it goes away) and show a readable name in top/ps."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before the line above took effect
        sys.exit(1)
    _prctl(PR_SET_NAME, ctypes.c_char_p(title.encode()[:15]))


class Reporter:
    """Writes the worker's state file: ready flag, error, counters."""

    def __init__(self, path: str, kind: str):
        self.path = path
        self.state = {"pid": os.getpid(), "kind": kind, "ready": False, "state": "starting", "error": None,
                      "time": time.time(), "stats": {}}

    def update(self, **fields) -> None:
        """Merge fields into the state and write it."""
        self.state.update(fields)
        self.state["time"] = time.time()
        write_state(self.path, self.state)


def run_capture(spec: dict, rep: Reporter) -> int:
    """Capture into the ring until SIGTERM (exit 0) or the end of a replay (exit 0, state done)."""
    from capfan import ring as ringlib  # noqa: PLC0415 - the C core loads after pinning
    from capfan.capturecli import StopOnSignal, capture_loop, open_capture_source  # noqa: PLC0415
    from capfan.sources import source_class  # noqa: PLC0415

    stop = StopOnSignal().install()
    opts = dict(spec["options"])
    if spec["source"] == "pcap":
        src = source_class("pcap")(**opts)
    else:
        src = open_capture_source(spec["source"], spec["interface"], opts)
    producer = ringlib.Producer(spec["ring"])
    try:
        src.prepare(producer)
        describe = src.describe() if hasattr(src, "describe") else f"{spec['source']} {spec['interface']}"
        rep.update(ready=True, state="running", describe=describe, stats=_capture_stats(src, producer))
        # `capfan capture`'s loop: slices in C, a tick (here: the state file) every second
        capture_loop(src, producer, None, None, stop, lambda: rep.update(stats=_capture_stats(src, producer)))
        # without a count or a duration the loop ends on a signal or at the end of a replay
        rep.update(state="stopped" if stop else "done", stats=_capture_stats(src, producer))
    finally:
        producer.close()
        src.close()
    return 0


def _capture_stats(src, producer) -> dict:
    st = src.stats()
    st["ring_dropped_full"] = producer.dropped
    return st


def run_analyzer(spec: dict, rep: Reporter) -> int:
    """Run the analyzer until SIGTERM (flushes via stop()) or, with exit_on_eof, the end of a replay."""
    from capfan.analyzers.runner import Runner, RunSpec  # noqa: PLC0415
    from capfan.recordsink import FileSink  # noqa: PLC0415

    spool = spec.get("spool")
    if spool:  # records go to the exporter through the on-disk spool
        from capfan.agents.spool import SpoolWriter  # noqa: PLC0415
        sink = SpoolWriter(spool["dir"], spool["host"], f"{spec['ring']}/{spec['consumer']}", spool["max_bytes"],
                           spool["policy"])
    else:
        sink = FileSink(spec["out"])
    run = RunSpec(ring=spec["ring"], analyzer=spec["analyzer"], options=spec["options"], name=spec["consumer"],
                  policy=spec["policy"], group=spec["group"], member=spec["member"],
                  group_size=spec["group_size"], cpu=None, spin_us=spec["spin_us"],
                  stall_budget_us=spec["stall_budget_us"], start=spec["start"], tick=spec["tick"],
                  exit_on_eof=spec.get("exit_on_eof", False),
                  # keep the slot: a restart resumes at the cursor and a finished analyzer's final
                  # accounting stays in the ring's consumer table (a kept slot never holds the producer)
                  keep=True)

    def report(stats: dict) -> None:
        rep.update(ready=True, state="running", stats=stats)

    runner = Runner(run, emit=sink, report=report, report_every=REPORT_EVERY_S)
    try:
        summary = runner.run()
    finally:
        sink.close()
    # "done" only when the replay ended: a worker stopped by a signal from someone other than
    # the supervisor is restarted like a crashed one
    rep.update(state="stopped" if runner._stop else "done", stats={k: summary[k] for k in ("packets", "batches", "records", "delivered",
                                                              "dropped", "analyzer_stats")})
    return 0


def run_exporter(spec: dict, rep: Reporter) -> int:
    """Ship the spool to the collectors until SIGTERM (the supervisor waits for the spool to
    drain before it sends that)."""
    from capfan.agents.exporter import Exporter  # noqa: PLC0415
    from capfan.capturecli import StopOnSignal  # noqa: PLC0415

    stop = StopOnSignal().install()
    exp = Exporter(spec["spool_dir"], spec["host"], spec["collectors"], spec["curve"], window=spec["window"],
                   route=spec.get("route", "all"))
    rep.update(ready=True, state="running", stats=exp.stats())
    exp.run(lambda: bool(stop), report=lambda st: rep.update(stats=st), report_every=REPORT_EVERY_S)
    rep.update(state="stopped", stats=exp.stats())
    return 0


def main(argv: list[str]) -> int:
    """Entry point: run the worker described by argv[1] (JSON)."""
    spec = json.loads(argv[1])
    bind_to_parent(spec["parent"], spec["title"])
    rep = Reporter(spec["state_file"], spec["kind"])
    try:
        if spec.get("cpu") is not None:
            os.sched_setaffinity(0, {spec["cpu"]})
        rep.update()
        run = {"capture": run_capture, "analyzer": run_analyzer, "exporter": run_exporter}[spec["kind"]]
        return run(spec, rep)
    except errors.ConfigError as e:
        # an analyzer option the plugin rejected at start: name it as the agent's config does
        key = e.key if str(e.key).startswith(spec["key"]) else f"{spec['key']}.options.{e.key}"
        rep.update(state="failed", error=str(errors.ConfigError(key, str(e).partition(": ")[2])))
        sys.stderr.write(f"capfan worker {spec['id']}: error: {e}\n")
        return 2
    except errors.CapfanError as e:
        rep.update(state="failed", error=f"{type(e).__name__}: {e}")
        sys.stderr.write(f"capfan worker {spec['id']}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

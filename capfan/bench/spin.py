"""`capfan bench spin`: what an analyzer's `spin_us` costs in CPU, end to end through a real agent.

For every packet rate and every spin value, one `capfan agent` runs (a child process with its
own run, records and ring directories in a temp directory on tmpfs, metrics off) with:

* one capture: a pcap replay at recorded speed (``speed = "1x"``) of 64-byte UDP frames written
  ``1/rate`` seconds apart for ``seconds``; rate 0 is an idle ring: a file of two packets
  ``seconds`` apart, so the consumer waits the whole time;
* one analyzer: ``stats`` (descriptor-only, the cheapest analyzer: what is measured is the
  waiting, not the analysis), ``policy = "reliable"``, the spin value under test.

Both workers use ``cpus = "auto"`` (``--no-pin``: ``"none"``): the deployment default, and on two
or more CPUs it puts the capture and the analyzer on different cores, so a spinning analyzer and
the replay (which spins the last 100 us before each due packet) never take turns on one core,
which would cap the CPU time the bench is trying to measure.

The time origin is the first packet the replay publishes (the ring's head, polled every few ms
from the moment the ring exists). The window is ``[t0 + warmup, t0 + seconds - tail]``: after the
start-up, before the replay ends. At its two ends the bench reads, itself, the CPU time of the
analyzer process and of the capture process (``/proc/PID/stat`` utime+stime, in clock ticks, and
``/proc/PID/task/*/schedstat``, the nanosecond run time the kernel scales utime+stime to; the
tables use the nanosecond clock when the kernel has it, because an idle analyzer uses well under
one 10-ms tick per second) and the consumer's delivered counter. Then it waits until every packet
of the file was delivered, stops the agent with SIGTERM and removes the temp directory (also on
Ctrl-C, SIGTERM and errors).

Other load on the machine caps what a spinning consumer can burn (it is runnable but waiting for
a CPU, which costs no CPU time), so each worker's schedstat run delay is measured too; a run in
which a worker waited for a CPU over 10% of the window is repeated (``--retries``) and the least
contended attempt is kept; what stays contended is marked in the table.

The baseline is ``spin_us = 0`` (adaptive: an idle consumer blocks at once; under fast traffic it
spins up to 20 us), measured at the same rate in the same run; it is always measured.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np

from capfan import errors
from capfan.bench.report import fmt as _f
from capfan.bench.report import cpu_model, no_nan

DEFAULT_RATES = (0, 1_000, 10_000, 100_000)
DEFAULT_SPINS = (0, 20, 200, 2_000)
DEFAULT_SECONDS = 4.0
DEFAULT_RETRIES = 2
QUICK = {"rates": (0, 10_000), "spins": (0, 200), "seconds": 1.5, "retries": 1}
FRAME_SIZE = 64                    # bytes per frame (Ethernet/IPv4/UDP), like the other benches
NAME = "spin"                      # agent, capture and ring prefix: the ring is spin.q0
CONSUMER = "stats"                 # the analyzer instance = consumer name
RING_NDESC = 65_536                # the agent's default ring geometry
RING_ARENA = "64M"
STATUS_INTERVAL_S = 1.0            # the agent writes status.json once it runs, then every second
START_TIMEOUT_S = 30.0             # agent start until the first packet is published
DRAIN_TIMEOUT_S = 20.0             # after the replay: until every packet was delivered
STOP_TIMEOUT_S = 30.0              # SIGTERM until the agent exited (then SIGKILL its group)
POLL_S = 0.002                     # polling of the ring head while waiting for the first packet
MIN_WINDOW_S = 0.5                 # a shorter measured window is an error, not a number
RATIO_FLOOR = 1e-4                 # baselines below 0.01 % of a core give no ratio (noise)
CONTENDED = 0.10                   # a worker runnable but waiting for a CPU this share of the window
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Settings:
    """One bench invocation."""
    rates: tuple[int, ...] = DEFAULT_RATES
    spins: tuple[int, ...] = DEFAULT_SPINS
    seconds: float = DEFAULT_SECONDS
    retries: int = DEFAULT_RETRIES  # extra attempts of a run whose workers waited for a CPU (contention)
    pin: bool = True               # cpus = "auto" (True) or "none"

    def __post_init__(self):
        # the baseline is always measured, first
        self.spins = tuple(sorted(set(self.spins) | {0}))
        self.rates = tuple(dict.fromkeys(self.rates))

    @property
    def warmup(self) -> float:
        """Seconds after the first packet before the window opens (workers settle)."""
        return min(0.5, 0.2 * self.seconds)

    @property
    def tail(self) -> float:
        """Seconds before the end of the replay at which the window closes."""
        return min(0.25, 0.15 * self.seconds)


def rate_label(rate: int) -> str:
    """0 -> 'idle', 10000 -> '10000 pps'."""
    return "idle" if rate == 0 else f"{rate} pps"


# ---------------------------------------------------------------- the replay file

def pcap_packets(rate: int, seconds: float) -> int:
    """Packets in the replay file of a rate: rate x seconds, or 2 (at 0 and `seconds`) when idle."""
    return 2 if rate == 0 else max(2, round(rate * seconds))


def write_pcap(path: str, rate: int, seconds: float, chunk: int = 1 << 18) -> int:
    """A classic pcap (microsecond timestamps) of 64-byte UDP frames 1/rate s apart lasting
    `seconds`; rate 0: two frames `seconds` apart. Returns the packet count."""
    from capfan.bench.capture import udp_frames  # noqa: PLC0415

    n = pcap_packets(rate, seconds)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for first in range(0, n, chunk):
            k = min(chunk, n - first)
            i = np.arange(first, first + k, dtype=np.int64)
            us = i * round(seconds * 1e6) if rate == 0 else np.rint(i * (1e6 / rate)).astype(np.int64)
            hdr = np.zeros((k, 4), dtype="<u4")
            hdr[:, 0], hdr[:, 1] = 1_700_000_000 + us // 1_000_000, us % 1_000_000
            hdr[:, 2] = hdr[:, 3] = FRAME_SIZE
            rec = np.empty((k, 16 + FRAME_SIZE), dtype=np.uint8)
            rec[:, :16] = hdr.view(np.uint8)
            rec[:, 16:] = udp_frames(FRAME_SIZE, k, first)
            out.write(rec.tobytes())
    return n


# ---------------------------------------------------------------- the agent

def agent_toml(pcap: str, spin_us: int, run_dir: str, out: str, ring_dir: str, pin: bool) -> str:
    """The agent config of one run."""
    q = json.dumps  # a JSON string is a TOML basic string
    cpus = q("auto" if pin else "none")
    return "\n".join([
        "[agent]", f"name = {q(NAME)}", f"run_dir = {q(run_dir)}", f"out = {q(out)}",
        f"ring_dir = {q(ring_dir)}", "exit_when_done = false", f"status_interval = {STATUS_INTERVAL_S}",
        "[metrics]", "enabled = false",
        "[[capture]]", f"name = {q(NAME)}", 'source = "pcap"', f"file = {q(pcap)}", f"cpus = {cpus}",
        'options = { speed = "1x" }', f'ring = {{ ndesc = {RING_NDESC}, arena = "{RING_ARENA}" }}',
        "[[analyzer]]", f"name = {q(CONSUMER)}", 'analyzer = "stats"', 'policy = "reliable"',
        f"spin_us = {spin_us}", f"cpus = {cpus}", "",
    ])


def _package_root() -> str:
    """The directory the running `capfan` package was imported from (children import the same)."""
    import capfan  # noqa: PLC0415

    return os.path.dirname(os.path.dirname(os.path.abspath(capfan.__file__)))


class Agent:
    """`python -m capfan agent -c CONFIG` in its own session (a terminal's Ctrl-C reaches only the
    bench, which stops the agent itself: SIGTERM, then SIGKILL to the whole group)."""

    def __init__(self, config: str, log: str):
        self.log_path = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "capfan", "agent", "-c", config],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
                                         start_new_session=True)

    def log(self, lines: int = 20) -> str:
        """The last lines the agent wrote."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM; after STOP_TIMEOUT_S (or a second Ctrl-C) SIGKILL the group. The exit code."""
        p = self.proc
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                return p.wait(timeout=STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the workers are in the agent's process group
        return p.wait()


def read_status(path: str) -> dict | None:
    """The agent's last status.json, None before the first one (or mid-replace)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- CPU clocks

def stat_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc/PID/stat (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def sched_times(pid: int) -> tuple[float, float] | None:
    """(run time, time spent runnable but waiting for a CPU) of a process's threads in seconds,
    from /proc/PID/task/*/schedstat (nanoseconds); None when the kernel does not have it."""
    run = wait = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise
        return None
    except (OSError, ValueError, IndexError):
        return None
    return run / 1e9, wait / 1e9


def voluntary_switches(pid: int) -> int:
    """Times a process's threads gave up the CPU themselves (a futex sleep is one), from
    /proc/PID/task/*/status."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
                    break
    return total


@dataclass
class Sample:
    """One instant: both workers' CPU clocks and the ring counters."""
    t: float
    analyzer_stat: float
    capture_stat: float
    analyzer_sched: tuple[float, float] | None  # schedstat (run, wait), seconds
    capture_sched: tuple[float, float] | None
    analyzer_sleeps: int                          # voluntary context switches
    capture_sleeps: int
    delivered: int
    head: int


def _consumer_row(ring, name: str) -> dict:
    for c in ring.consumers():
        if c["name"] == name:
            return c
    raise errors.CapfanError(f"the ring has no consumer {name!r}")


def take_sample(ring, analyzer_pid: int, capture_pid: int) -> Sample:
    """Read every counter, the time being the middle of the readings."""
    t0 = time.monotonic()
    a_stat, c_stat = stat_cpu_s(analyzer_pid), stat_cpu_s(capture_pid)
    a_sched, c_sched = sched_times(analyzer_pid), sched_times(capture_pid)
    a_sleeps, c_sleeps = voluntary_switches(analyzer_pid), voluntary_switches(capture_pid)
    head = ring.stats()["head"]
    delivered = _consumer_row(ring, CONSUMER)["delivered"]
    return Sample((t0 + time.monotonic()) / 2, a_stat, c_stat, a_sched, c_sched, a_sleeps, c_sleeps,
                  delivered, head)


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    """One agent run: one rate, one spin value."""
    rate: int
    spin_us: int
    packets: int                          # in the replay file
    clock: str = ""                       # schedstat (ns) or stat (ticks): what the CPU numbers use
    window_start_s: float = float("nan")  # window, seconds after the first packet was published
    window_s: float = float("nan")
    window_packets: int = 0               # delivered to the analyzer within the window
    analyzer_cpu_s: float = float("nan")
    capture_cpu_s: float = float("nan")
    analyzer_cpu_s_stat: float = float("nan")  # the same from /proc/PID/stat utime+stime (ticks)
    capture_cpu_s_stat: float = float("nan")
    analyzer_wait_s: float = float("nan")  # runnable but waiting for a CPU (schedstat): contention
    capture_wait_s: float = float("nan")
    analyzer_sleeps: int = 0              # voluntary context switches in the window (futex sleeps)
    capture_sleeps: int = 0
    published: int = 0                    # ring head at the end (packets the replay wrote)
    delivered: int = 0                    # the consumer's final counters
    dropped: int = 0
    ring_dropped_full: int = 0
    analyzer_core: int | None = None      # CPU the agent pinned each worker to (None: not pinned)
    capture_core: int | None = None
    agent_exit: int | None = None
    wall_s: float = float("nan")
    error: str | None = None
    attempt: int = 1                      # which attempt this is (contended runs are repeated)
    contention_attempts: list = field(default_factory=list)  # contention of every attempt, in order
    samples: list = field(default_factory=list)

    @property
    def analyzer_share(self) -> float:
        """Analyzer CPU as a share of one core over the window."""
        return self.analyzer_cpu_s / self.window_s if self.window_s > 0 else float("nan")

    @property
    def capture_share(self) -> float:
        """Capture worker CPU as a share of one core over the window."""
        return self.capture_cpu_s / self.window_s if self.window_s > 0 else float("nan")

    @property
    def contention(self) -> float:
        """Largest share of the window either worker waited for a CPU while runnable."""
        return max(self.analyzer_wait_s, self.capture_wait_s) / self.window_s if self.window_s > 0 else float("nan")

    @property
    def window_pps(self) -> float:
        """Packets delivered per second within the window (should be the rate)."""
        return self.window_packets / self.window_s if self.window_s > 0 else float("nan")

    def complete(self) -> bool:
        """Ran, and every packet of the file was published and delivered, none dropped."""
        return (self.error is None and self.published == self.packets == self.delivered
                and self.dropped == 0 and self.ring_dropped_full == 0)

    def to_dict(self) -> dict:
        """JSON-ready, with the derived shares."""
        return {**asdict(self), "analyzer_share": self.analyzer_share, "capture_share": self.capture_share,
                "window_pps": self.window_pps, "contention": self.contention, "complete": self.complete()}


def run_one(rate: int, spin_us: int, pcap: str, packets: int, cfg: Settings, work: str) -> Run:
    """One agent run; errors end up in Run.error (KeyboardInterrupt propagates after clean-up)."""
    from capfan import ring as ringlib  # noqa: PLC0415

    r = Run(rate=rate, spin_us=spin_us, packets=packets)
    d = tempfile.mkdtemp(prefix=f"run-{rate}-{spin_us}-", dir=work)
    run_dir, out, ring_dir = (os.path.join(d, x) for x in ("run", "out", "rings"))
    for x in (run_dir, out, ring_dir):
        os.makedirs(x)
    config = os.path.join(d, "agent.toml")
    with open(config, "w") as f:
        f.write(agent_toml(pcap, spin_us, run_dir, out, ring_dir, cfg.pin))
    ring_path = os.path.join(ring_dir, ringlib.RING_PREFIX + f"{NAME}.q0")
    status_path = os.path.join(run_dir, "agents", NAME, "status.json")
    t_begin = time.monotonic()
    agent = Agent(config, os.path.join(d, "agent.log"))
    ring = None
    try:
        ring, t0, status = _wait_started(agent, ring_path, status_path, rate, ringlib)
        workers = {w["kind"]: w for w in status["workers"]}
        a_pid, c_pid = workers["analyzer"]["pid"], workers["capture"]["pid"]
        r.analyzer_core, r.capture_core = workers["analyzer"]["cpu"], workers["capture"]["cpu"]
        start = max(t0 + cfg.warmup, time.monotonic())
        end = t0 + cfg.seconds - cfg.tail
        if end - start < min(MIN_WINDOW_S, cfg.seconds / 3):
            raise errors.CapfanError(f"the agent took {start - t0:.2f} s after the first packet to report running: "
                                     f"no time left to measure in a {cfg.seconds:g} s replay (use --seconds)")
        _sleep_until(start)
        a = take_sample(ring, a_pid, c_pid)
        _sleep_until(end)
        b = take_sample(ring, a_pid, c_pid)
        r.samples = [asdict(a), asdict(b)]
        sched = a.analyzer_sched is not None and b.analyzer_sched is not None and \
            a.capture_sched is not None and b.capture_sched is not None
        r.clock = "schedstat" if sched else "stat"
        r.window_start_s, r.window_s = a.t - t0, b.t - a.t
        r.window_packets = b.delivered - a.delivered
        r.analyzer_cpu_s_stat = b.analyzer_stat - a.analyzer_stat
        r.capture_cpu_s_stat = b.capture_stat - a.capture_stat
        r.analyzer_sleeps, r.capture_sleeps = b.analyzer_sleeps - a.analyzer_sleeps, b.capture_sleeps - a.capture_sleeps
        if sched:
            r.analyzer_cpu_s = b.analyzer_sched[0] - a.analyzer_sched[0]
            r.capture_cpu_s = b.capture_sched[0] - a.capture_sched[0]
            r.analyzer_wait_s = b.analyzer_sched[1] - a.analyzer_sched[1]
            r.capture_wait_s = b.capture_sched[1] - a.capture_sched[1]
        else:
            r.analyzer_cpu_s, r.capture_cpu_s = r.analyzer_cpu_s_stat, r.capture_cpu_s_stat
        _wait_delivered(agent, ring, packets, t0 + cfg.seconds + DRAIN_TIMEOUT_S)
    except errors.CapfanError as e:
        r.error = str(e)
    except (OSError, KeyError, TypeError, ValueError) as e:
        r.error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    finally:
        if ring is not None:
            try:
                st = ring.stats()
                c = _consumer_row(ring, CONSUMER)
                r.published, r.ring_dropped_full = st["head"], st["dropped_full"]
                r.delivered, r.dropped = c["delivered"], c["dropped"]
            except errors.CapfanError as e:
                r.error = r.error or str(e)
            ring.close()
        r.agent_exit = agent.stop()
        r.wall_s = time.monotonic() - t_begin
        shutil.rmtree(d, ignore_errors=True)
    if r.error is None and r.agent_exit != 0:
        r.error = f"the agent exited with status {r.agent_exit}: {agent.log(5)}"
    return r


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def _wait_started(agent: Agent, ring_path: str, status_path: str, rate: int, ringlib):
    """(open ring, monotonic time of the first published packet, running status) once the agent
    reports every worker running and the replay has published its first packet."""
    deadline = time.monotonic() + START_TIMEOUT_S
    ring = t0 = status = None
    try:
        while t0 is None or status is None:
            if agent.proc.poll() is not None:
                raise errors.CapfanError(f"the agent exited with status {agent.proc.returncode} while starting:\n"
                                         f"{agent.log()}")
            if time.monotonic() > deadline:
                raise errors.CapfanError(f"the agent did not start replaying within {START_TIMEOUT_S:g} s:\n"
                                         f"{agent.log()}")
            now = time.monotonic()
            if ring is None and os.path.exists(ring_path):
                with contextlib.suppress(errors.CapfanError):
                    ring = ringlib.Ring(ring_path)
            if ring is not None and t0 is None:
                head = ring.stats()["head"]
                if head:
                    # seen late (the first look): back-date by the packets already published
                    t0 = now - ((head - 1) / rate if rate else 0.0)
            if status is None:
                s = read_status(status_path)
                if s and s["agent"]["state"] == "running" and {w["kind"] for w in s["workers"]} == \
                        {"capture", "analyzer"} and all(w["state"] == "running" and w["pid"] for w in s["workers"]):
                    status = s
            time.sleep(POLL_S)
    except BaseException:
        if ring is not None:
            ring.close()
        raise
    return ring, t0, status


def _wait_delivered(agent: Agent, ring, packets: int, deadline: float) -> None:
    """Until the consumer has every packet of the file (CapfanError at the deadline)."""
    while True:
        c = _consumer_row(ring, CONSUMER)
        if c["delivered"] + c["dropped"] >= packets and ring.stats()["head"] >= packets:
            return
        if agent.proc.poll() is not None:
            raise errors.CapfanError(f"the agent exited with status {agent.proc.returncode}:\n{agent.log()}")
        if time.monotonic() > deadline:
            raise errors.CapfanError(f"only {c['delivered']:,} of {packets:,} packets delivered "
                                     f"{DRAIN_TIMEOUT_S:g} s after the replay should have ended")
        time.sleep(0.02)


# ---------------------------------------------------------------- the whole bench

def _least_contended(rate: int, spin: int, pcap: str, n: int, cfg: Settings, work: str) -> Run:
    """run_one, repeated up to cfg.retries times while other load kept a worker from its CPU
    (then a spinner's CPU time is capped by the machine, not by spin_us); the least contended
    attempt, with every attempt's contention."""
    best, seen = None, []
    for attempt in range(1, cfg.retries + 2):
        r = run_one(rate, spin, pcap, n, cfg, work)
        r.attempt = attempt
        seen.append(r.contention if r.error is None else None)
        if best is None or (r.error is None and (best.error is not None or r.contention < best.contention)):
            best = r
        if r.error is not None or not _contended(r):
            break
    best.contention_attempts = seen
    return best


def temp_root() -> str:
    """tmpfs: the replay files, rings and the agent's files never touch a disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def run_bench(cfg: Settings, progress=None, work_dir=None) -> list[Run]:
    """Every (rate, spin) run, rates outer; the temp directory is removed whatever happens.
    work_dir(path) is called with the temp directory once it exists."""
    from capfan.bench.capture import interrupt_on_sigterm  # noqa: PLC0415

    runs: list[Run] = []
    total = len(cfg.rates) * len(cfg.spins)
    with interrupt_on_sigterm():
        work = tempfile.mkdtemp(prefix="capfan-bench-spin-", dir=temp_root())
        try:
            if work_dir:
                work_dir(work)
            for rate in cfg.rates:
                pcap = os.path.join(work, f"rate-{rate}.pcap")
                n = write_pcap(pcap, rate, cfg.seconds)
                for spin in cfg.spins:
                    runs.append(_least_contended(rate, spin, pcap, n, cfg, work))
                    if progress:
                        progress(len(runs), total, runs[-1])
                os.unlink(pcap)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return runs


# ---------------------------------------------------------------- summary

@dataclass
class Cell:
    """One (rate, spin) entry of the table."""
    spin_us: int
    analyzer_share: float = float("nan")
    capture_share: float = float("nan")
    vs_adaptive: float = float("nan")     # analyzer CPU / spin_us=0 analyzer CPU at the same rate
    capture_vs_adaptive: float = float("nan")
    complete: bool = False
    contended: bool = False               # a worker waited for a CPU > CONTENDED of the window
    error: str | None = None


@dataclass
class Row:
    """One rate."""
    rate: int
    packets: int
    window_pps: float                     # median over the spin values
    complete: bool
    cells: list[Cell]


def _contended(r: Run) -> bool:
    return r.error is None and r.contention == r.contention and r.contention > CONTENDED


def _ratio(a: float, b: float) -> float:
    return a / b if b == b and a == a and b >= RATIO_FLOOR else float("nan")


def summarize(runs: list[Run], cfg: Settings) -> list[Row]:
    """One row per rate, one cell per spin value, ratios against spin_us=0 of the same rate."""
    rows = []
    for rate in cfg.rates:
        by_spin = {r.spin_us: r for r in runs if r.rate == rate}
        if not by_spin:
            continue
        base = by_spin.get(0)
        b_an = base.analyzer_share if base and base.error is None else float("nan")
        b_cap = base.capture_share if base and base.error is None else float("nan")
        cells = []
        for spin in cfg.spins:
            r = by_spin.get(spin)
            if r is None:
                continue
            if r.error:
                cells.append(Cell(spin, error=r.error))
                continue
            cells.append(Cell(spin, r.analyzer_share, r.capture_share, _ratio(r.analyzer_share, b_an),
                              _ratio(r.capture_share, b_cap), r.complete(), _contended(r)))
        pps = [r.window_pps for r in by_spin.values() if r.error is None]
        rows.append(Row(rate, next(iter(by_spin.values())).packets,
                        statistics.median(pps) if pps else float("nan"),
                        all(r.complete() for r in by_spin.values()), cells))
    return rows


def _pct(share: float) -> str:
    """0.1234 -> '12.3%', small shares with more digits."""
    if share != share:
        return "-"
    pct = 100 * share
    return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%" if pct >= 0.1 else f"{pct:.3f}%"


def summary_lines(rows: list[Row]) -> list[str]:
    """One sentence per rate: the baseline's cost and each spin value's multiple of it."""
    out = []
    for row in rows:
        where = "on an idle ring" if row.rate == 0 else f"at {row.rate} pps"
        base = next((c for c in row.cells if c.spin_us == 0), None)
        if base is None or base.error:
            out.append(f"{where}: the spin_us=0 baseline failed, no comparison")
            continue
        parts = []
        for c in row.cells:
            if c.spin_us == 0:
                continue
            if c.error:
                parts.append(f"spin_us={c.spin_us} failed")
            elif c.vs_adaptive == c.vs_adaptive:
                parts.append(f"spin_us={c.spin_us} costs {c.vs_adaptive:.1f}x that ({_pct(c.analyzer_share)})")
            else:
                parts.append(f"spin_us={c.spin_us} costs {_pct(c.analyzer_share)}")
        out.append(f"{where}, adaptive waiting (spin_us=0) costs {_pct(base.analyzer_share)} of a core"
                   + (": " + ", ".join(parts) if parts else ""))
    return out


def contention_note(runs: list[Run]) -> str | None:
    """A warning when other load kept the workers from a CPU (their CPU shares are then capped)."""
    busy = [r for r in runs if _contended(r)]
    if not busy:
        return None
    worst = max(busy, key=lambda r: r.contention)
    return (f"CPU contention in {len(busy)} of {len(runs)} runs (* in the table), after retries: a worker "
            f"was runnable but waiting for a CPU up to {100 * worst.contention:.0f}% of the window "
            f"({rate_label(worst.rate)}, spin_us={worst.spin_us}; schedstat run delay). Other load on this "
            "machine caps what a spinning consumer can burn, so the costs of spinning are understated here: "
            "rerun on a quiet machine for numbers to publish.")


def accounting_ok(runs: list[Run]) -> bool:
    """Every run ran and delivered every packet of its file."""
    return bool(runs) and all(r.complete() for r in runs)


# ---------------------------------------------------------------- report

def machine_info() -> dict:
    """What the numbers were measured on."""
    import platform  # noqa: PLC0415

    model = cpu_model()
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "clk_tck": _CLK_TCK, "temp_root": temp_root()}


def placement(runs: list[Run]) -> str:
    """Where the agent put the workers (as seen in its status)."""
    seen = {(r.capture_core, r.analyzer_core) for r in runs if r.error is None}
    if not seen:
        return "placement unknown"
    if len(seen) > 1:
        return "placement varied between runs (see --json)"
    cap, ana = seen.pop()
    where = lambda c: "unpinned" if c is None else f"CPU {c}"  # noqa: E731
    return f"capture {where(cap)}, analyzer {where(ana)}"


def results_table(rows: list[Row], spins: tuple[int, ...]):
    """rich Table: one row per rate; per spin value the analyzer's and the capture's CPU."""
    from rich.table import Table  # noqa: PLC0415

    t = Table(title="CPU, % of one core (x spin 0: analyzer CPU / spin_us=0's at the same rate)",
              title_justify="left")
    t.add_column("rate", no_wrap=True)
    t.add_column("window\npps", justify="right", no_wrap=True)
    for s in spins:
        t.add_column(f"spin {s}\nanalyzer", justify="right", no_wrap=True)
        if s:
            t.add_column(f"spin {s}\nx spin 0", justify="right", no_wrap=True)
        t.add_column(f"spin {s}\ncapture", justify="right", no_wrap=True)
    t.add_column("all\ndelivered", justify="right", no_wrap=True)
    for row in rows:
        cells = [rate_label(row.rate), _f(row.window_pps, "{:,.0f}")]
        for s in spins:
            c = next((c for c in row.cells if c.spin_us == s), None)
            if c is None or c.error:
                cells += ["[red]error[/red]" if c else ""] + ([""] if s else []) + [""]
                continue
            mark = "[yellow]*[/yellow]" if c.contended else ""
            cells.append(_pct(c.analyzer_share) + mark)
            if s:
                base = next((b for b in row.cells if b.spin_us == 0), None)
                cells.append(_f(c.vs_adaptive, "{:.1f}x") + ("[yellow]*[/yellow]" if c.contended or (
                    base is not None and base.contended) else ""))
            cells.append(_pct(c.capture_share) + mark)
        cells.append(f"{row.packets:,}" if row.complete else "[red]NO[/red]")
        t.add_row(*cells)
    return t


LEGEND = (
    "analyzer/capture = CPU time (user+system, all threads) of the analyzer process / the capture worker "
    "process over the window, as a share of one core; window pps = packets delivered to the analyzer in "
    "the window / its length (median over the spin values; it should be the rate); x spin 0 = analyzer CPU "
    "over the spin_us=0 analyzer CPU at the same rate (no ratio when that is under 0.01% of a core); all "
    "delivered = packets in the replay file, when every run of the row published and delivered all of "
    "them with no drop; * = a worker of that run (or of its baseline) was runnable but waited for a CPU "
    f"more than {100 * CONTENDED:.0f}% of the window (other load: see the note). The capture worker replays "
    "at 1x: it sleeps until 100 us before each due packet and spins the rest, so from 10 kpps on (gaps "
    "<= 100 us) it never sleeps and uses a core whatever the consumer does. The analyzer idles in "
    "consumer.next(timeout <= 0.2 s): it spins spin_us once per call, then sleeps on the futex, so on an "
    "idle ring spinning costs spin_us about five times a second."
)


def render(console, rows: list[Row], runs: list[Run], cfg: Settings, header: str) -> None:
    """Print the whole report."""
    console.print(header)
    console.print(results_table(rows, cfg.spins))
    for r in runs:
        if r.error:
            console.print(f"[red]{rate_label(r.rate)} spin_us={r.spin_us}: {r.error.splitlines()[0]}[/red]")
        elif not r.complete():
            console.print(f"[red]{rate_label(r.rate)} spin_us={r.spin_us}: {r.published:,} published, "
                          f"{r.delivered:,} delivered, {r.dropped:,} dropped of {r.packets:,}[/red]")
    console.print(LEGEND)
    note = contention_note(runs)
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")
    for line in summary_lines(rows):
        console.print(line)
    console.print("[green]accounting: every run published and delivered every packet of its file[/green]"
                  if accounting_ok(runs) else
                  "[red]accounting: some run failed or did not deliver every packet (see above)[/red]")


def report_dict(runs: list[Run], rows: list[Row], info: dict, settings: dict) -> dict:
    """Everything measured, for --json (NaN becomes null)."""
    return no_nan({"settings": settings, "machine": info, "rows": [asdict(r) for r in rows],
                   "summary": summary_lines(rows), "contention_note": contention_note(runs),
                   "accounting_ok": accounting_ok(runs),
                   "runs": [r.to_dict() for r in runs]})

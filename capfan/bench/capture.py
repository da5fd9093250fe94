"""`capfan bench capture`: capture-source throughput and drops against tcpdump, in one run.

Two parts, each run in interleaved rounds (the table shows medians; ratios are taken between
runs of the same round, so the slow phases of a shared machine cancel out):

* **replay** — a pcap of N UDP frames over many flows, written here into a temp file on tmpfs,
  replayed by the pcap source at max speed into a fresh ring, each role in its own pinned
  process (the replaying process alone on the first CPU):

  ``replay``        the pcap source into the ring, no consumer attached
  ``replay-c``      the same with one reliable C consumer (capfan_bench_consume) on another CPU
  ``tcpdump-read``  baseline: ``tcpdump -r FILE -w /dev/null`` on the same file and CPU
  ``python-read``   baseline: a pure-Python record reader (struct + file reads) on a share of it

  Rates are per wall-clock second and per CPU-second of the replaying thread (time.thread_time),
  i.e. what one core sustains.

* **live** (root only) — a veth pair between two private network namespaces (bench/netns.py).
  trafgen (netsniff-ng) in the generator namespace sends exactly N frames of each size with one
  worker (``-P 1``, which trafgen pins to CPU 0), once at full speed and once at a fixed rate
  (paced by a tbf qdisc on its veth end: trafgen's own --rate bursts at full speed once a second);
  each capture method in turn listens on the other end, pinned to another CPU:

  ``afpacket``   ``capfan capture --source afpacket``
  ``afxdp``      ``capfan capture --source afxdp`` (xdp_mode auto: native XDP on veth)
  ``afxdp-skb``  ``capfan capture --source afxdp -o xdp_mode=skb`` (generic XDP)
  ``tcpdump``    baseline: ``tcpdump -i IFACE -w /dev/null -B 65536 -n``

  sent = tx_packets delta of the generator's veth end (only the generator sends: IPv6 is off,
  no address is configured, and the frames go to a MAC that is not the capture end's, so the
  capture namespace never answers). captured and drops are the method's own counters (capfan:
  published, kernel_drops + ring_drops; tcpdump: "packets captured" / "dropped by kernel");
  unaccounted = sent - captured - drops must be 0. CPU is the capture process's own CPU time
  (all threads, /proc schedstat) from just before the generator starts until every frame was
  taken; the kernel's receive work runs in softirq on the generator's CPU and is not in it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from capfan import errors
from capfan.bench.report import Target, no_nan, targets_table
from capfan.bench.report import fmt as _f

REPLAY_TARGET_PPS = 10_000_000    # issue: pcap replay >= 10 Mpps for 64-byte packets on one core
FIXED_RATE_PPS = 200_000          # a rate this 2-core VM sustains with every method (see README)
NFLOWS = 65_536                   # flows of the replay file (source address x source port)
PY_SHARE = 8                      # the Python reader reads 1/8 of the file (it is ~10x slower)
RUN_SLICE_S = 0.1                 # replay loop: longest stretch in C between looks at the clock
READY_TIMEOUT_S = 20.0            # capture process: time to open its socket
CAPFAN_IDLE_S = 0.3               # capfan settles this long after its counters stop moving
TCPDUMP_IDLE_S = 1.5              # libpcap hands a partly filled TPACKET_V3 block over after 1 s
STOP_TIMEOUT_S = 30.0
TRAFGEN_UNPACED_PPS = 100_000_000  # see send_frames
TBF_LIMIT_BYTES = 64 << 20        # far above a socket's send buffer: tbf never drops, trafgen waits
GEN_DST_MAC = "02:00:00:00:00:aa"  # not the capture end's MAC: frames are PACKET_OTHERHOST there
DEFAULT_RING_NDESC = 1 << 16      # live rings: the `capfan capture` defaults
DEFAULT_RING_ARENA = 64 << 20
REPLAY_RING_NDESC = 1 << 18
REPLAY_RING_ARENA = 64 << 20

#: method -> description; the order is the table's row order
REPLAY_METHODS = {
    "replay": "pcap source -> ring at max speed, no consumer (pinned alone on one CPU)",
    "replay-c": "the same with one reliable C consumer process (capfan_bench_consume) on another CPU",
    "tcpdump-read": "baseline: tcpdump -r FILE -w /dev/null, same file, same CPU",
    "python-read": f"baseline: pure-Python pcap reader (struct, buffered reads), 1/{PY_SHARE} of the file",
}
LIVE_METHODS = {
    "afpacket": "capfan capture --source afpacket (TPACKET_V3, 64 x 1 MiB blocks, 10 ms block timeout)",
    "afxdp": "capfan capture --source afxdp (xdp_mode auto, rx_size 2048)",
    "afxdp-skb": "capfan capture --source afxdp -o xdp_mode=skb (generic XDP)",
    "tcpdump": "baseline: tcpdump -i IFACE -w /dev/null -B 65536 -n (libpcap TPACKET_V3, 1 s block timeout)",
}
METHODS = {**REPLAY_METHODS, **LIVE_METHODS}
CAPFAN_ARGS = {"afpacket": ["--source", "afpacket"], "afxdp": ["--source", "afxdp"],
               "afxdp-skb": ["--source", "afxdp", "-o", "xdp_mode=skb"]}


class LiveSetupError(errors.CapfanError):
    """The namespaces/veth for the live part could not be set up."""


@dataclass
class Settings:
    """What one `capfan bench capture` invocation measures."""
    packets: int = 250_000                  # frames trafgen sends per live run
    replay_packets: int = 4_000_000         # 64-byte frames in the replay file
    sizes: tuple = (64, 1500)
    rates: tuple = (0, FIXED_RATE_PPS)      # 0 = the generator's full speed
    methods: tuple = tuple(METHODS)
    rounds: int = 5
    pin: bool = True


def rate_label(pps: int) -> str:
    """0 -> 'max', 200000 -> '200 kpps'."""
    if not pps:
        return "max"
    return f"{pps / 1e6:g} Mpps" if pps >= 1_000_000 else f"{pps / 1e3:g} kpps"


def replay_packets_for(size: int, n64: int) -> int:
    """Frames of the replay file at `size`: n64 at 64 B, bigger frames keep the file size."""
    return max(1, n64 * (16 + 64) // (16 + size)) if size > 64 else n64


# ---------------------------------------------------------------- frames and files

def udp_frames(size: int, n: int, first: int = 0) -> np.ndarray:
    """n Ethernet/IPv4/UDP frames of `size` bytes as an (n, size) array, cycling over NFLOWS
    flows (source address 10.1.x.y, source port), valid IPv4 lengths, UDP checksum 0."""
    hdr = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0,
                 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 0, 10, 2, 0, 1,
                 0, 0, 0, 9, 0, 0, 0, 0])  # UDP to port 9 (discard)
    f = np.zeros((n, size), dtype=np.uint8)
    f[:, :42] = np.frombuffer(hdr, dtype=np.uint8)
    f[:, 16], f[:, 17] = (size - 14) >> 8, (size - 14) & 0xFF
    f[:, 38], f[:, 39] = (size - 34) >> 8, (size - 34) & 0xFF
    flow = np.arange(first, first + n, dtype=np.uint32) % NFLOWS
    f[:, 28], f[:, 29] = (flow >> 8) & 0xFF, flow & 0xFF          # source address
    sport = 1024 + (flow * 7919) % 60000                            # source port
    f[:, 34], f[:, 35] = sport >> 8, sport & 0xFF
    return f


def write_pcap(path: str, size: int, n: int, chunk: int = 1 << 18) -> None:
    """Write n frames of `size` bytes as a classic pcap (1 us apart), in chunks."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for first in range(0, n, chunk):
            k = min(chunk, n - first)
            rec = np.zeros((k, 16 + size), dtype=np.uint8)
            i = np.arange(first, first + k, dtype=np.uint64)
            hdr = np.zeros((k, 4), dtype="<u4")
            hdr[:, 0], hdr[:, 1], hdr[:, 2], hdr[:, 3] = 1_700_000_000 + i // 1_000_000, i % 1_000_000, size, size
            rec[:, :16] = hdr.view(np.uint8)
            rec[:, 16:] = udp_frames(size, k, first)
            out.write(rec.tobytes())


def read_pcap_python(path: str, limit: int) -> tuple[int, int]:
    """(records, captured bytes) of the first `limit` records, read the plain-Python way."""
    unpack = struct.Struct("<IIII").unpack
    n = total = 0
    with open(path, "rb") as f:
        f.read(24)
        read = f.read
        while n < limit:
            h = read(16)
            if len(h) < 16:
                break
            incl = unpack(h)[2]
            total += len(read(incl))
            n += 1
    return n, total


def _temp_dir() -> str:
    """tmpfs when there is one: the replay file must not be written back to disk while measured."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


# ---------------------------------------------------------------- replay roles (child processes)

def _replay_producer(ctl, ring_path: str, pcap_path: str):
    """Replay the file into the ring with the pcap source; times only the replay loop."""
    from capfan import ring as R  # noqa: PLC0415 - after fork, in the child only
    from capfan._capfan_core import lib  # noqa: PLC0415
    from capfan.bench.ring import _now, _ring_populate  # noqa: PLC0415
    from capfan.sources.pcap import PcapSource  # noqa: PLC0415

    prod = R.Producer(ring_path)
    src = PcapSource(pcap_path, speed=0)
    try:
        _ring_populate(lib.capfan_producer_ring(prod._p), write=True)  # steady state, as ring bench
        src.prepare(prod)
        ctl.ready()
        ctl.wait("go")
        t0, c0 = _now(), time.thread_time_ns()
        while src.run(prod, duration=RUN_SLICE_S) >= 0:
            pass
        c1, t1 = time.thread_time_ns(), _now()
        st = src.stats()
    finally:
        src.close()
        prod.close()
    ctl.wait("finish")
    return {"done": st["packets"], "published": st["published"], "ring_drops": st["ring_drops"],
            "start_ns": t0, "end_ns": t1, "cpu_ns": c1 - c0}


def _python_reader(ctl, pcap_path: str, limit: int):
    """Baseline role: read `limit` records with plain Python."""
    from capfan.bench.ring import _now  # noqa: PLC0415

    ctl.ready()
    ctl.wait("go")
    t0, c0 = _now(), time.thread_time_ns()
    n, _ = read_pcap_python(pcap_path, limit)
    c1, t1 = time.thread_time_ns(), _now()
    ctl.wait("finish")
    return {"done": n, "published": 0, "ring_drops": 0, "start_ns": t0, "end_ns": t1, "cpu_ns": c1 - c0}


# ---------------------------------------------------------------- replay runs

@dataclass
class ReplayRun:
    """One replay-part measurement."""
    method: str
    size: int
    packets: int                  # records the method was asked to read
    round: int = 0
    done: int = 0                 # records read (replay: packets taken from the file)
    published: int = 0            # replay: packets written into the ring
    ring_drops: int = 0
    delivered: int | None = None  # replay-c: packets the consumer got
    consumer_dropped: int = 0
    wall_ns: int = 0              # start of the replay until the last packet was read (and consumed)
    cpu_ns: int = 0               # CPU time of the replaying thread (tcpdump: the whole process)
    consumer_cpu_ns: int = 0
    error: str | None = None

    @property
    def wall_pps(self) -> float:
        """Records per wall-clock second."""
        return self.done / self.wall_ns * 1e9 if self.wall_ns > 0 else float("nan")

    @property
    def cpu_pps(self) -> float:
        """Records per CPU-second of the replaying thread (= per core)."""
        return self.done / self.cpu_ns * 1e9 if self.cpu_ns > 0 else float("nan")

    def complete(self) -> bool:
        """Every record read; replays published all of them; the consumer got every one."""
        if self.error or self.done != self.packets:
            return False
        if self.method.startswith("replay") and (self.published != self.packets or self.ring_drops):
            return False
        return self.delivered is None or (self.delivered == self.packets and not self.consumer_dropped)

    def to_dict(self) -> dict:
        """JSON-ready, with the derived rates."""
        return {**asdict(self), "wall_pps": self.wall_pps, "cpu_pps": self.cpu_pps, "complete": self.complete()}


_seq = iter(range(1 << 30))


def _tmp_name(kind: str) -> str:
    """A ring name unique to this process and call."""
    return f"bench-{os.getpid()}-{next(_seq)}-{kind}"


def _replay_ring(method: str, size: int, pcap: str, npkts: int, pin: bool) -> ReplayRun:
    """The pcap source into a fresh ring, with or without one reliable C consumer."""
    from capfan import ring as R  # noqa: PLC0415
    from capfan.bench.ring import _c_consumer, _orchestrate  # noqa: PLC0415

    path = R.create(_tmp_name("replay"), ndesc=REPLAY_RING_NDESC, arena_bytes=REPLAY_RING_ARENA, snaplen=2048)
    try:
        cons = [(_c_consumer, path, "c0", npkts, R.RELIABLE, 0)] if method == "replay-c" else []
        pres, cres = _orchestrate((_replay_producer, path, pcap), cons, pin=pin)
    finally:
        os.unlink(path)
    end = max([pres["end_ns"]] + [c.end_ns for c in cres])
    r = ReplayRun(method, size, npkts, done=pres["done"], published=pres["published"],
                  ring_drops=pres["ring_drops"], wall_ns=end - pres["start_ns"], cpu_ns=pres["cpu_ns"])
    if cres:
        r.delivered, r.consumer_dropped, r.consumer_cpu_ns = cres[0].delivered, cres[0].dropped, cres[0].cpu_ns
    return r


def _python_run(size: int, pcap: str, npkts: int, pin: bool) -> ReplayRun:
    """The pure-Python reader in a pinned child, like the replay."""
    from capfan.bench.ring import _orchestrate  # noqa: PLC0415

    pres, _ = _orchestrate((_python_reader, pcap, npkts), [], pin=pin)
    return ReplayRun("python-read", size, npkts, done=pres["done"], wall_ns=pres["end_ns"] - pres["start_ns"],
                     cpu_ns=pres["cpu_ns"])


def _tcpdump_read(size: int, pcap: str, npkts: int, pin: bool) -> ReplayRun:
    """tcpdump -r FILE -w /dev/null on the replay CPU; CPU time from its rusage."""
    from capfan.bench.ring import cpu_split  # noqa: PLC0415

    pcpus, _ = cpu_split(pin)
    argv = ["tcpdump", "-r", pcap, "-w", "/dev/null"]
    if pcpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(pcpus)))] + argv
    t0 = time.monotonic_ns()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)  # rusage of exactly this child
    wall = time.monotonic_ns() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if p.returncode != 0:
        raise RuntimeError(f"tcpdump -r failed ({p.returncode}): {err.strip()}")
    # tcpdump prints no count with -w: it read the whole file when it exits 0
    return ReplayRun("tcpdump-read", size, npkts, done=npkts, wall_ns=wall,
                     cpu_ns=int((ru.ru_utime + ru.ru_stime) * 1e9))


def replay_one(method: str, size: int, pcap: str, nfile: int, pin: bool = True, rnd: int = 0) -> ReplayRun:
    """Measure one replay-part method on a file of nfile records; failures are recorded."""
    npkts = max(1, nfile // PY_SHARE) if method == "python-read" else nfile
    try:
        if method == "tcpdump-read":
            r = _tcpdump_read(size, pcap, npkts, pin)
        elif method == "python-read":
            r = _python_run(size, pcap, npkts, pin)
        else:
            r = _replay_ring(method, size, pcap, npkts, pin)
    except Exception as e:  # noqa: BLE001 - one broken method must not hide the others
        r = ReplayRun(method, size, npkts, error=f"{type(e).__name__}: {e}")
    r.round = rnd
    return r


def run_replay(cfg: Settings, progress=None) -> list[ReplayRun]:
    """Write one file per size, run the replay methods in interleaved rounds, delete the files
    (also on Ctrl-C or SIGTERM)."""
    from capfan.bench.netns import signals_held  # noqa: PLC0415

    methods = [m for m in cfg.methods if m in REPLAY_METHODS]
    if not shutil.which("tcpdump"):
        methods = [m for m in methods if m != "tcpdump-read"]
    if not methods:
        return []
    files: dict[int, str] = {}
    runs: list[ReplayRun] = []
    with interrupt_on_sigterm():
        try:
            for size in cfg.sizes:
                files[size] = _new_pcap(size, replay_packets_for(size, cfg.replay_packets))
            todo = [(rnd, size, m) for rnd in range(cfg.rounds) for size in cfg.sizes for m in methods]
            for i, (rnd, size, m) in enumerate(todo):
                t0 = time.monotonic()
                runs.append(replay_one(m, size, files[size], replay_packets_for(size, cfg.replay_packets),
                                       cfg.pin, rnd))
                if progress:
                    progress(i + 1, len(todo), runs[-1], time.monotonic() - t0)
        finally:
            with signals_held():
                for path in files.values():
                    if os.path.exists(path):
                        os.unlink(path)
    return runs


def _new_pcap(size: int, n: int) -> str:
    """A temp pcap file of n frames of `size` bytes (removed again if writing it fails)."""
    fd, path = tempfile.mkstemp(prefix=f"capfan-bench-{size}B-", suffix=".pcap", dir=_temp_dir())
    os.close(fd)
    try:
        write_pcap(path, size, n)
    except BaseException:
        os.unlink(path)
        raise
    return path


# ---------------------------------------------------------------- live: processes

def proc_cpu_ns(pid: int) -> int:
    """CPU time of a process so far, all threads (schedstat: ns; else stat: clock ticks)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total
    except (FileNotFoundError, ProcessLookupError):
        return total
    except OSError:  # no schedstat in this kernel
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL a child the bench started in its own session, with everything it forked (the
    group has the child's pid), and reap it; nothing if it already ended."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=10)


class _Proc:
    """A capture process in the capture namespace with its stderr collected by a thread."""

    def __init__(self, popen: subprocess.Popen):
        self.p = popen
        self.err: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read_err, daemon=True)
        self._reader.start()

    def _read_err(self) -> None:
        """Reader thread: collect stderr lines until EOF, waking wait_line()."""
        for line in self.p.stderr:
            with self._cv:
                self.err.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_line(self, pred, timeout: float, start: int = 0) -> str | None:
        """First stderr line (from index `start`) matching pred, waiting up to timeout; None if
        the process ended or time ran out."""
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                hit = next((ln for ln in self.err[start:] if pred(ln)), None)
                if hit is not None or self.p.poll() is not None:
                    return hit
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.05))

    def cpu_ns(self) -> int:
        """CPU time of the process so far."""
        return proc_cpu_ns(self.p.pid)

    def stop(self) -> str:
        """SIGINT, wait, return stdout; SIGKILL (it is ours) if it does not stop."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"capture process did not stop on SIGINT: {self.stderr()[-500:]}") from None
        # not communicate(): it would race the reader thread for stderr. stdout is one JSON line
        # (capfan) or nothing (tcpdump), far below a pipe's buffer, so reading it last is safe
        out = self.p.stdout.read() if self.p.stdout else ""
        self._reader.join(timeout=5)  # the closing lines (tcpdump statistics) are in self.err
        return out or ""

    def kill(self) -> None:
        """SIGKILL and reap if still running; close its pipes."""
        kill_group(self.p)
        self._reader.join(timeout=5)  # EOF once the process is gone
        for pipe in (self.p.stdout, self.p.stderr):
            if pipe and not self._reader.is_alive():
                pipe.close()

    def stderr(self) -> str:
        """Everything it printed on stderr so far."""
        with self._cv:
            return "\n".join(self.err)


def trafgen_config(size: int) -> str:
    """trafgen packet config: one Ethernet/IPv4/UDP frame of `size` bytes whose source address
    and port bytes increment per packet (32000 flows), to a MAC the capture end does not own."""
    mac = ", ".join(f"0x{b}" for b in GEN_DST_MAC.split(":"))
    return (
        "{\n"
        f"  {mac}, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, c16(0x0800),\n"
        f"  0x45, 0x00, c16({size - 14}), c16(0), c16(0x4000), 64, 17, csumip(14, 33),\n"
        "  10, 77, 0, dinc(1, 250), 10, 77, 0, 200,\n"
        f"  c8(0x10), dinc(0, 255), c16(9), c16({size - 34}), c16(0),\n"
        f"  fill(0x00, {size - 42}),\n"
        "}\n")


_TRAFGEN_SENT = re.compile(r"(\d+) packets outgoing")
_TRAFGEN_TIME = re.compile(r"(\d+) sec, (\d+) usec on CPU\d+")


def pace(v, size: int, rate: int) -> None:
    """Shape the generator's veth end to `rate` frames of `size` bytes per second with a tbf
    qdisc (0: no qdisc, full speed). trafgen's own -b/--rate sends each second's share at full
    speed and then idles, so it is no fixed rate; tbf releases frames evenly (bursts of at most
    32 frames), and its queue is far longer than a socket's send buffer, so it never drops:
    trafgen blocks in sendto once its send buffer is queued there."""
    from capfan.bench.netns import sh  # noqa: PLC0415

    if not rate:
        sh("tc", "-n", v.gen_ns, "qdisc", "del", "dev", v.gen_if, "root", check=False)
        return
    sh("tc", "-n", v.gen_ns, "qdisc", "replace", "dev", v.gen_if, "root", "tbf", "rate", f"{rate * size * 8}bit",
       "burst", str(max(32 * size, 2 * 1514)), "limit", str(TBF_LIMIT_BYTES))


def send_frames(v, conf: str, size: int, n: int, rate: int) -> dict:
    """trafgen in the generator namespace: exactly n frames, one worker, full speed or paced to
    rate pps (tbf). Returns what trafgen reports (frames, send seconds)."""
    pace(v, size, rate)
    argv = ["trafgen", "-i", conf, "-o", v.gen_if, "-n", str(n), "-P", "1", "--no-sock-mem", "-Q"]
    if rate:
        # -q: through the qdisc (trafgen bypasses it by default) so tbf paces it. A --rate far
        # above tbf's only switches trafgen from its TX_RING, which aborts on a full send buffer
        # (EAGAIN), to one blocking sendto per frame, which waits for tbf
        argv += ["-q", "-b", f"{TRAFGEN_UNPACED_PPS}pps"]
    t0 = time.monotonic()
    p = v.popen(v.gen_ns, *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=30 + 3 * n / max(rate or 0, 50_000))
    finally:
        kill_group(p)  # trafgen's worker is a child of its own: stop both when interrupted
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"trafgen failed ({p.returncode}): {out.strip()[-400:]}")
    sent = _TRAFGEN_SENT.search(out)
    tm = _TRAFGEN_TIME.search(out)
    return {"trafgen_sent": int(sent.group(1)) if sent else -1,
            "send_s": int(tm.group(1)) + int(tm.group(2)) / 1e6 if tm else wall}


def _capfan_argv(method: str, ring_path: str, iface: str) -> list[str]:
    """`capfan capture` through this interpreter (the same capfan as the bench), into a ring
    the bench created."""
    return [sys.executable, "-c", "from capfan.cli import main; main()", "capture", iface, "--ring", ring_path,
            *CAPFAN_ARGS[method], "--no-create", "--json", "-q"]


def _child_env(run_dir: str) -> dict:
    """Environment of the capture processes: this capfan first on the path; AF_XDP owner records
    in a private directory that the bench deletes (the interfaces are private too)."""
    import capfan  # noqa: PLC0415

    env = dict(os.environ, CAPFAN_RUN_DIR=run_dir)
    root = os.path.dirname(os.path.dirname(os.path.abspath(capfan.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _pinned(cpus, argv: list[str]) -> list[str]:
    """argv run under taskset on `cpus` (unchanged when None)."""
    return (["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []) + argv


# ---------------------------------------------------------------- live runs

@dataclass
class LiveRun:
    """One (method, size, rate) capture of the generator's frames."""
    method: str
    size: int
    rate: int                     # generator rate asked for, 0 = full speed
    packets: int                  # frames trafgen was told to send
    round: int = 0
    sent: int = 0                 # tx_packets delta of the generator's veth end
    trafgen_sent: int = 0         # what trafgen itself reports
    captured: int = 0
    drops: int = 0                # the method's own drop counters (kernel + ring)
    kernel_drops: int = 0
    ring_drops: int = 0
    send_s: float = 0.0           # trafgen's send time
    window_s: float = 0.0         # generator start until every frame was taken
    cpu_ns: int = 0               # capture process CPU time over the window
    mode: str = ""                # afxdp: "native copy", "skb copy", "native zero-copy"
    counters: dict = field(default_factory=dict)  # interface counter deltas (diagnosis)
    error: str | None = None

    @property
    def unaccounted(self) -> int:
        """Frames that went out but were neither captured nor counted as dropped."""
        return self.sent - self.captured - self.drops

    @property
    def gen_pps(self) -> float:
        """The generator's achieved rate."""
        return self.sent / self.send_s if self.send_s > 0 else float("nan")

    @property
    def cap_pps(self) -> float:
        """Frames captured per second of sending."""
        return self.captured / self.send_s if self.send_s > 0 else float("nan")

    @property
    def cpu_per_pkt(self) -> float:
        """Capture process CPU ns per captured frame."""
        return self.cpu_ns / self.captured if self.captured else float("nan")

    @property
    def cpu_share(self) -> float:
        """Capture process CPU time per second of sending, as a share of one core (the time it
        spent draining after the generator stopped counts too: the traffic caused it)."""
        return self.cpu_ns / (self.send_s * 1e9) if self.send_s > 0 else float("nan")

    def complete(self) -> bool:
        """Ran, the generator sent every frame, and every frame is captured or counted dropped."""
        return not self.error and self.sent == self.packets and self.unaccounted == 0

    def to_dict(self) -> dict:
        """JSON-ready, with the derived values."""
        return {**asdict(self), "unaccounted": self.unaccounted, "gen_pps": self.gen_pps,
                "cap_pps": self.cap_pps, "cpu_ns_per_pkt": self.cpu_per_pkt, "cpu_share": self.cpu_share,
                "complete": self.complete()}


def _settle(progress, target: int, idle_s: float, timeout_s: float = 60.0, poll_s: float = 0.02) -> None:
    """Wait until progress() reaches target, or stops moving for idle_s (drops), or timeout."""
    last, since = -1, time.monotonic()
    end = since + timeout_s
    while True:
        n = progress()
        now = time.monotonic()
        if n >= target or now >= end:
            return
        if n != last:
            last, since = n, now
        elif now - since >= idle_s:
            return
        time.sleep(poll_s)


class _CapfanCapture:
    """`capfan capture` on the capture end, into a fresh ring (deleted by close)."""

    def __init__(self, v, method: str, env: dict, cpus):
        from capfan import ring as R  # noqa: PLC0415
        from capfan.bench.ring import _preallocate  # noqa: PLC0415

        self.ring, self.proc = None, None
        # created here with the `capfan capture` defaults and its tmpfs pages allocated up
        # front: a long-running capture works on a ring whose pages exist, and AF_XDP pins (so
        # faults in) its whole arena before capturing anyway; AF_PACKET would otherwise pay
        # page allocation for every new page of its first lap inside the measurement
        self.ring_path = R.create(_tmp_name(method), ndesc=DEFAULT_RING_NDESC, arena_bytes=DEFAULT_RING_ARENA,
                                  snaplen=65535, full_policy="block")
        try:
            _preallocate(self.ring_path)
            argv = _pinned(cpus, _capfan_argv(method, self.ring_path, v.cap_if))
            self.proc = _Proc(v.popen(v.cap_ns, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
        except BaseException:
            self.close()
            raise

    def wait_ready(self) -> None:
        """Until the socket is open ('capturing:' line); raise with its stderr if it failed."""
        from capfan import ring as R  # noqa: PLC0415

        if self.proc.wait_line(lambda ln: ln.startswith("capturing:"), READY_TIMEOUT_S) is None:
            raise RuntimeError(f"capture did not start: {self.proc.stderr()[-600:]}")
        self.ring = R.Ring(self.ring_path)

    def progress(self) -> int:
        """Frames the ring has seen (published + dropped because full)."""
        st = self.ring.stats()
        return st["head"] + st["dropped_full"]

    def settle(self, sent: int) -> None:
        """Wait until it has taken every frame, or its counters stopped moving (drops)."""
        _settle(self.progress, sent, CAPFAN_IDLE_S)

    def finish(self, r: LiveRun) -> None:
        """Stop it and fill captured/drops/mode from its JSON summary."""
        out = self.proc.stop()
        if self.proc.p.returncode != 0:
            raise RuntimeError(f"capture exited {self.proc.p.returncode}: {self.proc.stderr()[-600:]}")
        s = json.loads(out.strip().splitlines()[-1])
        r.captured, r.kernel_drops, r.ring_drops = s["published"], s["kernel_drops"], s["ring_drops"]
        r.drops = r.kernel_drops + r.ring_drops
        if s["source"] == "afxdp":
            r.mode = f"{ {1: 'skb', 2: 'native'}.get(s['xdp_mode'], '?')} {'zero-copy' if s['zerocopy'] else 'copy'}"

    def close(self) -> None:
        """Kill if still running; delete the ring."""
        if self.proc is not None:
            self.proc.kill()
        if self.ring is not None:
            self.ring.close()
        if os.path.exists(self.ring_path):
            os.unlink(self.ring_path)


_TCPDUMP_STATS = re.compile(r"(\d+) packets captured, (\d+) packets received by filter, (\d+) packets dropped")


def closing_stats(text: str) -> dict[str, int]:
    """tcpdump's exit lines ('N packets captured', '... received by filter', '... dropped by
    kernel') -> {'captured': N, ...}; the last occurrence of each wins."""
    got = {}
    for key in ("captured", "received by filter", "dropped by kernel"):
        found = re.findall(rf"^(\d+) packets? {key}$", text, re.M)
        if found:
            got[key] = int(found[-1])
    return got


class _TcpdumpCapture:
    """tcpdump -i IFACE -w /dev/null -B 65536 -n on the capture end."""

    def __init__(self, v, env: dict, cpus):
        argv = _pinned(cpus, ["tcpdump", "-i", v.cap_if, "-w", "/dev/null", "-B", "65536", "-n"])
        self.proc = _Proc(v.popen(v.cap_ns, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env))

    def wait_ready(self) -> None:
        """Until tcpdump says it is listening."""
        if self.proc.wait_line(lambda ln: "listening on" in ln, READY_TIMEOUT_S) is None:
            raise RuntimeError(f"tcpdump did not start: {self.proc.stderr()[-600:]}")

    def _stats(self) -> tuple[int, int, int]:
        """(captured, received, dropped) now: SIGUSR1 makes tcpdump print them on stderr."""
        start = len(self.proc.err)
        self.proc.p.send_signal(signal.SIGUSR1)
        line = self.proc.wait_line(_TCPDUMP_STATS.search, 1.0, start)
        m = _TCPDUMP_STATS.search(line or "")
        return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)

    def settle(self, sent: int) -> None:
        """Wait until tcpdump has processed (or counted dropped) every frame; a partly filled
        block reaches it only after libpcap's 1 s timeout."""
        def progress():
            captured, _, dropped = self._stats()
            return captured + dropped
        _settle(progress, sent, TCPDUMP_IDLE_S, poll_s=0.1)

    def finish(self, r: LiveRun) -> None:
        """Stop it (SIGINT) and parse its closing statistics."""
        self.proc.stop()
        text = self.proc.stderr()
        got = closing_stats(text)
        if "captured" not in got:
            raise RuntimeError(f"no statistics from tcpdump: {text[-600:]}")
        r.captured, r.kernel_drops = got["captured"], got.get("dropped by kernel", 0)
        r.drops = r.kernel_drops
        r.counters["tcpdump_received"] = got.get("received by filter", 0)

    def close(self) -> None:
        """Kill if still running."""
        self.proc.kill()


def _drained(v, gen0: dict, expected: int, idle_s: float = 0.2) -> dict:
    """Generator counters once the frames trafgen handed over have left its veth end (paced
    frames wait in the tbf queue when trafgen exits)."""
    state = {}

    def tx():
        state["c"] = v.counters(v.gen_ns, v.gen_if)
        return state["c"]["tx_packets"] - gen0["tx_packets"]
    _settle(tx, expected, idle_s, timeout_s=30.0, poll_s=0.005)
    return state["c"]


def _delta(a: dict, b: dict) -> dict:
    """Counter differences b - a."""
    return {k: b[k] - a[k] for k in a}


def live_one(v, method: str, size: int, rate: int, npkts: int, conf: str, env: dict, cpus,
             rnd: int = 0) -> LiveRun:
    """One capture method on N frames from the generator; failures are recorded, not raised."""
    r = LiveRun(method, size, rate, npkts, round=rnd)
    cap = None
    try:
        cap = _TcpdumpCapture(v, env, cpus) if method == "tcpdump" else _CapfanCapture(v, method, env, cpus)
        cap.wait_ready()
        gen0, rx0 = v.counters(v.gen_ns, v.gen_if), v.counters(v.cap_ns, v.cap_if)
        cpu0, t0 = cap.proc.cpu_ns(), time.monotonic()
        sent = send_frames(v, conf, size, npkts, rate)
        gen1 = _drained(v, gen0, sent["trafgen_sent"])
        r.sent, r.trafgen_sent, r.send_s = gen1["tx_packets"] - gen0["tx_packets"], sent["trafgen_sent"], sent["send_s"]
        cap.settle(r.sent)
        r.cpu_ns, r.window_s = cap.proc.cpu_ns() - cpu0, time.monotonic() - t0
        rx1 = v.counters(v.cap_ns, v.cap_if)
        r.counters.update({f"gen_{k}": x for k, x in _delta(gen0, gen1).items() if k.startswith("tx")})
        r.counters.update({f"cap_{k}": x for k, x in _delta(rx0, rx1).items() if k.startswith("rx")})
        cap.finish(r)
    except Exception as e:  # noqa: BLE001 - one broken method must not hide the others
        r.error = f"{type(e).__name__}: {e}"
    finally:
        if cap is not None:
            cap.close()
    return r


def live_methods(cfg: Settings) -> tuple[list[str], list[str]]:
    """(live methods to run, notes on the ones left out and why)."""
    from capfan.sources import backends_built  # noqa: PLC0415

    wanted = [m for m in cfg.methods if m in LIVE_METHODS]
    notes = []
    if "tcpdump" in wanted and not shutil.which("tcpdump"):
        wanted.remove("tcpdump")
        notes.append("tcpdump baseline left out: tcpdump is not installed (apt-get install tcpdump)")
    if any(m.startswith("afxdp") for m in wanted) and "afxdp" not in backends_built():
        wanted = [m for m in wanted if not m.startswith("afxdp")]
        notes.append("AF_XDP left out: capfan was built without it (apt-get install libxdp-dev libbpf-dev, rebuild)")
    return wanted, notes


def live_skip_reason(cfg: Settings) -> str | None:
    """Why the live part cannot run here (None if it can)."""
    if not any(m in LIVE_METHODS for m in cfg.methods):
        return "live part not selected (--methods)"
    from capfan.bench.netns import is_root  # noqa: PLC0415

    if not is_root():
        return ("live capture part skipped: it needs root (network namespaces, veth, AF_PACKET, XDP); "
                "only the replay part ran. Run as root for AF_PACKET/AF_XDP/tcpdump numbers.")
    missing = [t for t in ("ip", "tc", "trafgen", "taskset") if not shutil.which(t)]
    if missing:
        return (f"live capture part skipped: {', '.join(missing)} not installed "
                "(apt-get install iproute2 netsniff-ng util-linux)")
    return None


def capture_cpus(pin: bool):
    """CPU for the capture processes: trafgen -P 1 pins its worker to CPU 0, so the capture gets
    the last other CPU we may use (None: no pinning, e.g. on one CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    others = [c for c in cpus if c != 0]
    return {others[-1]} if pin and others else None


def run_live(cfg: Settings, progress=None, methods=None) -> list[LiveRun]:
    """Namespaces up, every (round, size, rate, method) in turn, namespaces down (also on
    Ctrl-C or SIGTERM). methods defaults to live_methods(cfg)."""
    from capfan.bench import netns  # noqa: PLC0415 - looked up here so tests can substitute VethPair

    methods = live_methods(cfg)[0] if methods is None else methods
    if not methods:
        return []
    todo = [(rnd, size, rate, m) for rnd in range(cfg.rounds) for size in cfg.sizes
            for rate in cfg.rates for m in methods]
    runs: list[LiveRun] = []
    v = netns.VethPair()
    with interrupt_on_sigterm():
        work = tempfile.mkdtemp(prefix="capfan-bench-capture-")
        try:
            _up(v)
            confs = _write_configs(work, cfg.sizes)
            env, cpus = _child_env(os.path.join(work, "run")), capture_cpus(cfg.pin)
            for i, (rnd, size, rate, m) in enumerate(todo):
                t0 = time.monotonic()
                runs.append(live_one(v, m, size, rate, cfg.packets, confs[size], env, cpus, rnd))
                if progress:
                    progress(i + 1, len(todo), runs[-1], time.monotonic() - t0)
        finally:
            with netns.signals_held():
                v.down()
                shutil.rmtree(work, ignore_errors=True)
    return runs


def _up(v) -> None:
    """Set the pair up; a failure is a LiveSetupError (the CLI reports it and goes on)."""
    try:
        v.up()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise LiveSetupError(f"live part not run: cannot set up the network namespaces/veth: {e}") from e


def _write_configs(work: str, sizes) -> dict[int, str]:
    """One trafgen config file per frame size."""
    out = {}
    for size in sizes:
        out[size] = os.path.join(work, f"udp{size}.cfg")
        with open(out[size], "w") as f:
            f.write(trafgen_config(size))
    return out


@contextlib.contextmanager
def interrupt_on_sigterm():
    """While inside, SIGTERM raises KeyboardInterrupt like Ctrl-C, so `finally` blocks delete
    namespaces, rings and files (main thread only; elsewhere nothing changes)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ---------------------------------------------------------------- summary

def _median(xs) -> float:
    """Median ignoring NaN (NaN if nothing is left)."""
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def paired_ratios(num: list, den: list, metric) -> list[float]:
    """metric(num) / metric(den) per round that has both (same-round pairs cancel slow drift)."""
    a = {r.round: metric(r) for r in num if not r.error}
    b = {r.round: metric(r) for r in den if not r.error}
    return [a[k] / b[k] for k in sorted(a) if k in b and b[k] > 0 and a[k] == a[k]]


@dataclass
class ReplayRow:
    """Medians over rounds of one replay method at one size."""
    method: str
    size: int
    packets: int
    repeats: int
    errors: list
    complete: bool = True
    wall_mpps: float = float("nan")
    cpu_mpps: float = float("nan")
    cpu_ns: float = float("nan")           # CPU ns per record
    consumer_cpu_ns: float = float("nan")  # replay-c: consumer CPU ns per packet
    vs_tcpdump: float = float("nan")       # wall rate over tcpdump -r's (same round)
    vs_tcpdump_cpu: float = float("nan")   # per CPU-second rate over tcpdump -r's
    rounds_cpu_mpps: list = field(default_factory=list)


def _groups(runs, key) -> dict:
    """Runs grouped by key(run), in first-seen order."""
    g: dict = {}
    for r in runs:
        g.setdefault(key(r), []).append(r)
    return g


def summarize_replay(runs: list[ReplayRun]) -> list[ReplayRow]:
    """One row per (method, size) with paired ratios against tcpdump -r."""
    groups = _groups(runs, lambda r: (r.method, r.size))
    rows = []
    for (m, size), g in groups.items():
        ok = [r for r in g if not r.error]
        row = ReplayRow(m, size, g[0].packets, len(ok), [r.error for r in g if r.error])
        row.complete = bool(ok) and not row.errors and all(r.complete() for r in ok)
        if ok:
            row.wall_mpps = _median(r.wall_pps for r in ok) / 1e6
            row.cpu_mpps = _median(r.cpu_pps for r in ok) / 1e6
            row.cpu_ns = _median(r.cpu_ns / r.done for r in ok if r.done)
            row.consumer_cpu_ns = _median(r.consumer_cpu_ns / r.delivered for r in ok if r.delivered)
            row.rounds_cpu_mpps = [r.cpu_pps / 1e6 for r in ok]
            base = groups.get(("tcpdump-read", size), [])
            if m != "tcpdump-read":
                row.vs_tcpdump = _median(paired_ratios(g, base, lambda r: r.wall_pps))
                row.vs_tcpdump_cpu = _median(paired_ratios(g, base, lambda r: r.cpu_pps))
        rows.append(row)
    order = {m: i for i, m in enumerate(REPLAY_METHODS)}
    return sorted(rows, key=lambda r: (r.size, order.get(r.method, 99)))


@dataclass
class LiveRow:
    """Medians over rounds of one (method, size, rate)."""
    method: str
    size: int
    rate: int
    packets: int
    repeats: int
    errors: list
    complete: bool = True
    mode: str = ""
    sent: float = float("nan")
    captured: float = float("nan")
    drops: float = float("nan")            # median per run
    drops_max: int = 0
    drops_total: int = 0
    unaccounted: int = 0                   # summed over rounds
    gen_kpps: float = float("nan")
    cap_kpps: float = float("nan")
    cpu_ns: float = float("nan")           # capture CPU ns per captured frame
    cpu_share: float = float("nan")
    vs_tcpdump: float = float("nan")       # captured frames over tcpdump's (same round)
    vs_tcpdump_cpu: float = float("nan")   # CPU per frame over tcpdump's (<1: cheaper than tcpdump)


def summarize_live(runs: list[LiveRun]) -> list[LiveRow]:
    """One row per (method, size, rate) with paired ratios against tcpdump."""
    groups = _groups(runs, lambda r: (r.method, r.size, r.rate))
    rows = [_live_row(key, g, groups.get(("tcpdump", key[1], key[2]), [])) for key, g in groups.items()]
    order = {m: i for i, m in enumerate(LIVE_METHODS)}
    return sorted(rows, key=lambda r: (r.size, r.rate != 0, r.rate, order.get(r.method, 99)))


def _live_row(key, g: list[LiveRun], base: list[LiveRun]) -> LiveRow:
    """Aggregate the rounds of one live configuration."""
    m, size, rate = key
    ok = [r for r in g if not r.error]
    row = LiveRow(m, size, rate, g[0].packets, len(ok), [r.error for r in g if r.error])
    row.complete = bool(ok) and not row.errors and all(r.complete() for r in ok)
    if not ok:
        return row
    row.mode = ", ".join(sorted({r.mode for r in ok if r.mode}))
    row.sent, row.captured = _median(r.sent for r in ok), _median(r.captured for r in ok)
    row.drops = _median(r.drops for r in ok)
    row.drops_max, row.drops_total = max(r.drops for r in ok), sum(r.drops for r in ok)
    row.unaccounted = sum(r.unaccounted for r in ok)
    row.gen_kpps, row.cap_kpps = _median(r.gen_pps for r in ok) / 1e3, _median(r.cap_pps for r in ok) / 1e3
    row.cpu_ns, row.cpu_share = _median(r.cpu_per_pkt for r in ok), _median(r.cpu_share for r in ok)
    if m != "tcpdump":
        row.vs_tcpdump = _median(paired_ratios(g, base, lambda r: r.captured))
        row.vs_tcpdump_cpu = _median(paired_ratios(g, base, lambda r: r.cpu_per_pkt))
    return row


def replay_targets(rows: list[ReplayRow]) -> list[Target]:
    """pcap replay >= 10 Mpps per core at 64 B, without and with one reliable consumer."""
    out = []
    for m, what in (("replay", "no consumer"), ("replay-c", "one reliable C consumer")):
        r = next((x for x in rows if x.method == m and x.size == 64), None)
        name = f"pcap replay >= {REPLAY_TARGET_PPS / 1e6:.0f} Mpps on one core (64 B, {what})"
        if r is None or r.cpu_mpps != r.cpu_mpps:
            out.append(Target(name, "not measured (needs --sizes with 64 and this method)", None))
            continue
        spread = f"rounds {min(r.rounds_cpu_mpps):.1f}-{max(r.rounds_cpu_mpps):.1f}" if r.rounds_cpu_mpps else ""
        out.append(Target(name, f"{r.cpu_mpps:.1f} Mpps per CPU-second of the replaying thread "
                                f"(wall {r.wall_mpps:.1f} Mpps; {spread}); "
                                f"{_f(r.vs_tcpdump, '{:.1f}x')} tcpdump -r wall",
                          r.cpu_mpps * 1e6 >= REPLAY_TARGET_PPS and r.complete,
                          "packets / CPU time of the thread running the replay loop (file in the page cache)"))
    return out


def live_targets(rows: list[LiveRow], methods, rates, skip_reason: str | None) -> list[Target]:
    """Per capfan method: capture >= tcpdump (every size and rate), and 0 drops at each rate."""
    capfan_methods = [m for m in methods if m in CAPFAN_ARGS]
    if skip_reason:
        return [Target("live capture targets (capture >= tcpdump, 0 drops)", skip_reason, None)]
    out = []
    for m in capfan_methods:
        out.append(_vs_tcpdump_target(m, [r for r in rows if r.method == m]))
        for rate in rates:
            out.append(_drop_target(m, rate, [r for r in rows if r.method == m and r.rate == rate],
                                    [r for r in rows if r.method == "tcpdump" and r.rate == rate]))
    return out


def _vs_tcpdump_target(m: str, rs: list[LiveRow]) -> Target:
    """Worst median captured-frames ratio against tcpdump over sizes and rates."""
    name = f"{m} captures >= tcpdump (frames captured, every size and rate)"
    rs = [r for r in rs if r.vs_tcpdump == r.vs_tcpdump]
    if not rs:
        return Target(name, "no tcpdump baseline or no successful run", None)
    worst = min(rs, key=lambda r: r.vs_tcpdump)
    cpu = [r.vs_tcpdump_cpu for r in rs if r.vs_tcpdump_cpu == r.vs_tcpdump_cpu]
    return Target(name, f"worst {worst.vs_tcpdump:.3f}x ({worst.size} B at {rate_label(worst.rate)}: "
                        f"{worst.captured:,.0f} vs tcpdump {worst.captured / worst.vs_tcpdump:,.0f} per run); "
                        f"capture CPU per frame {_f(min(cpu, default=float('nan')), '{:.2f}')}-"
                        f"{_f(max(cpu, default=float('nan')), '{:.2f}')}x tcpdump's",
                  worst.vs_tcpdump >= 1.0, "median over rounds of the same-round ratio")


def _drop_target(m: str, rate: int, rs: list[LiveRow], tcpdump: list[LiveRow]) -> Target:
    """No drops (and nothing unaccounted) at one generator rate, every size and round."""
    at = "the generator's full rate" if not rate else f"a fixed {rate_label(rate)}"
    name = f"{m}: 0 drops at {at} (every size and round)"
    if not rs:
        return Target(name, "not measured", None)
    runs = sum(r.repeats for r in rs)
    drops, lost = sum(r.drops_total for r in rs), sum(r.unaccounted for r in rs)
    sent = ", ".join(f"{r.size} B {r.gen_kpps:.0f} kpps" for r in rs)
    td = sum(r.drops_total for r in tcpdump)
    meas = (f"{drops:,} dropped, {lost:,} unaccounted over {runs} runs of {rs[0].packets:,} frames "
            f"(generator {sent}); tcpdump dropped {td:,}" if tcpdump else
            f"{drops:,} dropped, {lost:,} unaccounted over {runs} runs (generator {sent})")
    ok = drops == 0 and lost == 0 and all(r.complete for r in rs)
    return Target(name, meas + ("" if all(r.complete for r in rs) else "; some runs failed"), ok)


def accounting_ok(replay: list[ReplayRun], live: list[LiveRun]) -> bool:
    """Every run ran, read/published/delivered everything, and every live frame is accounted."""
    return all(r.complete() for r in replay) and all(r.complete() for r in live)


# ---------------------------------------------------------------- report

def machine_info() -> dict:
    """What the numbers were measured on, plus the tool versions."""
    from capfan.bench.ring import machine_info as ring_machine  # noqa: PLC0415

    info = ring_machine()
    info["trafgen"] = _version(["trafgen", "-v"])
    info["tcpdump"] = _version(["tcpdump", "--version"])
    return info


def _version(argv) -> str:
    """First output line of a tool's version flag ('' when missing)."""
    if not shutil.which(argv[0]):
        return ""
    r = subprocess.run(argv, capture_output=True, text=True)
    return ((r.stdout or r.stderr).strip().splitlines() or [""])[0]


def replay_table(rows: list[ReplayRow]):
    """rich Table of the replay part."""
    from rich.table import Table  # noqa: PLC0415

    t = Table(title="replay: pcap file -> ring at max speed (vs tcpdump -r on the same file)", title_justify="left")
    for col in ("method", "size", "packets", "Mpps\nwall", "Mpps per\nCPU-second", "CPU\nns/pkt",
                "consumer\nns/pkt", "x tcpdump -r\nwall", "x tcpdump -r\nper CPU-s", "complete"):
        t.add_column(col, justify="left" if col in ("method",) else "right", no_wrap=True)
    for r in rows:
        if not r.repeats:
            t.add_row(r.method, f"{r.size} B", f"{r.packets:,}", f"[red]error: {r.errors[0][:70]}[/red]")
            continue
        t.add_row(r.method, f"{r.size} B", f"{r.packets:,}", _f(r.wall_mpps, "{:.2f}"), _f(r.cpu_mpps, "{:.2f}"),
                  _f(r.cpu_ns), _f(r.consumer_cpu_ns, dash=""), _f(r.vs_tcpdump, "{:.2f}x", ""),
                  _f(r.vs_tcpdump_cpu, "{:.2f}x", ""), "yes" if r.complete else "[red]NO[/red]")
    return t


def live_table(rows: list[LiveRow], size: int):
    """rich Table of the live part at one frame size."""
    from rich.table import Table  # noqa: PLC0415

    t = Table(title=f"live: {size}-byte frames from trafgen over veth (per run: medians over rounds)",
              title_justify="left")
    for col in ("method", "rate", "mode", "sent", "captured", "drops\n(max)", "unacc-\nounted",
                "generator\nkpps", "captured\nkpps", "capture CPU\nns/frame", "CPU\n% core",
                "x tcpdump\ncaptured", "CPU/frame\nx tcpdump"):
        t.add_column(col, justify="left" if col in ("method", "rate", "mode") else "right", no_wrap=True)
    for r in (r for r in rows if r.size == size):
        if not r.repeats:
            t.add_row(r.method, rate_label(r.rate), "", "", f"[red]error: {r.errors[0][:90]}[/red]")
            continue
        drops = f"{r.drops:,.0f} ({r.drops_max:,})"
        if r.drops_total:
            drops = f"[red]{drops}[/red]"
        unacc = f"{r.unaccounted:,}" if not r.unaccounted else f"[red]{r.unaccounted:,}[/red]"
        t.add_row(r.method, rate_label(r.rate), r.mode, f"{r.sent:,.0f}", f"{r.captured:,.0f}", drops, unacc,
                  _f(r.gen_kpps, "{:.0f}"), _f(r.cap_kpps, "{:.0f}"), _f(r.cpu_ns, "{:.0f}"),
                  _f(r.cpu_share * 100, "{:.0f}%"), _f(r.vs_tcpdump, "{:.3f}x", ""),
                  _f(r.vs_tcpdump_cpu, "{:.2f}x", ""))
    return t


LEGEND = (
    "replay: Mpps wall = records / wall time of the replay (replay-c: until the consumer had every packet); "
    "per CPU-second = records / CPU time of the replaying thread (tcpdump -r: user+sys of the process, "
    "incl. its start-up); consumer ns/pkt = the reliable C consumer's CPU per packet. "
    "live: sent = tx_packets delta of the generator's veth end; captured/drops = the method's own counters "
    "(capfan: published, kernel + ring drops; tcpdump: captured, dropped by kernel); unaccounted = sent - "
    "captured - drops, summed over rounds (must be 0); generator kpps = sent / trafgen's send time; "
    "captured kpps = captured / send time; capture CPU = the capture process's CPU time (all threads) from "
    "generator start until every frame was taken, per captured frame and per second of sending as a share "
    "of one core (the kernel's receive path runs in softirq on the generator's CPU and is not included); "
    "x tcpdump = median over rounds of the same-round ratio (captured: >= 1 is as good; CPU/frame: < 1 is "
    "cheaper than tcpdump)."
)


def render(console, replay_rows, live_rows, ts, header: str, notes: list[str], ok: bool) -> None:
    """Print the whole report."""
    console.print(header)
    if replay_rows:
        console.print(replay_table(replay_rows))
    for size in sorted({r.size for r in live_rows}):
        console.print(live_table(live_rows, size))
    for n in notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    console.print("methods:")
    for m in dict.fromkeys([r.method for r in replay_rows] + [r.method for r in live_rows]):
        console.print(f"  {m:<13} {METHODS.get(m, '')}")
    console.print(LEGEND)
    console.print(targets_table(ts))
    console.print("[green]accounting: every replay read/published/delivered every record; every live frame "
                  "sent was captured or counted as dropped[/green]" if ok else
                  "[red]accounting: some run failed or did not account for every packet (see the tables)[/red]")


def report_dict(replay, live, replay_rows, live_rows, ts, info, settings, notes) -> dict:
    """Everything measured, for --json (NaN becomes null)."""

    return no_nan({"settings": settings, "machine": info, "notes": notes,
                    "replay_rows": [asdict(r) for r in replay_rows], "live_rows": [asdict(r) for r in live_rows],
                    "targets": [asdict(t) for t in ts], "accounting_ok": accounting_ok(replay, live),
                    "replay_runs": [r.to_dict() for r in replay], "live_runs": [r.to_dict() for r in live]})

"""`capfan bench ring`: fan-out throughput of the shared-memory ring against two baselines.

Every configuration runs in the same invocation, each role in its own forked process:

* ``produce-only``      reference: the ring's C producer with nobody attached
* ``ring-c``            C producer (capfan_bench_produce) -> N reliable C consumers
* ``ring-py``           C producer -> N reliable Python batch consumers (capfan.ring.Consumer,
                        numpy over every descriptor of each batch)
* ``ring-c-lossy``      C producer -> N lossy C consumers: they never hold the producer, so its
                        ns/packet is its own cost of fanning out to N readers
* ``ring-c-lossy-spin`` diagnostic (not in the default set): as ring-c-lossy with consumers that
                        busy-poll before sleeping, so the producer rarely has to wake anyone
* ``zmq``               baseline: Python PUB -> N Python SUB over ipc://, 256 packets per message
* ``copyq``             baseline: a C producer copying every packet into N SPSC shared-memory
                        queues, N C consumers (capfan_bench_copyq_*)

By default the producer runs alone on the first CPU and the consumers share the others, as a
pinned capture worker would; every method gets the same split. Rates are reported per wall-clock
second (what a consumer received) and per consumer CPU-second (what one core running that
consumer sustains): with N consumers on one core the wall rate is mostly the scheduler's share.
A shared machine drifts between fast and slow phases lasting minutes, so the matrix is run in
interleaved rounds, the table shows medians and ratios are taken between runs of the same round.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np

from capfan._capfan_core import ffi, lib
from capfan.bench.report import Target, cpu_model, no_nan, targets_table
from capfan.bench.report import fmt as _f

LINE_RATE_64B = 14_880_952        # 10GbE at 64-byte frames (84 B on the wire incl. preamble/IFG)
PRODUCER_SCALING_TARGET = 1.2     # producer ns/pkt at 8 consumers <= 1.2x that at 1
ZMQ_RATIO_TARGET = 10.0

NFLOWS = 1024                     # synthetic flows (source ports) the producer cycles through
FLUSH_EVERY = 64                  # producer publishes (and wakes sleepers) every 64 packets: a NIC burst
PY_BATCH = 8192                   # Python consumer batch size
ZMQ_BATCH = 256                   # packets per ZeroMQ message
SPIN_DIAG_US = 50                 # spin of the diagnostic ring-c-lossy-spin consumers
STALL_BUDGET_US = 30_000_000      # reliable consumers must never be demoted during a bench run
IDLE_TIMEOUT_S = 10.0             # a consumer seeing nothing for this long gives up (producer died)
RUN_TIMEOUT_S = 300.0             # whole-run watchdog
PAGE = 4096

#: method -> description; the order is the table's row order
METHODS = {
    "produce-only": "ring producer alone, no consumer attached (reference for producer ns/pkt)",
    "ring-c": "ring, reliable C consumers (read 8 B of every packet)",
    "ring-py": "ring, reliable Python batch consumers (numpy over every descriptor, batch 8192)",
    "ring-c-lossy": "ring, lossy C consumers: never hold the producer -> producer fan-out cost",
    "ring-c-lossy-spin": f"diagnostic: as ring-c-lossy, consumers busy-poll {SPIN_DIAG_US} us before sleeping",
    "zmq": f"baseline: ZeroMQ PUB/SUB over ipc://, {ZMQ_BATCH} pkts/message, Python subscribers (numpy)",
    "copyq": "baseline: producer copies every packet into N SPSC shm queues, C consumers",
}
DEFAULT_METHODS = ("produce-only", "ring-c", "ring-py", "ring-c-lossy", "zmq", "copyq")
RING_METHODS = ("ring-c", "ring-py", "ring-c-lossy", "ring-c-lossy-spin")


@dataclass
class Settings:
    """Geometry and knobs shared by every run of one bench invocation."""
    ndesc: int = 1 << 18
    arena_bytes: int = 256 << 20
    # per consumer queue; small because ringbench.c maps the queues inside the measured call, so
    # the first lap's page faults (~1 us per 4 KiB page here) are inside the baseline's numbers
    copyq_bytes: int = 4 << 20
    spin_us: int = 0              # ring consumers' spin before sleeping (0 = the ring's default)
    pin: bool = True              # producer on its own CPU, consumers share the others


def packets_for(method: str, size: int, n: int, packets: int) -> int:
    """Packets one run publishes. Big frames and the baselines cost more per packet (ZeroMQ and the
    copy queues also per consumer), so they get fewer, keeping every run's measured window in the
    same range (0.2-1 s here); rates do not depend on the count, the table shows it."""
    small = size <= 256
    k = packets if small else packets // 2
    if method == "zmq":
        k //= (4 if small else 8) * max(1, n // 2)
    elif method == "copyq":
        k = k * 2 // max(1, n // 4) if small else k // max(1, n // 2)
    return max(k, 1)


@dataclass
class ConsumerResult:
    """What one consumer process measured."""
    delivered: int
    dropped: int
    cpu_ns: int
    end_ns: int
    checksum: int
    demotions: int = 0
    batches: int = 0


@dataclass
class RunResult:
    """One (method, packet size, consumer count) measurement."""
    method: str
    size: int
    nconsumers: int
    packets: int
    published: int = 0
    producer_cpu_ns: int = 0
    producer_start_ns: int = 0
    producer_end_ns: int = 0
    producer_blocked_ns: int = 0
    producer_sys_ns: int = 0      # kernel part of the producer process's CPU time (wakes, faults)
    producer_minflt: int = 0      # page faults the producer process took while measured
    consumers: list[ConsumerResult] = field(default_factory=list)
    error: str | None = None
    round: int = 0

    @property
    def producer_ns_per_pkt(self) -> float:
        """Producer CPU nanoseconds per published packet."""
        return self.producer_cpu_ns / self.published if self.published else float("nan")

    @property
    def producer_wall_pps(self) -> float:
        """Packets published per wall-clock second."""
        dt = self.producer_end_ns - self.producer_start_ns
        return self.published / dt * 1e9 if dt > 0 else float("nan")

    @property
    def blocked_frac(self) -> float:
        """Share of the producer's wall time spent blocked by reliable consumers."""
        dt = self.producer_end_ns - self.producer_start_ns
        return self.producer_blocked_ns / dt if dt > 0 else 0.0

    def wall_pps(self) -> list[float]:
        """Per consumer: packets delivered per wall-clock second since the producer started."""
        return [c.delivered / (c.end_ns - self.producer_start_ns) * 1e9 if c.end_ns > self.producer_start_ns
                else float("nan") for c in self.consumers]

    def cpu_pps(self) -> list[float]:
        """Per consumer: packets delivered per CPU-second of that consumer (= pps on one core)."""
        return [c.delivered / c.cpu_ns * 1e9 if c.cpu_ns else float("nan") for c in self.consumers]

    def lost(self) -> int:
        """Packets published but not delivered, summed over consumers."""
        return sum(self.published - c.delivered for c in self.consumers)

    def complete(self) -> bool:
        """Every consumer got every published packet; a lossy one may instead have counted some
        as dropped (the ring's accounting invariant)."""
        if self.error or not self.published or len(self.consumers) != self.nconsumers:
            return False
        if "lossy" in self.method:
            return all(c.delivered + c.dropped == self.published for c in self.consumers)
        return all(c.delivered == self.published and not c.dropped for c in self.consumers)

    def to_dict(self) -> dict:
        """JSON-ready dict with the raw measurements and the derived rates."""
        d = asdict(self)
        d.update(producer_ns_per_pkt=self.producer_ns_per_pkt, producer_wall_pps=self.producer_wall_pps,
                 wall_pps=self.wall_pps(), cpu_pps=self.cpu_pps(), lost=self.lost(),
                 complete=self.complete())
        return d


# ---------------------------------------------------------------- process plumbing

class _Ctl:
    """A child's end of its control pipe to the parent."""

    def __init__(self, conn):
        self.conn = conn

    def ready(self) -> None:
        """Tell the parent this process is set up (attached, connected, pages faulted in)."""
        self.conn.send(("ready", None))

    def wait(self, what: str) -> None:
        """Block until the parent sends `what`."""
        msg = self.conn.recv()
        if msg != what:
            raise RuntimeError(f"expected {what!r} from the bench parent, got {msg!r}")

    def poll(self, what: str) -> bool:
        """True if the parent sent `what` (non-blocking)."""
        if self.conn.poll():
            self.wait(what)
            return True
        return False


def _child_main(conn, fn, args, cpus):
    """Body of every bench child: run fn(ctl, *args) and ship its result or error back."""
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        conn.send(("result", fn(_Ctl(conn), *args)))
    except BaseException as e:  # noqa: BLE001 - report anything, the parent decides
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
    finally:
        conn.close()


class _Child:
    """A forked bench process and the parent's end of its pipe."""

    def __init__(self, fn, *args, cpus=None):
        ctx = mp.get_context("fork")  # children inherit the imported modules; cffi handles are made after fork
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(child_conn, fn, args, cpus), daemon=True)
        self.proc.start()
        child_conn.close()

    def expect(self, kind: str, deadline: float):
        """Wait for a message of `kind` ('ready' or 'result'); raise on child error or timeout."""
        left = deadline - time.monotonic()
        if left <= 0 or not self.conn.poll(left):
            raise TimeoutError(f"bench child {self.proc.pid} sent no {kind!r} in time")
        k, v = self.conn.recv()
        if k == "error":
            raise RuntimeError(f"bench child {self.proc.pid} failed: {v}")
        if k != kind:
            raise RuntimeError(f"bench child {self.proc.pid} sent {k!r}, expected {kind!r}")
        return v

    def send(self, msg: str) -> None:
        """Send a control word to the child."""
        self.conn.send(msg)

    def stop(self) -> None:
        """Reap the child; kill it (it is ours) if it did not finish."""
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


def cpu_split(pin: bool = True) -> tuple[set | None, set | None]:
    """(producer CPUs, consumer CPUs): the producer gets the first allowed CPU to itself and the
    consumers share the others, as a capture worker on its pinned core would. Without pinning, or
    with a single CPU, everything floats (None)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _orchestrate(producer: tuple, consumers: list[tuple], timeout: float = RUN_TIMEOUT_S, pin: bool = True):
    """Start the producer, then the consumers; release the producer once every consumer is ready.
    Returns (producer result dict, [consumer result dict])."""
    deadline = time.monotonic() + timeout
    pcpus, ccpus = cpu_split(pin)
    children = []
    try:
        prod = _Child(*producer, cpus=pcpus)
        children.append(prod)
        prod.expect("ready", deadline)  # warmed up before consumers attach at the ring's head
        cons = []
        for spec in consumers:
            cons.append(_Child(*spec, cpus=ccpus))
            children.append(cons[-1])
        for c in cons:
            c.expect("ready", deadline)
        prod.send("go")
        cres = [c.expect("result", deadline) for c in cons]
        prod.send("finish")  # lets a producer with background I/O (zmq) take its CPU time last
        pres = prod.expect("result", deadline)
        return pres, cres
    finally:
        for ch in children:
            ch.stop()


# ---------------------------------------------------------------- helpers

MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23  # Linux >= 5.14


def _madvise():
    """libc madvise via ctypes (the C core has no call to populate a mapping)."""
    import ctypes  # noqa: PLC0415

    f = ctypes.CDLL(None, use_errno=True).madvise
    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return f


def _populate(ptr, nbytes: int, write: bool) -> None:
    """Map every page of a shared mapping into this process before measuring: first-touch page
    faults (~2 us each on this kind of VM) are not what the ring costs in steady state.
    MADV_POPULATE_* does it in one call; older kernels get one read per page instead."""
    addr = int(ffi.cast("uintptr_t", ptr))
    if _madvise()(addr, nbytes, MADV_POPULATE_WRITE if write else MADV_POPULATE_READ) != 0:
        np.frombuffer(ffi.buffer(ptr, nbytes), dtype=np.uint8)[::PAGE].sum()


def _ring_populate(r, write: bool = False) -> None:
    """Populate a ring's descriptor ring and arena in mapping `r` (capfan_ring *)."""
    st = ffi.new("capfan_ring_stats *")
    lib.capfan_ring_stats_get(r, st)
    _populate(lib.capfan_ring_desc(r), st.ndesc * 32, write)
    _populate(lib.capfan_ring_arena(r), st.arena_bytes, write)


def _rusage():
    return resource.getrusage(resource.RUSAGE_SELF)


def _rusage_since(r0) -> dict:
    """Kernel CPU time and page faults of this process since r0 (a getrusage result)."""
    r1 = _rusage()
    return {"sys_ns": int((r1.ru_stime - r0.ru_stime) * 1e9), "minflt": r1.ru_minflt - r0.ru_minflt}


def _last_error() -> str:
    return ffi.string(lib.capfan_last_error()).decode(errors="replace")


def _now() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC: comparable across the forked processes


def synth_batch(size: int, n: int, first: int = 0) -> np.ndarray:
    """n Ethernet/IPv4/UDP frames of `size` bytes as an (n, size) uint8 array, shaped like the
    C producer's frames (source port varies over NFLOWS flows)."""
    hdr = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0,
                 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
                 0, 0, 0, 53, 0, 0, 0, 0])
    f = np.zeros((n, size), dtype=np.uint8)
    f[:, :42] = np.frombuffer(hdr, dtype=np.uint8)
    f[:, 16], f[:, 17] = (size - 14) >> 8, (size - 14) & 0xFF
    f[:, 38], f[:, 39] = (size - 34) >> 8, (size - 34) & 0xFF
    sport = 1024 + (np.arange(first, first + n) % NFLOWS)
    f[:, 34], f[:, 35] = sport >> 8, sport & 0xFF
    return f


# ---------------------------------------------------------------- ring roles (child processes)

def _ring_producer(ctl, path: str, npkts: int, size: int, warm: int):
    """Producer process: warm the ring up, then publish npkts frames with the C loop."""
    p = lib.capfan_producer_open(path.encode())
    if p == ffi.NULL:
        raise RuntimeError(_last_error())
    try:
        r = lib.capfan_producer_ring(p)
        _ring_populate(r, write=True)
        cpu = ffi.new("uint64_t *")
        lib.capfan_bench_produce(p, warm, size, NFLOWS, FLUSH_EVERY, cpu)  # nobody attached yet
        st = ffi.new("capfan_ring_stats *")
        lib.capfan_ring_stats_get(r, st)
        blocked0 = st.blocked_ns
        ctl.ready()
        ctl.wait("go")
        ru, t0 = _rusage(), _now()
        done = lib.capfan_bench_produce(p, npkts, size, NFLOWS, FLUSH_EVERY, cpu)
        t1 = _now()
        lib.capfan_ring_stats_get(r, st)
        out = dict(published=int(done), cpu_ns=int(cpu[0]), start_ns=t0, end_ns=t1,
                   blocked_ns=int(st.blocked_ns - blocked0), **_rusage_since(ru))
    finally:
        lib.capfan_producer_free(p)  # flushes, gives up the producer role, unmaps
    ctl.wait("finish")
    return out


def _c_consumer(ctl, path: str, name: str, npkts: int, policy: int, spin_us: int):
    """C consumer process: attach, then let capfan_bench_consume read npkts descriptors."""
    cname = ffi.new("char[]", name.encode())
    opts = ffi.new("capfan_consumer_opts *", {
        "name": cname, "policy": policy, "stall_budget_us": STALL_BUDGET_US, "spin_us": spin_us,
        "group": ffi.NULL, "start": 0})
    c = lib.capfan_consumer_attach(path.encode(), opts)
    if c == ffi.NULL:
        raise RuntimeError(_last_error())
    try:
        _ring_populate(lib.capfan_consumer_ring(c))
        ctl.ready()
        cpu, ck = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        delivered = lib.capfan_bench_consume(c, npkts, int(IDLE_TIMEOUT_S * 1e9), cpu, ck)
        end = _now()
        st = ffi.new("capfan_slot_stats *")
        lib.capfan_consumer_stats(c, st)
    finally:
        lib.capfan_consumer_free(c)  # detaches (slot freed), unmaps
    return ConsumerResult(int(delivered), int(st.dropped), int(cpu[0]), end, int(ck[0]), int(st.demotions))


def _py_consumer(ctl, path: str, name: str, npkts: int, spin_us: int):
    """Python batch consumer process: every descriptor of every batch goes through numpy."""
    from capfan.ring import Consumer  # noqa: PLC0415 - after fork, in the child only

    c = Consumer(path, name, policy="reliable", stall_budget_us=STALL_BUDGET_US, spin_us=spin_us,
                 batch=PY_BATCH)
    try:
        # same mapping as the C consumer's: populate it the same way
        _ring_populate(lib.capfan_consumer_ring(c._c))
        ctl.ready()
        seen = total = xor = nb = 0
        b = None
        cpu0 = time.process_time_ns()
        while seen < npkts:
            b = c.next(timeout=IDLE_TIMEOUT_S)  # also releases the previous batch
            if b is None:
                break
            d = b.desc
            total += int(d["caplen"].sum())                # touch every descriptor: lengths ...
            xor ^= int(np.bitwise_xor.reduce(d["hash"]))   # ... and flow hashes
            seen += b.count
            nb += 1
        if b is not None:
            b.release()
        cpu = time.process_time_ns() - cpu0
        end = _now()
        st = c.stats()
    finally:
        c.close()
    return ConsumerResult(st["delivered"], st["dropped"], cpu, end, total ^ xor, st["demotions"], nb)


# ---------------------------------------------------------------- ZeroMQ baseline roles

HELLO, END = b"H", b"E"


def _zmq_message(size: int, n: int) -> bytes:
    """One batch message: u32 count, n u16 lengths, then the n frames back to back."""
    lens = np.full(n, size, dtype="<u2")
    return np.uint32(n).tobytes() + lens.tobytes() + synth_batch(size, n).tobytes()


def _zmq_publisher(ctl, endpoint: str, npkts: int, size: int):
    """PUB process: bind, greet subscribers until all are in (no slow-joiner loss), then send
    npkts packets in ZMQ_BATCH-packet messages and an end marker."""
    import zmq  # noqa: PLC0415

    ctx = zmq.Context(io_threads=1)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)  # unbounded queue: PUB drops at the HWM, the ring never does
    pub.setsockopt(zmq.LINGER, -1)
    pub.bind(endpoint)
    full = _zmq_message(size, ZMQ_BATCH)
    ctl.ready()
    while not ctl.poll("go"):
        pub.send(HELLO)
        time.sleep(0.002)
    cpu0, ru, t0 = time.process_time_ns(), _rusage(), _now()
    sent = 0
    while sent < npkts:
        n = min(ZMQ_BATCH, npkts - sent)
        pub.send(full if n == ZMQ_BATCH else _zmq_message(size, n))  # copy=True: zmq owns a copy
        sent += n
    t1 = _now()
    pub.send(END)
    ctl.wait("finish")  # subscribers have everything: the I/O thread's work is done too
    cpu = time.process_time_ns() - cpu0  # includes the zmq I/O thread that writes to N sockets
    out = dict(published=sent, cpu_ns=cpu, start_ns=t0, end_ns=t1, blocked_ns=0, **_rusage_since(ru))
    pub.close()
    ctx.term()
    return out


def _touch_zmq_batch(buf) -> tuple[int, int, int]:
    """(packets, sum of lengths, xor of 4 bytes of every packet) of one batch message, via numpy
    views of the received buffer: the same per-packet work as the Python ring consumer's."""
    n = int(np.frombuffer(buf, dtype="<u4", count=1)[0])
    lens = np.frombuffer(buf, dtype="<u2", count=n, offset=4)
    stride = int(lens[0])  # the bench sends equal-size frames back to back
    ports = np.ndarray((n,), dtype="<u4", buffer=buf, offset=4 + 2 * n + 34, strides=(stride,))
    return n, int(lens.sum()), int(np.bitwise_xor.reduce(ports))


def _zmq_subscriber(ctl, endpoint: str):
    """SUB process: receive batches until the end marker, touching every packet with numpy."""
    import zmq  # noqa: PLC0415

    ctx = zmq.Context(io_threads=1)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT_S * 1000))
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    sub.recv()  # raises zmq.Again if no hello arrives
    ctl.ready()  # a hello arrived: the subscription is live, nothing sent from now on is lost
    got = total = xor = nb = 0
    cpu0 = time.process_time_ns()
    while True:
        try:
            buf = sub.recv(copy=False).buffer
        except zmq.Again:
            break  # publisher gone: report what arrived
        if len(buf) == 1:
            if bytes(buf) == END:
                break
            continue  # a late hello
        n, length_sum, ports_xor = _touch_zmq_batch(buf)
        got, total, xor, nb = got + n, total + length_sum, xor ^ ports_xor, nb + 1
    cpu = time.process_time_ns() - cpu0
    end = _now()
    sub.close(linger=0)
    ctx.term()
    return ConsumerResult(got, 0, cpu, end, total ^ xor, 0, nb)


# ---------------------------------------------------------------- per-consumer copy baseline roles

def _copyq_producer(ctl, path: str, npkts: int, size: int):
    """Copy-queue producer: every packet is copied into each consumer's own queue (C loop)."""
    ctl.ready()
    ctl.wait("go")
    cpu = ffi.new("uint64_t *")
    ru, t0 = _rusage(), _now()
    done = lib.capfan_bench_copyq_produce(path.encode(), npkts, size, cpu)
    t1 = _now()
    if done < 0:
        raise RuntimeError(f"capfan_bench_copyq_produce failed on {path}")
    out = dict(published=int(done), cpu_ns=int(cpu[0]), start_ns=t0, end_ns=t1, blocked_ns=0,
               **_rusage_since(ru))
    ctl.wait("finish")
    return out


def _copyq_consumer(ctl, path: str, q: int, npkts: int):
    """Copy-queue consumer q (C loop)."""
    ctl.ready()
    cpu, ck = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    got = lib.capfan_bench_copyq_consume(path.encode(), q, npkts, cpu, ck)
    end = _now()
    if got < 0:
        raise RuntimeError(f"capfan_bench_copyq_consume failed on {path}")
    return ConsumerResult(int(got), 0, int(cpu[0]), end, int(ck[0]))


# ---------------------------------------------------------------- one run per (method, size, N)

_seq = iter(range(1 << 30))


def _tmp_name(kind: str) -> str:
    return f"bench-{os.getpid()}-{next(_seq)}-{kind}"


def _ring_run(method: str, size: int, n: int, npkts: int, cfg: Settings) -> RunResult:
    """Ring producer plus n consumers of the method's kind, on a fresh ring."""
    from capfan import ring as R  # noqa: PLC0415

    path = R.create(_tmp_name("ring"), ndesc=cfg.ndesc, arena_bytes=cfg.arena_bytes, snaplen=2048)
    try:
        spin = SPIN_DIAG_US if method == "ring-c-lossy-spin" else cfg.spin_us
        if method == "produce-only":
            cons = []
        elif method == "ring-py":
            cons = [(_py_consumer, path, f"py{i}", npkts, spin) for i in range(n)]
        else:
            policy = R.RELIABLE if method == "ring-c" else R.LOSSY
            cons = [(_c_consumer, path, f"c{i}", npkts, policy, spin) for i in range(n)]
        # warm-up: one lap of the descriptor ring before anyone attaches
        pres, cres = _orchestrate((_ring_producer, path, npkts, size, cfg.ndesc), cons, pin=cfg.pin)
    finally:
        os.unlink(path)
    return _result(method, size, n, npkts, pres, cres)


def _zmq_run(size: int, n: int, npkts: int, cfg: Settings) -> RunResult:
    """ZeroMQ PUB/SUB over ipc:// with n subscribers."""
    sock = os.path.join(tempfile.gettempdir(), _tmp_name("zmq") + ".ipc")
    try:
        pres, cres = _orchestrate((_zmq_publisher, "ipc://" + sock, npkts, size),
                                  [(_zmq_subscriber, "ipc://" + sock) for _ in range(n)], pin=cfg.pin)
    finally:
        if os.path.exists(sock):
            os.unlink(sock)
    return _result("zmq", size, n, npkts, pres, cres)


def _copyq_run(size: int, n: int, npkts: int, cfg: Settings) -> RunResult:
    """Per-consumer copy queues in one shared-memory file next to the rings."""
    from capfan.ring import ring_dir  # noqa: PLC0415

    path = os.path.join(ring_dir(), _tmp_name("copyq"))
    slot_bytes, slots = copyq_geometry(size, cfg.copyq_bytes)
    if lib.capfan_bench_copyq_create(path.encode(), n, slots, slot_bytes) != 0:
        raise RuntimeError(f"cannot create the copy-queue file {path}")
    try:
        _preallocate(path)
        pres, cres = _orchestrate((_copyq_producer, path, npkts, size),
                                  [(_copyq_consumer, path, q, npkts) for q in range(n)], pin=cfg.pin)
    finally:
        os.unlink(path)
    return _result("copyq", size, n, npkts, pres, cres)


def copyq_geometry(size: int, queue_bytes: int) -> tuple[int, int]:
    """(slot bytes, slots) of one copy queue: a 4-byte length + the frame, cache-line aligned;
    a power of two of slots fitting in queue_bytes (at least 1024)."""
    slot_bytes = (size + 4 + 63) // 64 * 64
    return slot_bytes, max(1024, 1 << ((queue_bytes // slot_bytes).bit_length() - 1))


def _preallocate(path: str) -> None:
    """Allocate a tmpfs file's pages up front (content unchanged), so the copy queues, which the C
    loops map inside their measured calls, at least do not pay page allocation there."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError:
        pass  # not supported there: the baseline just pays its first-touch faults
    finally:
        os.close(fd)


def _result(method, size, n, npkts, pres: dict, cres: list) -> RunResult:
    return RunResult(method=method, size=size, nconsumers=n, packets=npkts, published=pres["published"],
                     producer_cpu_ns=pres["cpu_ns"], producer_start_ns=pres["start_ns"],
                     producer_end_ns=pres["end_ns"], producer_blocked_ns=pres["blocked_ns"],
                     producer_sys_ns=pres.get("sys_ns", 0), producer_minflt=pres.get("minflt", 0),
                     consumers=list(cres))


def run_one(method: str, size: int, n: int, npkts: int, cfg: Settings | None = None, rnd: int = 0) -> RunResult:
    """Measure one configuration; a failure is recorded in the result, not raised."""
    cfg = cfg or Settings()
    try:
        if method == "zmq":
            r = _zmq_run(size, n, npkts, cfg)
        elif method == "copyq":
            r = _copyq_run(size, n, npkts, cfg)
        else:
            r = _ring_run(method, size, n, npkts, cfg)
    except Exception as e:  # noqa: BLE001 - one broken configuration must not hide the others
        r = RunResult(method, size, n, npkts, error=f"{type(e).__name__}: {e}")
    r.round = rnd
    return r


# ---------------------------------------------------------------- the whole bench

def plan(sizes, consumers, methods, repeat: int) -> list[tuple[int, str, int, int]]:
    """(round, method, size, N) of every run. Rounds repeat the whole matrix, so a noisy minute
    on a shared box spreads over all configurations instead of skewing one of them."""
    out = []
    for rnd in range(repeat):
        for size in sizes:
            for m in methods:
                for n in ([0] if m == "produce-only" else consumers):
                    out.append((rnd, m, size, n))
    return out


def run_bench(sizes=(64, 1500), consumers=(1, 2, 4, 8), packets: int = 4_000_000, repeat: int = 4,
              methods=DEFAULT_METHODS, cfg: Settings | None = None, progress=None) -> list[RunResult]:
    """Run the matrix; `progress(i, total, result, seconds)` is called after each run."""
    cfg = cfg or Settings()
    todo = plan(sizes, consumers, methods, repeat)
    runs = []
    for i, (rnd, m, size, n) in enumerate(todo):
        t0 = time.monotonic()
        r = run_one(m, size, n, packets_for(m, size, n, packets), cfg, rnd)
        runs.append(r)
        if progress:
            progress(i + 1, len(todo), r, time.monotonic() - t0)
    return runs


@dataclass
class Row:
    """Median over repeats of one (method, size, N)."""
    method: str
    size: int
    n: int
    packets: int
    repeats: int
    errors: list[str]
    wall_mpps: float = float("nan")      # mean over consumers of delivered pps (wall clock)
    wall_min_mpps: float = float("nan")  # slowest consumer
    cpu_mpps: float = float("nan")       # mean over consumers of pps per consumer CPU-second
    producer_ns: float = float("nan")    # producer CPU ns per packet
    producer_sys_ns: float = float("nan")  # of which in the kernel (futex wakes, page faults, I/O)
    producer_mpps: float = float("nan")  # producer wall rate
    blocked: float = 0.0                 # share of producer wall time blocked by reliable consumers
    not_delivered: int = 0               # published - delivered, summed over consumers and repeats
    complete: bool = True                # delivered + dropped == published for every consumer
    batch: float = float("nan")          # mean packets per batch (Python ring consumers, zmq)
    vs_zmq: float = float("nan")         # wall Mpps per consumer over zmq's (same size, N)
    vs_zmq_cpu: float = float("nan")     # the same per consumer CPU-second
    vs_copyq: float = float("nan")


def _median(xs) -> float:
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else float("nan")


def _mean(xs) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def _row(method: str, size: int, n: int, group: list[RunResult]) -> Row:
    """Aggregate the repeats of one configuration."""
    ok = [r for r in group if not r.error]
    row = Row(method, size, n, group[0].packets, len(ok), [r.error for r in group if r.error])
    row.complete = bool(ok) and all(r.complete() for r in ok) and not row.errors
    if not ok:
        return row
    row.producer_ns = _median(r.producer_ns_per_pkt for r in ok)
    row.producer_sys_ns = _median(r.producer_sys_ns / r.published for r in ok if r.published)
    row.producer_mpps = _median(r.producer_wall_pps for r in ok) / 1e6
    row.blocked = _median(r.blocked_frac for r in ok)
    row.not_delivered = sum(r.lost() for r in ok)
    if n:
        row.wall_mpps = _median(_mean(r.wall_pps()) for r in ok) / 1e6
        row.wall_min_mpps = _median(min(r.wall_pps()) for r in ok if r.consumers) / 1e6
        row.cpu_mpps = _median(_mean(r.cpu_pps()) for r in ok) / 1e6
        nb = sum(c.batches for r in ok for c in r.consumers)
        if nb:
            row.batch = sum(c.delivered for r in ok for c in r.consumers) / nb
    return row


def _groups(runs: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """Runs keyed by (method, size, N)."""
    g: dict[tuple, list[RunResult]] = {}
    for r in runs:
        g.setdefault((r.method, r.size, r.nconsumers), []).append(r)
    return g


def _wall(r: RunResult) -> float:
    return _mean(r.wall_pps())


def _cpu(r: RunResult) -> float:
    return _mean(r.cpu_pps())


def _producer_ns(r: RunResult) -> float:
    return r.producer_ns_per_pkt


def _producer_sys_ns(r: RunResult) -> float:
    return r.producer_sys_ns / r.published if r.published else float("nan")


def paired_ratios(num: list[RunResult], den: list[RunResult], metric) -> list[float]:
    """metric(num) / metric(den) for each round that has both: runs of one round ran seconds
    apart, so slow drifts of a shared machine (minutes-long slow phases) cancel out."""
    a = {r.round: metric(r) for r in num if not r.error}
    b = {r.round: metric(r) for r in den if not r.error}
    return [a[k] / b[k] for k in sorted(a) if k in b and b[k] > 0 and a[k] == a[k]]


def summarize(runs: list[RunResult]) -> list[Row]:
    """One Row per (method, size, N), with ratios against the baselines at the same size and N
    (median over rounds of the per-round ratio)."""
    groups = _groups(runs)
    rows = [_row(m, s, n, g) for (m, s, n), g in groups.items()]
    for r in rows:
        if r.method in RING_METHODS:
            mine = groups[(r.method, r.size, r.n)]
            z, q = groups.get(("zmq", r.size, r.n), []), groups.get(("copyq", r.size, r.n), [])
            r.vs_zmq = _median(paired_ratios(mine, z, _wall))
            r.vs_zmq_cpu = _median(paired_ratios(mine, z, _cpu))
            r.vs_copyq = _median(paired_ratios(mine, q, _wall))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r.size, order.get(r.method, 99), r.n))


def _find(rows, method, size, n) -> Row | None:
    return next((r for r in rows if (r.method, r.size, r.n) == (method, size, n)), None)


def _scaling_targets(runs, sizes, n_lo, n_hi) -> list[Target]:
    """Producer ns/pkt at n_hi consumers over n_lo, per size and consumer kind (per-round pairs)."""
    out = []
    notes = {"ring-c-lossy": "primary: lossy consumers never hold the producer, so this is its own fan-out cost",
             "ring-c": "reliable C consumers (may also hold the producer when behind)",
             "ring-py": "reliable Python consumers (may also hold the producer when behind)",
             "ring-c-lossy-spin": "diagnostic: consumers spin before sleeping, so the producer rarely "
                                  "has to wake anyone"}
    groups = _groups(runs)
    for size in sizes:
        for m in ("ring-c-lossy", "ring-c", "ring-py", "ring-c-lossy-spin"):
            lo, hi = groups.get((m, size, n_lo)), groups.get((m, size, n_hi))
            ratios = paired_ratios(hi or [], lo or [], _producer_ns)
            if not ratios:
                continue
            ratio = _median(ratios)
            ns_lo, ns_hi = _median(map(_producer_ns, lo)), _median(map(_producer_ns, hi))
            k_lo, k_hi = _median(map(_producer_sys_ns, lo)), _median(map(_producer_sys_ns, hi))
            out.append(Target(f"producer cost {n_lo}->{n_hi} consumers <= {PRODUCER_SCALING_TARGET}x ({m}, {size} B)",
                              f"{ns_lo:.0f} -> {ns_hi:.0f} ns/pkt (in kernel {k_lo:.0f} -> {k_hi:.0f}): "
                              f"{ratio:.2f}x, rounds {min(ratios):.2f}-{max(ratios):.2f}",
                              ratio <= PRODUCER_SCALING_TARGET, notes[m]))
    return out


def _python_target(rows, sizes, consumers) -> list[Target]:
    """The Python batch consumer's rate on one core at the smallest frame size."""
    size, n = min(sizes), min(consumers)
    r = _find(rows, "ring-py", size, n)
    if not r:
        return []
    return [Target(f"Python batch consumer >= {LINE_RATE_64B / 1e6:.2f} Mpps on one core ({size} B, N={n})",
                   f"{r.cpu_mpps:.1f} Mpps per CPU-second (wall {r.wall_mpps:.1f} Mpps, "
                   f"mean batch {_f(r.batch, '{:.0f}')} packets)",
                   r.cpu_mpps * 1e6 >= LINE_RATE_64B,
                   "packets / consumer CPU time; it keeps up with the producer, so batches stay small "
                   "and this is a lower bound")]


def _zmq_targets(rows) -> list[Target]:
    """Ring delivered rate per consumer over the ZeroMQ baseline, worst case over sizes and N."""
    out = []
    for m, like in (("ring-py", "Python consumers on both sides"), ("ring-c", "C ring consumers")):
        rs = [r for r in rows if r.method == m and r.vs_zmq == r.vs_zmq]
        if not rs:
            continue
        worst, best = min(rs, key=lambda r: r.vs_zmq), max(rs, key=lambda r: r.vs_zmq)
        cpu = [r.vs_zmq_cpu for r in rs]
        met = ", ".join(f"{r.size} B N={r.n}" for r in rs if r.vs_zmq >= ZMQ_RATIO_TARGET) or "none"
        out.append(Target(f">= {ZMQ_RATIO_TARGET:.0f}x the ZeroMQ baseline ({m}, wall pps per consumer, every size and N)",
                          f"worst {worst.vs_zmq:.1f}x ({worst.size} B, N={worst.n}), "
                          f"best {best.vs_zmq:.1f}x ({best.size} B, N={best.n}); met at: {met}; "
                          f"per CPU-second {min(cpu):.1f}-{max(cpu):.1f}x",
                          worst.vs_zmq >= ZMQ_RATIO_TARGET, like))
    return out


def targets(rows: list[Row], runs: list[RunResult], sizes, consumers) -> list[Target]:
    """Every target of the issue with the measured value and PASS/MISS."""
    n_lo = 1 if 1 in consumers else min(consumers)
    n_hi = 8 if 8 in consumers else max(consumers)
    out = _scaling_targets(runs, sizes, n_lo, n_hi) if n_hi != n_lo else []
    return out + _python_target(rows, sizes, consumers) + _zmq_targets(rows)


def accounting_ok(runs: list[RunResult]) -> bool:
    """Every consumer of every run saw every published packet (lossy ones: delivered or dropped)."""
    return all(r.complete() for r in runs)


# ---------------------------------------------------------------- report

def machine_info() -> dict:
    """What the numbers were measured on."""
    import platform  # noqa: PLC0415

    import zmq  # noqa: PLC0415

    from capfan.ring import ring_dir  # noqa: PLC0415

    model = cpu_model()
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "numpy": np.__version__,
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "ring_dir": ring_dir(), "ring_fs": _fs_type(ring_dir())}


def _fs_type(path: str) -> str:
    """Filesystem type of the mount holding path (tmpfs, hugetlbfs, ...)."""
    best, fs = "", "?"
    try:
        with open("/proc/mounts") as f:
            for ln in f:
                parts = ln.split()
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fs = mnt, parts[2]
    except OSError:
        pass
    return fs


def size_table(rows: list[Row], size: int):
    """rich Table of every method and N at one frame size."""
    from rich.table import Table  # noqa: PLC0415

    t = Table(title=f"{size}-byte packets", title_justify="left")
    for col, just in (("method", "left"), ("N", "right"), ("packets", "right"),
                      ("Mpps per consumer\nwall (slowest)", "right"), ("Mpps per consumer\nper CPU-second", "right"),
                      ("producer ns/pkt\n(in kernel)", "right"), ("producer\nblocked", "right"),
                      ("not\ndelivered", "right"), ("x ZMQ", "right"), ("x copyq", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in (r for r in rows if r.size == size):
        if r.errors and not r.repeats:
            t.add_row(r.method, str(r.n), f"{r.packets:,}", f"[red]error: {r.errors[0][:60]}[/red]")
            continue
        wall = "" if not r.n else f"{_f(r.wall_mpps, '{:.2f}')} ({_f(r.wall_min_mpps, '{:.2f}')})"
        nd = f"{r.not_delivered:,}" + (" dropped" if "lossy" in r.method and r.not_delivered else "")
        if not r.complete:
            nd = f"[red]{nd} INCOMPLETE[/red]"
        t.add_row(r.method, str(r.n), f"{r.packets:,}", wall, "" if not r.n else _f(r.cpu_mpps),
                  f"{_f(r.producer_ns, '{:.0f}')} ({_f(r.producer_sys_ns, '{:.0f}')})",
                  f"{r.blocked:.0%}" if r.method.startswith("ring") else "",
                  nd, _f(r.vs_zmq, "{:.1f}x", ""), _f(r.vs_copyq, "{:.2f}x", ""))
    return t


def render(console, rows: list[Row], ts: list[Target], runs: list[RunResult], header: str) -> None:
    """Print the whole report: header, one table per size, legend, targets, accounting."""
    console.print(header)
    for size in sorted({r.size for r in rows}):
        console.print(size_table(rows, size))
    console.print("methods:")
    for m in dict.fromkeys(r.method for r in rows):
        console.print(f"  {m:<18} {METHODS.get(m, '')}")
    console.print(LEGEND)
    console.print(targets_table(ts))
    ok = accounting_ok(runs)
    console.print(("[green]accounting: every consumer of every run got every published packet "
                   "(lossy: delivered + dropped)[/green]") if ok else
                  "[red]accounting: some consumer did not account for every published packet[/red]")


LEGEND = (
    "columns (medians over repeats): wall = packets delivered per consumer / (consumer end - producer "
    "start), mean over the N consumers, slowest in brackets; per CPU-second = delivered / that "
    "consumer's CPU time, i.e. the rate one core running it sustains; producer ns/pkt = producer CPU "
    "time / packets (zmq: the publisher process including its I/O thread), in brackets the part spent "
    "in the kernel (futex wake-ups, page faults, socket I/O; from getrusage, tick-sampled, indicative); blocked = producer wall "
    "time spent waiting for reliable consumers; not delivered = published - delivered, summed over "
    "consumers and rounds (lossy consumers: packets they counted as dropped); x ZMQ / x copyq = median "
    "over rounds of wall Mpps per consumer over that baseline's at the same N and size."
)


def report_dict(runs, rows, ts, info, settings: dict) -> dict:
    """Everything measured, for --json (NaN, e.g. rates of produce-only, become null)."""
    return no_nan({"settings": settings, "machine": info, "rows": [asdict(r) for r in rows],
                    "targets": [asdict(t) for t in ts], "accounting_ok": accounting_ok(runs),
                    "runs": [r.to_dict() for r in runs]})


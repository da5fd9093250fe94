"""Python API over the C shared-memory ring: create/inspect rings, Producer, Consumer, Batch.

Batches are zero-copy: `Batch.desc` is a numpy view of the shared descriptor ring and
`Batch.data` a read-only memoryview of the shared packet arena.
"""
from __future__ import annotations

import grp
import logging
import os
import re
from dataclasses import dataclass

import numpy as np

from capfan import errors
from capfan._capfan_core import ffi, lib

log = logging.getLogger("capfan.ring")

RING_PREFIX = "capfan."
DEFAULT_DIR = "/dev/shm"
NAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")

#: numpy dtype of one 32-byte descriptor (matches capfan_desc in ring.h)
DESC_DTYPE = np.dtype([
    ("seq", "<u8"), ("ts_ns", "<u8"), ("off", "<u4"), ("caplen", "<u2"), ("wirelen", "<u2"),
    ("hash", "<u4"), ("port", "<u2"), ("flags", "<u2"),
])
assert DESC_DTYPE.itemsize == 32

LOSSY, RELIABLE = 0, 1
POLICIES = {"lossy": LOSSY, "reliable": RELIABLE}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}
FULL_POLICIES = {"block": 0, "drop": 1}
STATE_NAMES = {0: "free", 1: "active", 2: "dead", 3: "detached"}
EVENT_NAMES = {1: "attach", 2: "resume", 3: "detach", 4: "dead", 5: "demoted",
               6: "producer-start", 7: "producer-restart", 8: "lapped"}
LINKTYPES = {"null": 0, "ethernet": 1, "raw": 101, "loop": 108, "linux_sll": 113,
             "ipv4": 228, "ipv6": 229, "linux_sll2": 276}

# flag bits of capfan_desc.flags
F_HWTS, F_HWTS_SYNC, F_TRUNCATED, F_BAD_FCS = 1, 2, 4, 8
F_L3, F_L4, F_IPV6, F_FRAGMENT, F_MALFORMED, F_WIRELEN_SAT = 16, 32, 64, 128, 256, 512

_ERRORS = {2: errors.RingExists, 3: errors.RingNotFound, 4: errors.RingFormatError,
           5: errors.RingBusy, 8: errors.RingTimeout, 9: errors.NoConsumerSlot}


def _raise(rc: int = 0):
    """Raise the exception matching a negative C return code with the C error message."""
    msg = ffi.string(lib.capfan_last_error()).decode(errors="replace") or "ring operation failed"
    code = -rc if rc < 0 else lib.capfan_last_error_code()
    raise _ERRORS.get(code, errors.RingError)(msg)


def ring_dir() -> str:
    """Directory rings live in: $CAPFAN_RING_DIR, else /dev/shm."""
    return os.environ.get("CAPFAN_RING_DIR", DEFAULT_DIR)


def ring_path(name: str) -> str:
    """File path of a ring given its name (a name containing '/' is taken as a path)."""
    if "/" in name:
        return name
    if not NAME_RE.match(name):
        raise errors.RingError(f"bad ring name {name!r}: use letters, digits and . _ - : @")
    return os.path.join(ring_dir(), RING_PREFIX + name)


def ring_name(path: str) -> str:
    """Ring name of a ring file path (inverse of ring_path for the default directory)."""
    base = os.path.basename(path)
    return base[len(RING_PREFIX):] if base.startswith(RING_PREFIX) else path


def parse_size(text) -> int:
    """'64M', '1G', '4096' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]i?[bB]?)?\s*", str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 64M, 1G)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[(m.group(2) or "")[:1].lower()]
    return int(m.group(1)) * mult


def create(name: str, ndesc: int = 1 << 16, arena_bytes: int = 64 << 20, max_consumers: int = 256,
           linktype: int | str = 1, snaplen: int = 0, full_policy: str = "block",
           mode: int = 0o600, group: str | int | None = None, exist_ok: bool = False) -> str:
    """Create a ring file (mode 0600 by default so other users cannot read the traffic)."""
    path = ring_path(name)
    if isinstance(linktype, str):
        if linktype not in LINKTYPES:
            raise errors.RingError(f"unknown link type {linktype!r}; one of {', '.join(LINKTYPES)}")
        linktype = LINKTYPES[linktype]
    if full_policy not in FULL_POLICIES:
        raise errors.RingError(f"full policy must be 'block' or 'drop', not {full_policy!r}")
    gid = -1
    if group is not None:
        try:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        except KeyError:
            raise errors.RingError(f"no such group {group!r} for the ring's shared memory") from None
    g = ffi.new("capfan_geometry *", {
        "ndesc": ndesc, "arena_bytes": arena_bytes, "max_consumers": max_consumers,
        "linktype": linktype, "snaplen": snaplen, "full_policy": FULL_POLICIES[full_policy]})
    rc = lib.capfan_ring_create(path.encode(), g, mode, gid)
    if rc == -2 and exist_ok:
        return path
    if rc != 0:
        _raise(rc)
    return path


def ensure(name: str, create_missing: bool = True, **geometry) -> bool:
    """Create the ring with `geometry` if it is missing (and create_missing); True if created."""
    if os.path.exists(ring_path(name)):
        return False
    if not create_missing:
        raise errors.RingNotFound(f"no ring {name!r} in {ring_dir()} "
                                  f"(create it with: capfan ring create {name}, or drop --no-create)")
    create(name, exist_ok=True, **geometry)
    return True


def remove(name: str) -> None:
    """Delete a ring file; processes that have it mapped keep their mapping until they exit."""
    path = ring_path(name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise errors.RingNotFound(f"no ring {name!r} at {path}") from None


def list_rings(directory: str | None = None) -> list[str]:
    """Paths of the ring files in the ring directory."""
    d = directory or ring_dir()
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    return [os.path.join(d, n) for n in names if n.startswith(RING_PREFIX)]


def _keeper(owner):
    """An ffi.gc destructor that does nothing but keep `owner` referenced while it exists."""
    return lambda _ptr: owner


def _cstr(chars) -> str:
    return ffi.string(chars).decode(errors="replace")


def _slot_dict(s) -> dict:
    return {
        "slot": s.index, "name": _cstr(s.name), "state": STATE_NAMES.get(s.state, str(s.state)),
        "policy": POLICY_NAMES.get(s.policy, str(s.policy)), "pid": s.pid, "alive": bool(s.alive),
        "sleeping": bool(s.sleeping), "spin_us": s.spin_us, "group": _cstr(s.group) or None,
        "group_member": s.group_member, "group_size": s.group_size, "cursor": s.cursor,
        "attach_seq": s.attach_seq, "delivered": s.delivered, "dropped": s.dropped,
        "filtered": s.filtered, "torn": s.torn, "demotions": s.demotions, "resumes": s.resumes,
        "stall_budget_us": s.stall_budget_ns // 1000,
    }


@dataclass
class Event:
    """One entry of the ring's event log."""
    ts_ns: int
    kind: str
    slot: int
    arg: int
    name: str


class Ring:
    """Read-only view of a ring for inspection (stats, consumer table, events, recent packets)."""

    def __init__(self, name: str, _ptr=None, _owner=None):
        self.name = name
        self.path = ring_path(name)
        if _ptr is None:
            _ptr = lib.capfan_ring_open(self.path.encode())
            if _ptr == ffi.NULL:
                _raise()
            _owner = _ptr = ffi.gc(_ptr, lib.capfan_ring_close)
        self._r = _ptr
        st = self.stats()
        self.ndesc = st["ndesc"]
        self.arena_bytes = st["arena_bytes"]
        self.linktype = st["linktype"]
        # Views hold `_owner` (the mapping's handle) alive: the memory is unmapped only when the
        # last numpy array / memoryview over it is gone, so a stale view can never segfault.
        desc = ffi.gc(lib.capfan_ring_desc(_ptr), _keeper(_owner))
        arena = ffi.gc(lib.capfan_ring_arena(_ptr), _keeper(_owner))
        self._desc = np.frombuffer(ffi.buffer(desc, self.ndesc * 32), DESC_DTYPE)
        self._arena = ffi.buffer(arena, self.arena_bytes)

    def stats(self) -> dict:
        """Producer-side counters and geometry."""
        s = ffi.new("capfan_ring_stats *")
        lib.capfan_ring_stats_get(self._r, s)
        return {k: getattr(s, k) for k in (
            "head", "tail", "generation", "dropped_full", "bytes", "blocked_ns", "producer_pid",
            "heartbeat_ns", "arena_used", "demotions", "created_ns", "ndesc", "max_consumers",
            "linktype", "snaplen", "full_policy", "producer_alive", "nconsumers", "hugepages",
            "arena_bytes", "file_bytes")}

    def port_linktype(self, port: int) -> int:
        """pcap link type of packets captured on `port`."""
        return lib.capfan_ring_port_linktype(self._r, port)

    def consumers(self) -> list[dict]:
        """Every used slot of the consumer table."""
        out = []
        s = ffi.new("capfan_slot_stats *")
        for i in range(self.stats()["max_consumers"]):
            if lib.capfan_ring_slot_get(self._r, i, s) == 0:
                out.append(_slot_dict(s))
        return out

    def event_count(self) -> int:
        """Events logged since the ring was created."""
        return lib.capfan_ring_event_count(self._r)

    def events(self, n: int = 64) -> list[Event]:
        """The last n events, oldest first."""
        buf = ffi.new("capfan_event[]", n)
        k = lib.capfan_ring_events(self._r, buf, n)
        return [Event(e.ts_ns, EVENT_NAMES.get(e.kind, str(e.kind)), e.slot, e.arg,
                      ffi.string(e.name, 8).decode(errors="replace")) for e in buf[0:k]]

    def recent(self, n: int) -> list[tuple[int, int, int, bytes]]:
        """Up to n most recent intact packets as (seq, ts_ns, wirelen, bytes), oldest first.
        Reads without attaching; a packet overwritten while copied is left out (seqlock)."""
        return [(seq, ts, wl, data) for seq, ts, wl, _port, data in self.recent_packets(n)]

    def recent_packets(self, n: int) -> list[tuple[int, int, int, int, bytes]]:
        """Like recent(), as (seq, ts_ns, wirelen, port, bytes): the port gives the packet's link
        type (port_linktype) and wirelen includes lengths above 65535."""
        st = self.stats()
        head, tail = st["head"], st["tail"]
        out = []
        for seq in range(max(tail, head - n), head):
            d = self._desc[seq & (self.ndesc - 1)]
            off, cl, wl = int(d["off"]), int(d["caplen"]), int(d["wirelen"])
            if int(d["flags"]) & F_WIRELEN_SAT:  # the real length follows the packet bytes
                wl = int.from_bytes(self._arena[off + cl:off + cl + 4], "little")
            out.append((seq, int(d["ts_ns"]), wl, int(d["port"]), bytes(self._arena[off:off + cl])))
        intact_from = self.stats()["tail"]
        return [p for p in out if p[0] >= intact_from]

    def close(self) -> None:
        """Let go of the ring; it is unmapped once no view of it remains."""
        self._r = None
        self._desc = None
        self._arena = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EventWatcher:
    """Logs new ring events (demotions, dead consumers, producer restarts) as they appear."""

    LEVELS = {"demoted": logging.WARNING, "dead": logging.WARNING, "producer-restart": logging.WARNING,
              "lapped": logging.INFO}

    def __init__(self, ring: Ring):
        self.ring = ring
        self.seen = ring.event_count()

    def poll(self) -> list[Event]:
        """Return (and log) the events logged since the last poll."""
        n = self.ring.event_count()
        new = n - self.seen
        if new <= 0:
            return []
        evs = self.ring.events(min(new, 64))
        self.seen = n
        for e in evs:
            log.log(self.LEVELS.get(e.kind, logging.DEBUG), "ring %s: consumer %r (slot %d) %s (arg %d)",
                    self.ring.name, e.name, e.slot, e.kind, e.arg)
        return evs


class Producer:
    """The single writer of a ring. Opening a ring whose previous producer died continues it:
    sequence numbers go on and consumers see a new generation."""

    def __init__(self, name: str):
        self.name = name
        self.path = ring_path(name)
        p = lib.capfan_producer_open(self.path.encode())
        if p == ffi.NULL:
            _raise()
        self._p = ffi.gc(p, lib.capfan_producer_free)
        self.ring = Ring(name, _ptr=lib.capfan_producer_ring(self._p), _owner=self._p)
        self.events = EventWatcher(self.ring)
        self.events.seen = 0  # report what happened before we started too

    @property
    def generation(self) -> int:
        """Generation of this producer (1 for the first producer of the ring)."""
        return self.ring.stats()["generation"]

    def publish(self, packets, ts_ns=None, wirelens=None, port: int = 0) -> int:
        """Copy a list of packets (bytes-like) into the ring; returns how many were published."""
        n = len(packets)
        if n == 0:
            return 0
        lens = np.fromiter((len(p) for p in packets), dtype=np.uint32, count=n)
        offs = np.zeros(n, dtype=np.uint64)
        np.cumsum(lens[:-1], out=offs[1:])
        buf = b"".join(packets)
        return self.publish_arrays(buf, offs, lens, wirelens, ts_ns, port)

    def publish_arrays(self, buf, offs, caplens, wirelens=None, ts_ns=None, port: int = 0) -> int:
        """Batch publish from contiguous arrays (the fast path for Python producers)."""
        n = len(caplens)
        offs = np.ascontiguousarray(offs, dtype=np.uint64)
        caplens = np.ascontiguousarray(caplens, dtype=np.uint32)
        wl = ffi.NULL if wirelens is None else ffi.from_buffer("uint32_t[]", np.ascontiguousarray(wirelens, dtype=np.uint32))
        ts = ffi.NULL if ts_ns is None else ffi.from_buffer("uint64_t[]", np.ascontiguousarray(ts_ns, dtype=np.uint64))
        done = lib.capfan_producer_publish(self._p, ffi.from_buffer("uint8_t[]", buf),
                                           ffi.from_buffer("uint64_t[]", offs),
                                           ffi.from_buffer("uint32_t[]", caplens), wl, ts, n, port)
        self.events.poll()
        return done

    def set_linktype(self, port: int, linktype: int) -> None:
        """Declare the link type of packets published on `port` (pcapng interfaces, queues)."""
        if lib.capfan_producer_set_linktype(self._p, port, linktype) != 0:
            _raise()

    @property
    def dropped(self) -> int:
        """Packets dropped because the ring was full (drop policy or reserve timeout)."""
        return lib.capfan_producer_dropped(self._p)

    def close(self) -> None:
        """Flush and leave the ring (consumers may keep reading what is in it)."""
        if self._p is not None:
            self.events.poll()
            lib.capfan_producer_close(self._p)
            self._p = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Batch:
    """Descriptors handed to a consumer, viewed in place. Release it (or take the next batch)
    to let the space be reused. For lossy consumers call `torn()`/`release()` after reading:
    packets overwritten meanwhile are reported and counted as dropped."""

    __slots__ = ("_c", "first_seq", "count", "nsel", "_desc_all", "_sel", "_released", "_torn")

    def __init__(self, consumer: "Consumer", desc_all, sel):
        self._c = consumer
        b = consumer._b
        self.first_seq = b.first_seq
        self.count = b.count
        self.nsel = b.nsel
        self._desc_all = desc_all
        self._sel = sel
        self._released = False
        self._torn = 0

    @property
    def desc(self) -> np.ndarray:
        """Structured array (DESC_DTYPE) of this consumer's descriptors: a view of shared memory
        when the consumer takes everything; a small copy of the selected descriptors (never of
        packet bytes) for a group member."""
        return self._desc_all if self._sel is None else self._desc_all[self._sel]

    @property
    def data(self) -> memoryview:
        """Read-only memoryview of the whole packet arena; packet i is data[off:off+caplen]."""
        return self._c._arena_mv

    @property
    def arena(self) -> np.ndarray:
        """The packet arena as a read-only uint8 numpy array (no copy)."""
        return self._c._arena_np

    def __len__(self) -> int:
        return self.nsel

    @property
    def c_handles(self):
        """(capfan_consumer *, capfan_batch *) cffi pointers, for C code that meters or writes
        the batch in place (flow meter, recorder)."""
        if self._c._c is None or self._released:
            raise errors.RingError("the batch was released or its consumer closed")
        return self._c._c, self._c._b

    def wirelens(self) -> np.ndarray:
        """Wire lengths of the selected packets as uint32, including lengths above 65535
        (stored after the packet bytes when CAPFAN_F_WIRELEN_SAT is set)."""
        d = self.desc
        wl = d["wirelen"].astype(np.uint32)
        big = np.flatnonzero(d["flags"] & F_WIRELEN_SAT)
        if big.size:
            a = self._c._arena_np
            for i in big.tolist():
                t = int(d["off"][i]) + int(d["caplen"][i])
                wl[i] = int.from_bytes(a[t:t + 4].tobytes(), "little")
        return wl

    def packet(self, i: int) -> memoryview:
        """Bytes of selected packet i, in place."""
        d = self.desc[i]
        off = int(d["off"])
        return self._c._arena_mv[off:off + int(d["caplen"])]

    def __iter__(self):
        """Yield (ts_ns, packet) per selected packet. Reliable consumers get zero-copy
        memoryviews; lossy ones get bytes copies checked after the copy (seqlock), so a packet
        overwritten while being read is never yielded (it is counted as dropped)."""
        desc = self.desc
        mv = self._c._arena_mv
        offs = desc["off"].tolist()
        lens = desc["caplen"].tolist()
        tss = desc["ts_ns"].tolist()
        if self._c.policy_requested == RELIABLE and not self._c.demoted:
            for off, cl, ts in zip(offs, lens, tss):
                yield ts, mv[off:off + cl]
            return
        idx = range(self.nsel) if self._sel is None else self._sel.tolist()
        for k, (off, cl, ts) in enumerate(zip(offs, lens, tss)):
            data = bytes(mv[off:off + cl])
            if self.torn() > idx[k]:
                continue  # overwritten while copying: never hand out a torn packet
            yield ts, data

    def torn(self) -> int:
        """How many of the batch's leading descriptors were overwritten since handed out."""
        if self._c._c is None:
            raise errors.RingError("the consumer of this batch is closed")
        return lib.capfan_consumer_torn(self._c._c, self._c._b)

    def release(self) -> int:
        """Give the batch back; returns how many packets were torn (counted as dropped)."""
        if not self._released:
            self._released = True
            if self._c._c is not None:
                self._torn = lib.capfan_consumer_release(self._c._c, self._c._b)
            self._c._current = None
        return self._torn


class Consumer:
    """One reader of a ring. `policy` 'reliable' holds the producer (up to `stall_budget_us`,
    then it is demoted to lossy); 'lossy' never does and counts what it misses. With `group`,
    `member` and `group_size`, it receives only its share of flows (split by the flow hash)."""

    def __init__(self, ring: str, name: str, policy: str = "reliable", stall_budget_us: int = 1_000_000,
                 spin_us: int = 0, group: str | None = None, member: int = 0, group_size: int = 0,
                 start: str = "head", batch: int = 8192):
        if policy not in POLICIES:
            raise errors.RingError(f"policy must be 'reliable' or 'lossy', not {policy!r}")
        if start not in ("head", "oldest"):
            raise errors.RingError(f"start must be 'head' or 'oldest', not {start!r}")
        self.ring_name = ring
        self.name = name
        self.policy_requested = POLICIES[policy]
        self.batch_max = batch
        self._keep = ffi.new("char[]", name.encode())
        self._gkeep = ffi.new("char[]", (group or "").encode())
        o = ffi.new("capfan_consumer_opts *", {
            "name": self._keep, "policy": POLICIES[policy], "stall_budget_us": stall_budget_us,
            "spin_us": spin_us, "group": self._gkeep, "group_member": member,
            "group_size": group_size if group else 0, "start": 0 if start == "head" else 1})
        c = lib.capfan_consumer_attach(ring_path(ring).encode(), o)
        if c == ffi.NULL:
            _raise()
        self._c = ffi.gc(c, lib.capfan_consumer_free)
        self.ring = Ring(ring, _ptr=lib.capfan_consumer_ring(self._c), _owner=self._c)
        self._b = ffi.new("capfan_batch *")
        self._stats = ffi.new("capfan_slot_stats *")
        self._desc_ring = self.ring._desc
        self._mask = self.ring.ndesc - 1
        self._arena_mv = memoryview(self.ring._arena).toreadonly()
        self._arena_np = np.frombuffer(self.ring._arena, dtype=np.uint8)
        self._current: Batch | None = None
        self.generation = lib.capfan_consumer_generation(self._c)
        self.producer_restarts = 0

    def next(self, timeout: float | None = None, max_packets: int | None = None) -> Batch | None:
        """Next batch, waiting up to `timeout` seconds (None = for ever, 0 = poll); None on timeout.
        Taking a batch releases the previous one."""
        if self._current is not None:
            self._current.release()
        if self._c is None:
            raise errors.RingError(f"consumer {self.name!r} is closed")
        t = -1 if timeout is None else int(timeout * 1e9)
        n = lib.capfan_consumer_next(self._c, max_packets or self.batch_max, t, self._b)
        gen = lib.capfan_consumer_generation(self._c)
        if gen != self.generation:
            self.producer_restarts += 1
            log.info("ring %s: producer restarted (generation %d -> %d)", self.ring_name, self.generation, gen)
            self.generation = gen
        if n < 0:
            _raise(n)
        if n == 0:
            return None
        b = self._b
        start = b.first_seq & self._mask
        desc_all = self._desc_ring[start:start + b.count]
        sel = None
        if b.sel != ffi.NULL:
            sel = np.frombuffer(ffi.buffer(b.sel, b.nsel * 4), dtype=np.uint32)
        self._current = Batch(self, desc_all, sel)
        return self._current

    def __iter__(self):
        """Batches for ever (until the consumer is closed)."""
        while self._c is not None:
            b = self.next(timeout=0.5)
            if b is not None:
                yield b

    def stats(self) -> dict:
        """This consumer's slot: policy, cursor, delivered, dropped, filtered, demotions..."""
        if self._c is None:
            raise errors.RingError(f"consumer {self.name!r} is closed")
        lib.capfan_consumer_stats(self._c, self._stats)
        return _slot_dict(self._stats)

    @property
    def demoted(self) -> bool:
        """True once the producer demoted this reliable consumer to lossy."""
        lib.capfan_consumer_stats(self._c, self._stats)
        return self._stats.policy == LOSSY and self.policy_requested == RELIABLE

    def producer_state(self) -> tuple[int, bool]:
        """(generation, alive) of the ring's producer now."""
        alive = ffi.new("int *")
        gen = lib.capfan_consumer_producer_generation(self._c, alive)
        return gen, bool(alive[0])

    def close(self, keep: bool = False) -> None:
        """Detach. With keep=True the name and cursor are kept so a later attach resumes."""
        if self._c is not None:
            if self._current is not None:
                self._current.release()
            lib.capfan_consumer_detach(self._c, 1 if keep else 0)
            self._c = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


"""On-disk spool between analyzer workers and the exporter: bounded, crash safe, one file per batch.

Layout of a spool directory (one per agent host):

    incoming/<time_ns:020d>-<pid:07d>-<n:08d>.batch   written by SpoolWriter (one analyzer process each)
    outgoing/<seq:020d>.batch                         claimed by the exporter, carries its seq; deleted when acked
    outgoing/<seq:020d>.claim                         transient: an incoming file being turned into <seq>.batch
    rejected/<seq:020d>.batch + .reason               permanently rejected by a collector (or unencodable)
    next_seq                                          next per-host batch sequence number (fsync'ed)
    counters.json, lock                               drop/reject counters, flock serialising their updates

Every file is written as `.name.tmp`, fsync'ed and renamed, so a reader never sees a partial batch.
File format (both directories): b"CFSPOOL1\\n", one JSON header line, then the payload:
  - incoming: {"kind": "records", "host", "stream", "source", "created_ns", "records": n} + the
    records as .npy bytes (no pickle). Records are encoded once, by the exporter with the real seq:
    the analyzer (which may hold the capture) never pays for compression, and no placeholder seq
    outside the wire's 1..2**63-1 range ever exists.
  - outgoing/rejected: {"kind": "wire", "seq", "stream", "records": n, "frames": [len, ...]} + the
    wire frames of capfan.wire.encode concatenated; a (re)send is a file read. A batch split per
    collector (`[export] route = "flow-hash"`, agents/routing.py) also has "parts": [[endpoint,
    records, number of frames], ...]: each part is its own wire batch under the same seq, its
    frames in part order; only the listed collectors are due the batch.

Sequence numbers: `next_seq` is fsync'ed to cover a whole claim round BEFORE any incoming file is
renamed, so a crash can leave gaps but never reuses a seq. A fresh spool starts at the wall clock
in microseconds, so a wiped spool (tmpfs, reinstall) still issues seqs above those a collector
already stored for this host (it would drop reused ones as duplicates).
"""
from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import logging
import os
import re
import time
from contextlib import contextmanager

import numpy as np

from capfan import wire
from capfan.errors import CapfanError

log = logging.getLogger("capfan.agents.spool")

MAGIC = b"CFSPOOL1\n"
POLICIES = ("drop_oldest", "drop_new")
_NAME_OK = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SEQ_NAME = re.compile(r"^(\d{20})\.(batch|claim)$")
STALE_TMP_S = 60.0  # a writer's .tmp older than this belongs to a dead process
COUNTERS = ("dropped_batches", "dropped_records", "refused_batches", "refused_records",
            "rejected_batches", "rejected_records", "write_errors")


class SpoolError(CapfanError):
    """The spool directory is unusable (cannot be created, or a spool file is not a spool file)."""


# ---------------------------------------------------------------- file format

def _pack_header(meta: dict) -> bytes:
    return MAGIC + json.dumps(meta, separators=(",", ":")).encode() + b"\n"


def read_file(path: str) -> tuple[dict, bytes]:
    """(header, payload) of one spool file; SpoolError if it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise SpoolError(f"{path}: not a capfan spool file (bad magic)")
    nl = data.find(b"\n", len(MAGIC))
    if nl < 0:
        raise SpoolError(f"{path}: truncated spool file header")
    try:
        meta = json.loads(data[len(MAGIC):nl])
    except ValueError:
        raise SpoolError(f"{path}: spool file header is not JSON") from None
    if not isinstance(meta, dict):
        raise SpoolError(f"{path}: spool file header is not an object")
    return meta, data[nl + 1:]


def read_header(path: str) -> dict:
    """Only the JSON header of a spool file ({} if unreadable): record counts for the counters."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return {}
            line = f.readline(1 << 20)  # a split batch's header grows with the number of collectors
        return json.loads(line) if line.endswith(b"\n") else {}
    except (OSError, ValueError):
        return {}


def _write_atomic(path: str, chunks, fsync_dir: bool = False) -> int:
    """Write chunks to `path` via .tmp + fsync + rename; returns bytes written."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.tmp")
    n = 0
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
                n += len(c)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync_dir:
        _fsync_dir(d)
    return n


def _fsync_dir(d: str) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_array(records) -> np.ndarray:
    """A 1-D structured array from a structured array or a list of dicts (ints -> i8, floats -> f8,
    bools -> u1, str/bytes -> fixed S of the longest value, UTF-8)."""
    if isinstance(records, np.ndarray):
        if records.dtype.names is None:
            raise CapfanError("emitted records must be a structured numpy array (named fields) or dicts")
        return np.ascontiguousarray(records.reshape(-1))
    rows = [dict(r) for r in records]
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    fields = []
    for k in names:
        vals = [r[k] for r in rows if k in r and r[k] is not None]
        if any(isinstance(v, (str, bytes)) for v in vals):
            enc = [v.encode() if isinstance(v, str) else bytes(v) if isinstance(v, bytes) else str(v).encode()
                   for v in vals]
            fields.append((k, f"S{max([len(e) for e in enc] + [1])}"))
        elif any(isinstance(v, float) for v in vals):
            fields.append((k, "<f8"))
        elif vals and all(isinstance(v, bool) for v in vals):
            fields.append((k, "u1"))
        else:
            fields.append((k, "<i8"))
    arr = np.zeros(len(rows), dtype=fields)
    for i, r in enumerate(rows):
        for k, v in r.items():
            if v is None:
                continue
            arr[k][i] = v.encode() if isinstance(v, str) else v
    return arr


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _parts_of(meta: dict, path: str) -> list[tuple[str, int, int]] | None:
    """The [(endpoint, records, frames)] of a split outgoing batch; None for a whole batch."""
    parts = meta.get("parts")
    if parts is None:
        return None
    try:
        out = [(str(ep), int(n), int(k)) for ep, n, k in parts]
    except (TypeError, ValueError):
        raise SpoolError(f"{path}: malformed parts list in the header") from None
    if sum(k for _, _, k in out) != len(meta["frames"]) or len({ep for ep, _, _ in out}) != len(out) \
            or any(k < 1 or n < 0 for _, n, k in out):
        raise SpoolError(f"{path}: the parts do not match the frames")
    return out


# ---------------------------------------------------------------- shared helpers

def _dirs(spool_dir: str) -> tuple[str, str, str]:
    return (os.path.join(spool_dir, "incoming"), os.path.join(spool_dir, "outgoing"),
            os.path.join(spool_dir, "rejected"))


def _make_dirs(spool_dir: str) -> None:
    try:
        for d in _dirs(spool_dir):
            os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise SpoolError(f"cannot create spool directory {spool_dir!r}: {e.strerror}; "
                         "set a writable spool path") from None


@contextmanager
def _locked(spool_dir: str):
    fd = os.open(os.path.join(spool_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read_counters(spool_dir: str) -> dict:
    try:
        with open(os.path.join(spool_dir, "counters.json"), encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError):
        c = {}
    return {k: int(c.get(k, 0)) for k in COUNTERS}


def _add_counters(spool_dir: str, **delta: int) -> None:
    """Add to the persistent counters (caller may already hold the lock: flock is per open file,
    so take it only through _locked and never nest)."""
    c = _read_counters(spool_dir)
    for k, v in delta.items():
        c[k] += v
    path = os.path.join(spool_dir, "counters.json")
    tmp = path + f".{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(c, f)
        os.rename(tmp, path)
    except OSError as e:  # a full disk must not turn a counted drop into a crash
        log.warning("cannot update spool counters %s: %s", path, e)


def _scan(spool_dir: str) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(bytes used by incoming + outgoing, [(outgoing .batch path, size)] by seq,
    [(incoming .batch path, size)] by name)."""
    inc, out, _ = _dirs(spool_dir)
    used = 0
    lists: list[list[tuple[str, int]]] = [[], []]
    for i, d in enumerate((out, inc)):
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                try:
                    size = e.stat().st_size
                except FileNotFoundError:
                    continue
                used += size
                if e.name.endswith(".batch") and not e.name.startswith("."):
                    lists[i].append((e.path, size))
    for lst in lists:
        lst.sort()
    return used, lists[0], lists[1]


def spool_stats(spool_dir: str) -> dict:
    """Counters and current contents of a spool: batches per directory, bytes, next seq."""
    st = _read_counters(spool_dir)
    used, out, inc = _scan(spool_dir)
    try:
        rejected = sum(1 for n in os.listdir(_dirs(spool_dir)[2]) if n.endswith(".batch"))
    except FileNotFoundError:
        rejected = 0
    # a batch the exporter is claiming sits in outgoing/<seq>.claim until it is encoded: neither
    # incoming nor outgoing .batch, but not delivered either (the agent's shutdown waits for it)
    try:
        claiming = sum(1 for n in os.listdir(_dirs(spool_dir)[1]) if n.endswith(".claim"))
    except FileNotFoundError:
        claiming = 0
    st.update(spool_bytes=used, incoming_batches=len(inc), outgoing_batches=len(out), claiming_batches=claiming,
              rejected_files=rejected, next_seq=_read_next_seq(spool_dir))
    return st


def _read_next_seq(spool_dir: str) -> int | None:
    try:
        with open(os.path.join(spool_dir, "next_seq"), encoding="ascii") as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        raise SpoolError(f"{spool_dir}/next_seq is corrupt; it must hold one integer (set it above the "
                         "highest seq this host ever sent)") from None


# ---------------------------------------------------------------- analyzer side

class SpoolWriter:
    """The `emit` sink of one analyzer process: each emitted batch becomes one file in incoming/.

    Bounded: incoming + outgoing stay within max_bytes (each writer re-scans the directory at
    least every `scan_interval` s and always before it drops, so concurrent writers can overshoot
    by at most what they write in one interval). When full, "drop_oldest" deletes the oldest
    unsent/unacked batches, "drop_new" refuses the new one; both are counted and never block."""

    def __init__(self, spool_dir: str, host: str, source: str, max_bytes: int, policy: str = "drop_oldest",
                 scan_interval: float = 0.25):
        if policy not in POLICIES:
            raise CapfanError(f"spool policy {policy!r} is not one of {', '.join(POLICIES)}")
        if not _NAME_OK.match(host or ""):
            raise CapfanError(f"host id {host!r} must be 1-64 characters of letters, digits, '_', '.', '@', '-'")
        if len(source) > 128:
            raise CapfanError(f"source {source!r} is longer than 128 characters")
        if max_bytes <= 0:
            raise CapfanError(f"spool max_bytes must be positive, not {max_bytes}")
        self.spool_dir, self.host, self.source = spool_dir, host, source
        self.max_bytes, self.policy, self.scan_interval = int(max_bytes), policy, scan_interval
        _make_dirs(spool_dir)
        self.incoming = _dirs(spool_dir)[0]
        self._n = 0
        self._used = 0
        self._scanned_at = -1e18
        # what this writer did (the spool-wide totals are in spool_stats)
        self.written_batches = self.written_records = self.dropped_batches = self.refused_batches = 0

    def _name(self) -> str:
        self._n += 1
        return f"{time.time_ns():020d}-{os.getpid():07d}-{self._n:08d}.batch"

    def __call__(self, stream: str, records) -> None:
        """Spool one emitted batch (structured array or list of dicts); never raises for a full disk."""
        if not _NAME_OK.match(stream or ""):
            raise CapfanError(f"stream name {stream!r} must be 1-64 characters of letters, digits, '_', '.', '@', '-'")
        arr = _as_array(records)
        if len(arr) == 0:
            return
        head = _pack_header({"kind": "records", "host": self.host, "stream": stream, "source": self.source,
                             "created_ns": time.time_ns(), "records": len(arr)})
        body = _npy_bytes(arr)
        size = len(head) + len(body)
        now = time.monotonic()
        if now - self._scanned_at >= self.scan_interval:
            self._used = _scan(self.spool_dir)[0]
            self._scanned_at = now
        if self._used + size > self.max_bytes and not self._make_room(size, len(arr)):
            return
        try:
            _write_atomic(os.path.join(self.incoming, self._name()), (head, body))
        except OSError as e:
            # a full or failing disk must not crash (or block) the analyzer: count and go on
            log.warning("spool write failed, batch of %d records lost: %s", len(arr), e)
            with _locked(self.spool_dir):
                _add_counters(self.spool_dir, write_errors=1, dropped_batches=1, dropped_records=len(arr))
            self.dropped_batches += 1
            return
        self._used += size
        self.written_batches += 1
        self.written_records += len(arr)

    def _make_room(self, size: int, nrec: int) -> bool:
        """Apply the full-spool policy under the lock; True when the new batch may be written."""
        with _locked(self.spool_dir):
            used, out, inc = _scan(self.spool_dir)
            self._used, self._scanned_at = used, time.monotonic()
            if used + size <= self.max_bytes:
                return True
            if self.policy == "drop_new" or size > self.max_bytes:
                _add_counters(self.spool_dir, refused_batches=1, refused_records=nrec)
                self.refused_batches += 1
                return False
            batches = records = 0
            for path, fsize in out + inc:  # outgoing holds the older batches; each list is oldest first
                if used + size <= self.max_bytes:
                    break
                n = read_header(path).get("records", 0)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue  # acked or claimed meanwhile: space freed anyway, nothing lost
                used -= fsize
                batches += 1
                records += int(n)
            if batches:
                _add_counters(self.spool_dir, dropped_batches=batches, dropped_records=records)
                self.dropped_batches += batches
            self._used = used
            if used + size > self.max_bytes:  # the rest is transient (.tmp/.claim) files: refuse
                _add_counters(self.spool_dir, refused_batches=1, refused_records=nrec)
                self.refused_batches += 1
                return False
            return True

    def close(self) -> None:
        """Nothing is buffered (each call is durable on return); kept for the sink interface."""


# ---------------------------------------------------------------- exporter side

class Spool:
    """The exporter's view: claims incoming batches into seq-numbered outgoing files."""

    def __init__(self, spool_dir: str, host: str | None = None, codec: str | None = None, split=None):
        # host: stamped on every outgoing batch (seqs are this host's); None keeps the writer's.
        # split(stream, records) -> {endpoint: records} or None (every collector): see agents/routing.py
        self.spool_dir, self.host, self.codec, self.split = spool_dir, host, codec, split
        self._due: dict[int, tuple[str, ...] | None] = {}  # routing of batches claimed by this object
        self._n_respooled = 0
        _make_dirs(spool_dir)
        self.incoming, self.outgoing, self.rejected_dir = _dirs(spool_dir)
        n = _read_next_seq(spool_dir)
        # a fresh (or wiped) spool starts at the clock in µs: above any seq an older spool issued
        self._next = n if n is not None else max(1, time.time_ns() // 1000)
        self._recover()

    def _path(self, seq: int, ext: str = "batch", d: str | None = None) -> str:
        return os.path.join(d or self.outgoing, f"{seq:020d}.{ext}")

    def _recover(self) -> None:
        """Finish claims a crash interrupted and remove our stale temporary files."""
        for name in sorted(os.listdir(self.outgoing)):
            p = os.path.join(self.outgoing, name)
            m = _SEQ_NAME.match(name)
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(p)
            elif m and m.group(2) == "claim":
                seq = int(m.group(1))
                if os.path.exists(self._path(seq)):
                    os.unlink(p)
                else:
                    self._finish_claim(seq)

    def _persist_next(self, value: int) -> None:
        _write_atomic(os.path.join(self.spool_dir, "next_seq"), (f"{value}\n".encode(),), fsync_dir=True)

    def claim(self, limit: int = 10000) -> list[int]:
        """Turn up to `limit` incoming batches (oldest first) into outgoing/<seq>.batch; the new seqs."""
        now = time.time()
        names = []
        for e in os.scandir(self.incoming):
            if e.name.endswith(".batch") and not e.name.startswith("."):
                names.append(e.name)
            elif e.name.endswith(".tmp"):
                try:  # left by a writer that died between write and rename
                    if now - e.stat().st_mtime > STALE_TMP_S:
                        os.unlink(e.path)
                except FileNotFoundError:
                    pass
        if not names:
            return []
        names.sort()
        names = names[:limit]
        first = self._next
        # persisted before any rename: a crash after this point leaves gaps, never a reused seq
        self._persist_next(first + len(names))
        self._next = first + len(names)
        seqs = []
        for i, name in enumerate(names):
            seq = first + i
            try:
                os.rename(os.path.join(self.incoming, name), self._path(seq, "claim"))
            except FileNotFoundError:
                continue  # dropped by a writer making room: the seq stays unused
            if self._finish_claim(seq):
                seqs.append(seq)
        _fsync_dir(self.outgoing)
        return seqs

    def _finish_claim(self, seq: int) -> bool:
        """Encode a claimed incoming file as the wire batch `seq`; False if it went to rejected/."""
        claim = self._path(seq, "claim")
        try:
            meta, payload = read_file(claim)
            arr = np.lib.format.read_array(io.BytesIO(payload), allow_pickle=False)
            batch = wire.Batch(host=self.host or meta["host"], stream=meta["stream"], source=meta.get("source", ""), seq=seq,
                               records=arr, created_ns=int(meta.get("created_ns", 0)))
            parts = self.split(batch.stream, arr) if self.split is not None else None
            if parts is None:
                frames = wire.encode(batch, self.codec)
            else:
                encoded = {ep: wire.encode(dataclasses.replace(batch, records=r), self.codec)
                           for ep, r in parts.items()}
                frames = [f for fs in encoded.values() for f in fs]
        except (CapfanError, ValueError, KeyError, TypeError, OSError) as e:
            log.warning("spool batch %d cannot be encoded, moved to rejected/: %s", seq, e)
            self._move_rejected(claim, seq, f"unencodable spool file: {e}", read_header(claim).get("records", 0))
            return False
        meta = {"kind": "wire", "seq": seq, "stream": batch.stream, "records": len(arr),
                "frames": [len(f) for f in frames]}
        if parts is not None:
            meta["parts"] = [[ep, len(parts[ep]), len(fs)] for ep, fs in encoded.items()]
        _write_atomic(self._path(seq), [_pack_header(meta), *frames])
        os.unlink(claim)
        self._due[seq] = None if parts is None else tuple(parts)
        return True

    def pending(self) -> list[int]:
        """Seqs waiting in outgoing/ (not yet acked by every collector), in order."""
        out = []
        for name in os.listdir(self.outgoing):
            m = _SEQ_NAME.match(name)
            if m and m.group(2) == "batch":
                out.append(int(m.group(1)))
        out.sort()
        return out

    def load(self, seq: int) -> list[bytes] | None:
        """The wire frames of batch `seq` (a batch for every collector; a split one: SpoolError,
        see load_parts); None if it is gone (dropped to make room, or corrupt: then moved to
        rejected/)."""
        parts = self.load_parts(seq)
        if parts is None:
            return None
        if None not in parts:
            raise SpoolError(f"batch {seq} is split per collector; load its parts with load_parts")
        return parts[None][1]

    def load_parts(self, seq: int) -> dict[str | None, tuple[int, list[bytes]]] | None:
        """{endpoint: (records, wire frames)} of batch `seq`; the key None (alone) means "the
        whole batch, for every collector". None if the batch is gone (dropped to make room, or
        corrupt: then moved to rejected/)."""
        path = self._path(seq)
        try:
            meta, payload = read_file(path)
            lens = [int(n) for n in meta["frames"]]
            if sum(lens) != len(payload) or any(n < 0 for n in lens):
                raise SpoolError(f"{path}: frame lengths do not match the file size")
            layout = _parts_of(meta, path)
        except FileNotFoundError:
            return None
        except (SpoolError, KeyError, TypeError, ValueError) as e:
            log.warning("corrupt spool file moved to rejected/: %s", e)
            self._move_rejected(path, seq, f"corrupt spool file: {e}", 0)
            return None
        frames, off = [], 0
        for n in lens:
            frames.append(payload[off:off + n])
            off += n
        if layout is None:
            return {None: (int(meta.get("records", 0)), frames)}
        out, i = {}, 0
        for ep, nrec, nfr in layout:
            out[ep] = (nrec, frames[i:i + nfr])
            i += nfr
        return out

    def due(self, seq: int) -> tuple[str, ...] | None:
        """The collector endpoints batch `seq` was split for, or None (every collector, or the
        file is unreadable: load_parts decides then)."""
        if seq in self._due:
            return self._due.pop(seq)
        meta = read_header(self._path(seq))
        try:
            layout = _parts_of(meta, self._path(seq)) if meta else None
        except (KeyError, SpoolError):
            return None
        return None if layout is None else tuple(ep for ep, _, _ in layout)

    def respool(self, seq: int, keep) -> tuple[str, ...]:
        """Take the parts of split batch `seq` addressed to endpoints not in `keep` (collectors
        no longer configured) back to incoming/ as new batches, which the next claim routes
        afresh; the endpoints still due. The batch file goes when no part is left."""
        parts = self.load_parts(seq)
        if not parts or None in parts:
            return ()
        stay = {ep: p for ep, p in parts.items() if ep in keep}
        for ep, (nrec, frames) in parts.items():
            if ep in stay:
                continue
            b = wire.decode(frames)
            self._n_respooled += 1
            name = f"{time.time_ns():020d}-{os.getpid():07d}-r{self._n_respooled:07d}.batch"
            head = _pack_header({"kind": "records", "host": b.host, "stream": b.stream, "source": b.source,
                                 "created_ns": b.created_ns, "records": len(b.records)})
            # written before the part leaves the batch file: a crash in between repeats it, never loses it
            _write_atomic(os.path.join(self.incoming, name), (head, _npy_bytes(b.records)))
            log.warning("batch %d: the part for %s (%d records), no longer a configured collector, is "
                        "routed again over the current collectors", seq, ep, nrec)
        path = self._path(seq)
        if not stay:
            os.unlink(path)
            return ()
        meta = read_file(path)[0]
        meta.update(records=sum(n for n, _ in stay.values()), parts=[[ep, n, len(fs)] for ep, (n, fs) in stay.items()],
                    frames=[len(f) for _, fs in stay.values() for f in fs])
        _write_atomic(path, [_pack_header(meta), *(f for _, fs in stay.values() for f in fs)])
        return tuple(stay)

    def ack(self, seq: int) -> None:
        """Delete batch `seq` (every collector has it)."""
        try:
            os.unlink(self._path(seq))
        except FileNotFoundError:
            pass

    def reject(self, seq: int, reason: str) -> None:
        """Move batch `seq` to rejected/ with the reason (a collector refused it for good)."""
        path = self._path(seq)
        self._move_rejected(path, seq, reason, read_header(path).get("records", 0))

    def _move_rejected(self, path: str, seq: int, reason: str, nrec: int) -> None:
        try:
            os.rename(path, self._path(seq, "batch", self.rejected_dir))
        except FileNotFoundError:
            return
        with open(self._path(seq, "reason", self.rejected_dir), "w", encoding="utf-8") as f:
            f.write(reason + "\n")
        with _locked(self.spool_dir):
            _add_counters(self.spool_dir, rejected_batches=1, rejected_records=int(nrec))

    @property
    def next_seq(self) -> int:
        """The seq the next claimed batch gets."""
        return self._next

"""The collector's write-ahead journal: batches are durable (and acked) once in the journal; a
loader thread moves them into the store in big groups afterwards.

The intake appends each valid message's raw frames (``append``), fsyncs once per group of
messages (``sync``, group commit) and then acks them. The loader reads synced messages after a
checkpoint (``read``), loads them into the store, which records the checkpoint (the position of
the last loaded message) in the same transaction as the data, and drops whole segments that are
entirely loaded (``release``). After a crash the loader resumes right after the stored
checkpoint: nothing acked is lost, nothing is loaded twice ((host, seq) dedup covers batches an
agent re-sent because its ack was lost).

Threads: one writer (``append``, ``sync``) and one reader (``read``, ``release``) may run at the
same time; ``stats`` and ``wait`` from any thread. ``read`` only returns messages covered by a
completed ``sync``.

On-disk format. A directory of segment files ``00000000000000000001.journal``, ... (20-digit,
zero-padded, consecutive numbers; positions are ``(segment number, byte offset of a record)``).
A segment is a sequence of records, nothing else (no file header, no padding)::

    record  = header, frames
    header  = struct "<4sII" magic b"CFJ1", crc32, number of frames n (1..MAX_FRAMES),
              then n x u32 LE frame lengths
    crc32   = zlib.crc32 of the record with the crc field left out (magic, n, lengths, frames)

A new segment starts when appending to the current one would make it larger than
``segment_bytes`` (a record larger than that gets a segment of its own). The previous segment is
fsynced before the new one is created, so only the last segment can have a torn tail. On open
the last segment is scanned and every record's CRC checked: an invalid record that no valid
record follows is a torn tail (a write cut short by a crash, never acked) and is cut off
(truncated, logged with its size); an invalid record with a valid one after it is corruption in
the middle of the journal and raises ``JournalError`` naming the file and offset (data is never
skipped silently). ``read`` checks every record's CRC as well. A ``LOCK`` file (flock) keeps a
second writer out of the directory.

Performance (``python -m capfan.collector.journal``, i.e. ``measure()``; groups of 256 messages of
2 frames, ~350 KB each (10k records x 34 B), 90 MB per group; ext4 on the 2-vCPU dev VM's virtio
disk, 5 groups, 3 runs): append 0.8-1.2 GB/s, append+sync 0.6-0.8 GB/s, i.e. 110-150 ms per
group, of which only ~42 ms is CPU (CRC32 ~25-30 ms at ~3.5 GB/s, the kernel's copy into the page
cache ~15 ms, Python < 1 ms: ~2.5 us per append, one ``writev`` per message and no copy of the
frames); the rest, 65-70%, is waiting for the disk (fsync ~35 ms plus the kernel's dirty-page
throttling inside ``writev``). The 1 M records/s target is ~34 MB/s: 3-5% of the journal's
throughput, ~16 ms of CPU per second.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import mmap
import os
import re
import struct
import threading
import time
import zlib

from capfan.errors import CapfanError

log = logging.getLogger("capfan.collect.journal")

MAGIC = b"CFJ1"
_HEAD = struct.Struct("<4sII")      # magic, crc32, number of frames
_LEN = struct.Struct("<I")
_CRC0 = zlib.crc32(MAGIC)
MAX_FRAMES = 1024                   # also the writev iovec limit (IOV_MAX) with the header
MAX_FRAME = (1 << 32) - 1
SUFFIX = ".journal"
_NAME = re.compile(r"^(\d{20})\.journal$")
_fdatasync = getattr(os, "fdatasync", os.fsync)

Position = tuple[int, int]


class JournalError(CapfanError):
    """The journal is corrupt, unreadable or misused; the message names the file and offset."""


def segment_name(number: int) -> str:
    return f"{number:020d}{SUFFIX}"


def _parse(buf, off: int, end: int):
    """Validate the record at buf[off:end's bound]. Returns (record end, frame lengths, header
    size) or (None, reason) when the bytes from `off` are not a complete valid record."""
    if end - off < _HEAD.size:
        return None, f"partial header ({end - off} of {_HEAD.size} bytes)"
    magic, crc, n = _HEAD.unpack_from(buf, off)
    if magic != MAGIC:
        return None, f"bad magic {bytes(magic)!r}"
    if not 1 <= n <= MAX_FRAMES:
        return None, f"bad number of frames {n}"
    hsize = _HEAD.size + 4 * n
    if end - off < hsize:
        return None, f"partial header ({end - off} of {hsize} bytes)"
    lens = struct.unpack_from(f"<{n}I", buf, off + _HEAD.size)
    rend = off + hsize + sum(lens)
    if rend > end:
        return None, f"partial frames ({end - off} of {rend - off} bytes)"
    mv = memoryview(buf)
    try:
        got = zlib.crc32(mv[off + 8:rend], _CRC0)
    finally:
        mv.release()
    if got != crc:
        return None, f"bad CRC (stored {crc:#010x}, computed {got:#010x})"
    return rend, lens, hsize


class Journal:
    """A directory of append-only segment files; see the module docstring."""

    def __init__(self, directory: str, segment_bytes: int = 256 << 20, fsync: bool = True):
        if segment_bytes < _HEAD.size + 4:
            raise JournalError(f"journal {directory}: segment_bytes {segment_bytes} is too small")
        self.directory = os.path.abspath(directory)
        self.segment_bytes = int(segment_bytes)
        self.fsync = bool(fsync)
        self._lock = threading.Condition(threading.Lock())   # shared state writer <-> reader
        self._rlock = threading.Lock()                       # reader-side state
        self._closed = False
        self._rfds: dict[int, int] = {}          # reader's open segment fds
        self._next_cache: tuple[Position, Position] | None = None
        created = not os.path.isdir(self.directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
            if created and self.fsync:
                self._fsync_dir(os.path.dirname(self.directory))
            self._dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise JournalError(f"journal {self.directory}: cannot open the directory: {e}") from e
        self._lockfd = os.open(os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lockfd)
            os.close(self._dirfd)
            raise JournalError(f"journal {self.directory}: in use by another process or Journal "
                               f"(LOCK is held): {e}") from e
        try:
            self._open_segments()
        except BaseException:
            self._release_fds()
            raise

    # -- open / recovery ---------------------------------------------------------------------

    def _path(self, seg: int) -> str:
        return os.path.join(self.directory, segment_name(seg))

    def _open_segments(self) -> None:
        segs = sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m)
        for a, b in itertools.pairwise(segs):
            if b != a + 1:
                raise JournalError(f"journal {self.directory}: segments {segment_name(a + 1)} to "
                                   f"{segment_name(b - 1)} are missing (data lost)")
        self._sizes: dict[int, int] = {}     # final sizes of the segments before the current one
        self._last: Position | None = None   # position of the last record
        self.cut_bytes = 0                   # torn-tail bytes cut on open
        while segs:
            seg = segs[-1]
            size, last = self._recover(seg)
            if size == 0 and len(segs) > 1:
                # created just before a crash (or emptied by the cut): nothing in it, drop it and
                # continue in the previous segment
                os.unlink(self._path(seg))
                if self.fsync:
                    os.fsync(self._dirfd)
                segs.pop()
                continue
            self._last = (seg, last) if last is not None else None
            break
        if not segs:
            segs = [1]
            self._create(1)
            if self.fsync:
                os.fsync(self._dirfd)
        self._first_seg = segs[0]
        for s in segs[:-1]:
            self._sizes[s] = os.stat(self._path(s)).st_size
        self._seg = segs[-1]
        self._fd = os.open(self._path(self._seg), os.O_WRONLY | os.O_APPEND)
        self._off = os.fstat(self._fd).st_size
        self._synced: Position = (self._seg, self._off)   # everything on disk now is durable
        self._seen: Position | None = None                 # synced position the reader caught up to
        self._dir_dirty = False
        self._broken: str | None = None      # why the writer may not go on (failed fsync)
        self.appended = 0
        self.synced = 0
        self.syncs = 0
        self._pending = 0

    def _create(self, seg: int) -> None:
        fd = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)

    def _recover(self, seg: int) -> tuple[int, int | None]:
        """Scan segment `seg`, cut a torn tail; return (valid size, offset of its last record)."""
        path = self._path(seg)
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0, None
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
                off, last = 0, None
                while off < size:
                    r = _parse(m, off, size)
                    if r[0] is None:
                        break
                    last, off = off, r[0]
                if off == size:
                    return size, last
                reason = r[1]
                # a valid record after the bad one means corruption, not a torn write
                at = m.find(MAGIC, off + 1)
                while at != -1:
                    if _parse(m, at, size)[0] is not None:
                        raise JournalError(
                            f"journal segment {path}: corrupt record at offset {off} ({reason}) "
                            f"followed by a valid record at offset {at}; not a torn tail, "
                            f"refusing to skip data (inspect or restore the file)")
                    at = m.find(MAGIC, at + 1)
            log.warning("journal segment %s: cut a torn tail of %d bytes at offset %d (%s)",
                        path, size - off, off, reason)
            f.truncate(off)
            if self.fsync:
                os.fsync(f.fileno())
            self.cut_bytes += size - off
            return off, last

    # -- writer ------------------------------------------------------------------------------

    def append(self, frames: list[bytes]) -> Position:
        """Append one message (its frames) after the last; returns its position (segment,
        offset). Not durable, and not visible to `read`, until `sync()`."""
        n = len(frames)
        if self._closed:
            raise JournalError(f"journal {self.directory}: append after close")
        if not 1 <= n <= MAX_FRAMES:
            raise JournalError(f"journal {self.directory}: a message has 1 to {MAX_FRAMES} "
                               f"frames, not {n}")
        lens = [memoryview(fr).nbytes for fr in frames]
        total = _HEAD.size + 4 * n + sum(lens)
        if max(lens) > MAX_FRAME:
            raise JournalError(f"journal {self.directory}: frame larger than 4 GiB")
        if self._broken:
            raise JournalError(self._broken)
        if self._off > 0 and self._off + total > self.segment_bytes:
            try:
                self._roll()
            except OSError as e:
                self._broken = (f"journal segment {self._path(self._seg)}: starting the next "
                                f"segment failed ({e}); the journal is unusable, reopen it")
                raise JournalError(self._broken) from e
        lenbytes = struct.pack(f"<{n}I", *lens)
        crc = zlib.crc32(lenbytes, zlib.crc32(_LEN.pack(n), _CRC0))
        for fr in frames:
            crc = zlib.crc32(fr, crc)
        bufs = [_HEAD.pack(MAGIC, crc, n) + lenbytes, *frames]
        pos = (self._seg, self._off)
        try:
            done = os.writev(self._fd, bufs)
            while done < total:   # short write (signal, huge message): write the rest
                done += os.write(self._fd, memoryview(b"".join(bufs))[done:])
        except OSError as e:
            try:   # never leave a partial record before the next one
                os.ftruncate(self._fd, self._off)
            except OSError as e2:
                self._broken = (f"journal segment {self._path(self._seg)}: a failed write left a "
                                f"partial record at offset {self._off} ({e2}); reopen the journal")
            raise JournalError(f"journal segment {self._path(self._seg)}: write at offset "
                               f"{self._off} failed: {e}") from e
        self._off += total
        self._last = pos
        self.appended += 1
        self._pending += 1
        return pos

    def _roll(self) -> None:
        """Finish the current segment (fsync it, so only the last one can be torn) and start
        the next."""
        if self.fsync:
            _fdatasync(self._fd)
        os.close(self._fd)
        old, size = self._seg, self._off
        self._create(old + 1)
        self._fd = os.open(self._path(old + 1), os.O_WRONLY | os.O_APPEND)
        with self._lock:
            self._sizes[old] = size
            self._seg, self._off = old + 1, 0
        self._dir_dirty = True

    def sync(self) -> None:
        """Make every append so far durable (fsync the segment file; fsync the directory when a
        new segment was created) and visible to `read`."""
        if self._closed:
            raise JournalError(f"journal {self.directory}: sync after close")
        if self._broken:
            raise JournalError(self._broken)
        if self._pending == 0 and not self._dir_dirty:
            return
        if self.fsync:
            try:
                _fdatasync(self._fd)
                if self._dir_dirty:
                    os.fsync(self._dirfd)
            except OSError as e:
                # after a failed fsync the kernel may have dropped the dirty pages: a retry could
                # "succeed" without the data, so this journal accepts nothing more
                self._broken = (f"journal segment {self._path(self._seg)}: fsync failed ({e}); "
                                f"appends after offset {self._synced[1]} of segment "
                                f"{self._synced[0]} are not durable (do not ack them); reopen "
                                f"the journal")
                raise JournalError(self._broken) from e
        self._dir_dirty = False
        with self._lock:
            self._synced = (self._seg, self._off)
            self.synced += self._pending
            self._pending = 0
            self.syncs += 1
            self._lock.notify_all()

    # -- reader ------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a sync made data visible that the last `read` could not return yet, or
        `timeout` seconds pass; True if there may be something new to read. (A convenience for
        the loader thread; `read` alone is enough for correctness.)"""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                if self._synced != self._seen:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
            return False

    def _rfd(self, seg: int) -> int:
        fd = self._rfds.get(seg)
        if fd is None:
            try:
                fd = os.open(self._path(seg), os.O_RDONLY)
            except FileNotFoundError:
                raise JournalError(f"journal {self.directory}: segment {segment_name(seg)} does "
                                   f"not exist (released, or the position is wrong)") from None
            self._rfds[seg] = fd
        return fd

    def _limits(self) -> tuple[Position, dict[int, int]]:
        with self._lock:
            return self._synced, dict(self._sizes)

    def _end_of(self, seg: int, synced: Position, sizes: dict[int, int]) -> int:
        if seg < synced[0]:
            return sizes[seg] if seg in sizes else os.fstat(self._rfd(seg)).st_size
        return synced[1]

    def _next_after(self, since: Position, synced: Position, sizes) -> Position:
        seg, off = since
        c = self._next_cache
        if c is not None and c[0] == since:
            return c[1]
        if seg > synced[0] or (seg == synced[0] and off >= synced[1]) or off < 0:
            raise JournalError(f"journal segment {self._path(seg)}: no synced record at offset "
                               f"{off}")
        fd = self._rfd(seg)
        head = os.pread(fd, _HEAD.size, off)
        if len(head) < _HEAD.size or head[:4] != MAGIC:
            raise JournalError(f"journal segment {self._path(seg)}: no record at offset {off} "
                               f"(read position is not a record start)")
        n = _HEAD.unpack(head)[2]
        if not 1 <= n <= MAX_FRAMES:
            raise JournalError(f"journal segment {self._path(seg)}: corrupt record header at "
                               f"offset {off} ({n} frames)")
        lens = struct.unpack(f"<{n}I", os.pread(fd, 4 * n, off + _HEAD.size))
        return (seg, off + _HEAD.size + 4 * n + sum(lens))

    def read(self, since: Position | None, max_messages: int = 1024,
             max_bytes: int = 64 << 20) -> list[tuple[Position, Position, list[bytes]]]:
        """Synced messages after position `since` (None: from the start of the journal), up to
        `max_messages` and about `max_bytes` (at least one message if there is one): a list of
        (position, next_position, frames). Pass the last position read as the next `since`."""
        out: list[tuple[Position, Position, list[bytes]]] = []
        with self._rlock:
            if self._closed:
                raise JournalError(f"journal {self.directory}: read after close")
            synced, sizes = self._limits()
            exhausted = False
            if since is None:
                seg, off = self._first_seg, 0
            else:
                since = (int(since[0]), int(since[1]))
                if since[0] < self._first_seg:
                    raise JournalError(f"journal {self.directory}: position {since} is in "
                                       f"segment {segment_name(since[0])}, already released")
                seg, off = self._next_after(since, synced, sizes)
            budget = max_bytes
            while len(out) < max_messages:
                end = self._end_of(seg, synced, sizes)
                if off >= end:
                    if seg < synced[0]:
                        seg, off = seg + 1, 0
                        continue
                    exhausted = True
                    break
                fd = self._rfd(seg)
                buf = os.pread(fd, min(end - off, budget), off)
                got = self._parse_many(buf, seg, off, out, max_messages)
                if got == 0:
                    if out:
                        break   # the next record does not fit the budget
                    got = self._read_one(seg, off, end, out)   # one record larger than the budget
                off += got
                budget -= got
                if budget <= 0:
                    break
            if out:
                self._next_cache = (out[-1][0], out[-1][1])
            if exhausted:
                with self._lock:
                    self._seen = synced
        return out

    def _parse_many(self, buf: bytes, seg: int, base: int, out, max_messages: int) -> int:
        """Parse the whole records in buf (the bytes at offset `base` of segment `seg`) into
        out; returns the bytes consumed (0 if the first record is not all in buf)."""
        p = 0
        size = len(buf)
        while p < size and len(out) < max_messages:
            if size - p < _HEAD.size:
                break
            magic, _crc, n = _HEAD.unpack_from(buf, p)
            if magic != MAGIC or not 1 <= n <= MAX_FRAMES:
                self._corrupt(seg, base + p, f"bad magic {magic!r}" if magic != MAGIC
                              else f"bad number of frames {n}")
            hsize = _HEAD.size + 4 * n
            if size - p < hsize:
                break
            lens = struct.unpack_from(f"<{n}I", buf, p + _HEAD.size)
            if size - p < hsize + sum(lens):
                break
            r = _parse(buf, p, size)
            if r[0] is None:
                self._corrupt(seg, base + p, r[1])
            frames = []
            q = p + hsize
            for ln in lens:
                frames.append(buf[q:q + ln])
                q += ln
            out.append(((seg, base + p), (seg, base + q), frames))
            p = q
        return p

    def _read_one(self, seg: int, off: int, end: int, out) -> int:
        """Read the one record at `off` (below `end`, the synced end of the segment) whatever
        its size; returns its length."""
        fd = self._rfds[seg]
        head = os.pread(fd, min(end - off, _HEAD.size), off)
        if len(head) < _HEAD.size:
            self._corrupt(seg, off, f"partial header ({len(head)} bytes) below the synced end {end}")
        magic, _crc, n = _HEAD.unpack(head)
        if magic != MAGIC or not 1 <= n <= MAX_FRAMES:
            self._corrupt(seg, off, f"bad magic {magic!r}" if magic != MAGIC
                          else f"bad number of frames {n}")
        hsize = _HEAD.size + 4 * n
        lens = struct.unpack(f"<{n}I", os.pread(fd, 4 * n, off + _HEAD.size).ljust(4 * n, b"\0"))
        rlen = hsize + sum(lens)
        if off + rlen > end:
            self._corrupt(seg, off, f"record of {rlen} bytes runs past the synced end {end}")
        buf = os.pread(fd, rlen, off)
        if self._parse_many(buf, seg, off, out, len(out) + 1) != rlen:
            self._corrupt(seg, off, "short read")
        return rlen

    def _corrupt(self, seg: int, off: int, reason: str):
        raise JournalError(f"journal segment {self._path(seg)}: corrupt record at offset {off} "
                           f"({reason})")

    def release(self, upto: Position) -> int:
        """Delete the whole segments entirely before position `upto` (their messages are loaded;
        the segment holding `upto` stays); returns the number of segments deleted."""
        with self._rlock:
            with self._lock:
                last = min(int(upto[0]), self._seg)   # never the segment being written
            n = 0
            while self._first_seg < last:
                seg = self._first_seg
                fd = self._rfds.pop(seg, None)
                if fd is not None:
                    os.close(fd)
                try:
                    os.unlink(self._path(seg))
                except FileNotFoundError:
                    pass
                with self._lock:
                    self._sizes.pop(seg, None)
                    self._first_seg = seg + 1
                n += 1
            if n and self.fsync:
                os.fsync(self._dirfd)
            return n

    # -- misc --------------------------------------------------------------------------------

    def stats(self) -> dict:
        """segments, bytes on disk, messages appended / synced since open, syncs, torn-tail
        bytes cut on open, and positions: first (start of the journal), last (the last record),
        synced (end of the durable data)."""
        with self._lock:
            segs = self._seg - self._first_seg + 1
            nbytes = sum(self._sizes.get(s, 0) for s in range(self._first_seg, self._seg))
            return {
                "directory": self.directory,
                "segments": segs,
                "bytes": nbytes + self._off,
                "appended": self.appended,
                "synced": self.synced,
                "syncs": self.syncs,
                "cut_bytes": self.cut_bytes,
                "first": (self._first_seg, 0) if self._last is not None else None,
                "last": self._last,
                "synced_position": self._synced,
            }

    def close(self) -> None:
        """Close the files (without a sync: unsynced appends are not durable); idempotent."""
        if self._closed:
            return
        with self._rlock:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            self._release_fds()

    def _release_fds(self) -> None:
        for fd in list(self._rfds.values()):
            os.close(fd)
        self._rfds.clear()
        for name in ("_fd", "_dirfd", "_lockfd"):
            fd = getattr(self, name, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as e:
                    if e.errno != errno.EBADF:
                        raise
                setattr(self, name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def measure(directory: str | None = None, messages: int = 256, message_bytes: int = 350_000,
            rounds: int = 5, fsync: bool = True) -> dict:
    """Append + sync `rounds` groups of `messages` 2-frame messages of ~`message_bytes` each into
    a fresh journal under `directory` (default: a temporary directory in the current directory,
    i.e. on a real disk rather than tmpfs). Returns MB/s of append alone and of append+sync, the
    fsync's share of the time, and per group: append wall time, its CPU time (user + system:
    CRC, the copy into the page cache, Python), the CRC's part alone, and the sync time. Append
    wall time above its CPU time is the kernel throttling the writer to the disk's speed."""
    import shutil
    import tempfile
    base = tempfile.mkdtemp(prefix="capfan-journal-bench-", dir=directory or ".")
    try:
        head = os.urandom(120)
        payloads = [os.urandom(message_bytes) for _ in range(4)]
        j = Journal(os.path.join(base, "j"), fsync=fsync)
        t_app = t_sync = cpu_app = 0.0
        nbytes = 0
        for _ in range(rounds):
            c0 = time.process_time()
            t0 = time.perf_counter()
            for i in range(messages):
                j.append([head, payloads[i % 4]])
            t1 = time.perf_counter()
            cpu_app += time.process_time() - c0
            j.sync()
            t2 = time.perf_counter()
            t_app += t1 - t0
            t_sync += t2 - t1
            nbytes += messages * (len(head) + message_bytes)
        j.close()
        t0 = time.perf_counter()
        for i in range(messages):
            zlib.crc32(payloads[i % 4], zlib.crc32(head))
        t_crc = time.perf_counter() - t0
        return {
            "MB": nbytes / 1e6,
            "append_MBps": nbytes / t_app / 1e6,
            "append_sync_MBps": nbytes / (t_app + t_sync) / 1e6,
            "sync_share": t_sync / (t_app + t_sync),
            "append_ms_per_group": t_app / rounds * 1e3,
            "append_cpu_ms_per_group": cpu_app / rounds * 1e3,
            "crc_ms_per_group": t_crc * 1e3,
            "sync_ms_per_group": t_sync / rounds * 1e3,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    for k, v in measure().items():
        print(f"{k:22s} {v:,.3f}")

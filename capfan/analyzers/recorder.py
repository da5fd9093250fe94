"""`recorder` analyzer: writes the ring's packets to pcap or pcapng files, rotated by size/time.

The records are built in C (capfan/_core/pcapwrite.c) straight from the shared ring; Python
only hands finished buffers to os.write. The default consumer policy is lossy: a slow disk
must never hold the capture back, so the recorder misses packets instead (counted).

Files:

- names are ``{prefix}-{YYYYmmdd-HHMMSS}-{index:04d}.pcap`` (or ``.pcapng``), the time being
  when the file was opened, in UTC, so names sort chronologically and never clash (index
  counts the files of this run and is bumped past any existing name);
- a file is written as ``NAME.part`` and renamed to ``NAME`` only once it is complete (on
  rotation or stop): a file without ``.part`` is always a whole, readable capture;
- a file that ends up holding no packet is deleted rather than kept, except that a run always
  leaves at least one (possibly empty) file;
- ``max_files`` counts the finished files named like this recorder's (same dir, prefix and
  format, earlier runs included) plus the one being written, and deletes the oldest by name.

Torn packets (overwritten in the ring while a lossy reader was still copying them) are cut out
of the buffer before it is written: a torn packet never reaches a file.
"""
from __future__ import annotations

import os
import re
import time

from capfan import errors
from capfan._capfan_core import ffi, lib
from capfan.analyzers import Analyzer, Context, Option
from capfan.ring import parse_size

FORMATS = ("pcap", "pcapng")
TSTAMPS = ("ns", "us")
MAX_SNAPLEN = 65535             # the ring never stores more per packet
FLUSH_BYTES = 1 << 20           # write out once this much is buffered (and on every tick)
NO_LINKTYPE = 0xFFFFFFFF
_FMT_PCAP_NS, _FMT_PCAP_US, _FMT_PCAPNG = 0, 1, 2


RecorderError = errors.RecorderError

def _choice(*allowed):
    """Option parser accepting one of `allowed` (case-insensitive)."""
    def parse(value):
        v = str(value).strip().lower()
        if v not in allowed:
            raise ValueError(f"choose one of {', '.join(allowed)}")
        return v
    parse.__name__ = "|".join(allowed)
    return parse


def _size(value) -> int:
    """Byte count with optional K/M/G suffix, >= 0."""
    return parse_size(value)


def _count(value) -> int:
    """Whole number >= 0."""
    n = int(value)
    if n < 0:
        raise ValueError("must be 0 or more")
    return n


def _seconds(value) -> float:
    """Seconds >= 0 (0 = never)."""
    s = float(value)
    if not s >= 0 or s == float("inf"):
        raise ValueError("must be a finite number of seconds, 0 or more")
    return s


def _snaplen(value) -> int:
    """Bytes kept per packet, 1..65535."""
    n = int(value)
    if not 1 <= n <= MAX_SNAPLEN:
        raise ValueError(f"must be 1..{MAX_SNAPLEN} (the ring stores at most {MAX_SNAPLEN} bytes a packet)")
    return n


def _last_error() -> str:
    return ffi.string(lib.capfan_last_error()).decode(errors="replace")


def file_pattern(prefix: str, fmt: str) -> re.Pattern:
    """Regex matching finished file names of a recorder with this prefix and format."""
    return re.compile(rf"^{re.escape(prefix)}-\d{{8}}-\d{{6}}-\d{{4,}}\.{fmt}$")


class Recorder(Analyzer):
    """Record packets to rotating pcap/pcapng files (see the module docstring for the file rules)."""

    policy = "lossy"
    options = {
        "dir": Option(str, ".", "Directory for the capture files (created if missing)."),
        "prefix": Option(str, "capfan", "File name prefix: PREFIX-YYYYmmdd-HHMMSS-NNNN.pcap[ng]."),
        "format": Option(_choice(*FORMATS), "pcap", "pcap (one link type per file) or pcapng "
                         "(an interface per ring port, so mixed link types are kept)."),
        "rotate_size": Option(_size, 1 << 30, "Start a new file before one exceeds this size "
                              "(bytes, K/M/G suffix; 0 = never)."),
        "rotate_seconds": Option(_seconds, 0.0, "Start a new file after this many seconds (0 = never)."),
        "max_files": Option(_count, 0, "Keep at most this many files, deleting the oldest (0 = keep all)."),
        "filter": Option(str, "", "BPF filter in tcpdump syntax; only matching packets are written."),
        "snaplen": Option(_snaplen, MAX_SNAPLEN, "Bytes kept per packet; the original length is recorded."),
        "tstamp": Option(_choice(*TSTAMPS), "ns", "pcap timestamp resolution: ns or us (pcapng is always ns)."),
    }

    def __init__(self, clock=time.time_ns):
        self.clock = clock  # wall clock in ns: file names and time rotation (tests pass a fake)
        self._w = None
        self._fd = None
        self._part = None
        self._opened_ns = 0
        self._finished: list[str] = []   # finished files, oldest first (earlier runs included)
        self._index = 0
        self._files = 0                  # files finished by this run
        self._bytes = 0                  # bytes written to files by this run
        self._warned_linktype = False
        self._warned_filter = False
        self._st = ffi.new("capfan_pcapw_stats *")
        self._len = ffi.new("uint64_t *")

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        """Check the options, compile the filter, open the first file."""
        super().start(ctx)
        cfg = ctx.config
        self.dir = os.path.abspath(cfg["dir"])
        self.prefix = cfg["prefix"]
        if not self.prefix or "/" in self.prefix:
            raise errors.ConfigError("prefix", f"{self.prefix!r} is not a file name prefix (non-empty, no '/')")
        self.format = cfg["format"]
        self.rotate_size = cfg["rotate_size"]
        self.rotate_ns = int(cfg["rotate_seconds"] * 1e9)
        self.max_files = cfg["max_files"]
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            raise errors.ConfigError("dir", f"cannot create {self.dir}: {e.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise errors.ConfigError("dir", f"{self.dir} is not writable by this process")
        fmt = _FMT_PCAPNG if self.format == "pcapng" else (_FMT_PCAP_US if cfg["tstamp"] == "us" else _FMT_PCAP_NS)
        self._filter_c = ffi.new("char[]", cfg["filter"].encode())
        opts = ffi.new("capfan_pcapw_opts *", {
            "format": fmt, "snaplen": cfg["snaplen"], "linktype": ctx.linktype(0),
            "rotate_size": self.rotate_size, "filter": self._filter_c})
        w = lib.capfan_pcapw_new(opts)
        if w == ffi.NULL:
            msg = _last_error()
            if cfg["filter"]:
                raise errors.ConfigError("filter", f"{msg} (link type {ctx.linktype(0)})")
            raise RecorderError(f"recorder: cannot set up the pcap writer: {msg}")
        self._w = ffi.gc(w, lib.capfan_pcapw_free)
        self._scan_existing()
        self._open(self.clock())

    def on_batch(self, batch) -> None:
        """Append the batch's packets (filtered, cut to snaplen, torn ones dropped); rotate by size."""
        c, b = batch.c_handles
        ring = lib.capfan_consumer_ring(c)
        n = len(batch)
        i = 0
        while True:
            if self._fd is None:
                self._open(self.clock())
            nxt = lib.capfan_pcapw_add(self._w, ring, b, i)
            # Seqlock check after the copy: drop whatever was overwritten meanwhile before any
            # of its bytes can be written out.
            torn = batch.torn()
            if torn:
                lib.capfan_pcapw_drop_torn(self._w, torn)
            if nxt < 0:
                raise RecorderError(f"recorder: {_last_error()}")
            self._warn_once()
            if nxt >= n:
                break
            self._rotate(self.clock())  # file full: the rest of the batch goes to the next file
            i = nxt
        if self.rotate_ns and self.clock() - self._opened_ns >= self.rotate_ns:
            self._rotate(self.clock())
        elif self._buffered() >= FLUSH_BYTES:
            self._flush()

    def on_tick(self, now_ns: int) -> None:
        """Rotate when the file's time is up (also when idle); otherwise push buffered bytes out."""
        if self._w is None:
            return
        if self.rotate_ns and self._fd is not None and now_ns - self._opened_ns >= self.rotate_ns:
            self._rotate(now_ns)
        else:
            self._flush()

    def stop(self) -> None:
        """Write what is buffered, finish (rename) the current file, free the writer."""
        if self._w is None:
            return
        if self._fd is not None:
            keep_empty = self._files == 0  # a run always leaves at least one file
            self._finish(keep_empty=keep_empty)
            self._prune(self.max_files)
        self._w = None

    def stats(self) -> dict:
        """packets/bytes written, files finished, filtered, torn, skipped (other link type)."""
        if self._w is not None:
            lib.capfan_pcapw_get_stats(self._w, self._st)
        st = self._st
        return {"packets": st.packets, "packet_bytes": st.bytes, "bytes": self._bytes + (self._buffered() if self._w is not None else 0),
                "files": self._files, "filtered": st.filtered, "torn": st.torn,
                "skipped_linktype": st.skipped_linktype, "current_file": self._part}

    # ---- files ---------------------------------------------------------------------------

    def _ext(self) -> str:
        return self.format

    def _scan_existing(self) -> None:
        """Seed max_files' list with finished files of earlier runs (sorted names = age)."""
        pat = file_pattern(self.prefix, self._ext())
        names = sorted(n for n in os.listdir(self.dir) if pat.match(n))
        self._finished = [os.path.join(self.dir, n) for n in names]
        parts = [n for n in os.listdir(self.dir) if n.endswith(".part") and pat.match(n[:-5])]
        if parts:
            self.ctx.log.warning("recorder: %d unfinished file(s) from an earlier run left in %s (e.g. %s): "
                                 "they may end mid-record", len(parts), self.dir, parts[0])

    def _name(self, now_ns: int) -> str:
        """Next free final path for a file opened at now_ns."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ns // 1_000_000_000))
        while True:
            path = os.path.join(self.dir, f"{self.prefix}-{stamp}-{self._index:04d}.{self._ext()}")
            self._index += 1
            if not os.path.exists(path) and not os.path.exists(path + ".part"):
                return path

    def _open(self, now_ns: int) -> None:
        """Open NAME.part (0600: captures hold other people's traffic) and start a file in C."""
        path = self._name(now_ns)
        try:
            fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise RecorderError(f"recorder: cannot create {path}.part: {e.strerror}") from None
        self._fd, self._part, self._opened_ns = fd, path, now_ns
        if lib.capfan_pcapw_begin_file(self._w) < 0:
            raise RecorderError(f"recorder: {_last_error()}")

    def _buffered(self) -> int:
        lib.capfan_pcapw_buffer(self._w, self._len)
        return self._len[0]

    def _flush(self) -> None:
        """Write the buffered records to the current file."""
        if self._fd is None:
            return
        ptr = lib.capfan_pcapw_buffer(self._w, self._len)
        n = self._len[0]
        if n == 0:
            return
        mv = memoryview(ffi.buffer(ptr, n))
        done = 0
        try:
            while done < n:
                done += os.write(self._fd, mv[done:])
        except OSError as e:
            raise RecorderError(f"recorder: writing {self._part}.part failed: {e.strerror}") from None
        finally:
            mv.release()
        self._bytes += n
        lib.capfan_pcapw_clear(self._w)

    def _finish(self, keep_empty: bool) -> None:
        """Complete the current file: flush, close, rename NAME.part to NAME (or delete it when
        it holds no packet and keep_empty is false)."""
        lib.capfan_pcapw_end_file(self._w)
        self._flush()
        lib.capfan_pcapw_get_stats(self._w, self._st)
        has_packets = self._st.file_packets > 0
        os.close(self._fd)
        self._fd = None
        part, self._part = self._part + ".part", None
        path = part[:-5]
        try:
            if has_packets or keep_empty:
                os.rename(part, path)
                self._finished.append(path)
                self._files += 1
            else:
                os.unlink(part)
        except OSError as e:
            raise RecorderError(f"recorder: cannot finish {path}: {e.strerror}") from None

    def _rotate(self, now_ns: int) -> None:
        """Finish the current file and open the next one."""
        self._finish(keep_empty=False)
        self._prune(self.max_files - 1 if self.max_files else 0)
        self._open(now_ns)

    def _prune(self, keep: int) -> None:
        """Delete the oldest finished files beyond `keep` (only when max_files is set)."""
        if not self.max_files:
            return
        while len(self._finished) > max(keep, 0):
            old = self._finished.pop(0)
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass  # someone removed it already: nothing to do
            except OSError as e:
                self.ctx.log.warning("recorder: cannot delete old capture %s: %s", old, e.strerror)

    def _warn_once(self) -> None:
        """One warning each for packets skipped for their link type and an uncompilable filter."""
        lib.capfan_pcapw_get_stats(self._w, self._st)
        st = self._st
        if st.skipped_linktype and not self._warned_linktype:
            self._warned_linktype = True
            self.ctx.log.warning("recorder: packets of a link type other than %d (the pcap file's) are skipped; "
                                 "use format=pcapng to keep every link type", st.linktype)
        if st.filter_failed_linktype != NO_LINKTYPE and not self._warned_filter:
            self._warned_filter = True
            self.ctx.log.warning("recorder: filter %r does not compile for link type %d; those packets are "
                                 "counted as filtered", self.ctx.config["filter"], st.filter_failed_linktype)

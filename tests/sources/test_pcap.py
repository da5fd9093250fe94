"""pcap / pcapng replay source (capfan/_core/src_pcap.c, capfan.sources.pcap, `capfan replay`).

Oracles: tshark for every file of the tcpdump corpus (packet count, wire/captured lengths,
timestamps, interface ids, which files are corrupt) and a pure-Python reference reader in this
file (packet bytes, and the exact byte offset a corrupt file is reported at). The reference
reader is also the written-down statement of the corruption rules:

  * classic pcap: an empty file, a file shorter than its 24-byte header, an unknown magic or a
    major version other than 2 is rejected at open (offset 0, or 4 for the version); a record
    whose 16-byte header or captured bytes run past the end of the file, or whose captured
    length exceeds 256 KiB, is corrupt (offset = start of that record);
  * pcapng: the first section header is checked at open; then every block must have a length
    that is >= 12 (28 for an SHB), a multiple of 4, inside the file and equal to its trailing
    copy; packet blocks must fit their data in the block, name an interface the section
    described, and carry <= 256 KiB; a bad SHB byte-order magic or version is corrupt. IDB
    options are metadata: a malformed option list only ends option parsing, and an if_tsresol
    beyond 10^-19 / 2^-63 makes the rate 2^64 - 1 units/s (what wiretap does).
  * caplen > wirelen is not corrupt (tshark shows such records as they are; so does capfan).
  * a classic pcap record whose fraction field is 1 s or more (invalid) is not corrupt: the
    excess carries into the seconds (ts = sec x 10^9 + fraction x unit). tshark keeps the
    nanoseconds in a 32-bit int and shows garbage for such records (e.g. "-0.2078753920"), so
    their timestamps alone are compared with the reference reader instead of tshark.

Everything before the first corrupt record is delivered; the error names file and offset.
Where capfan's output deliberately differs from tshark's, expected_from_tshark() names the rule
and the tests assert which files need which rule.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capfan import errors
from capfan import ring as ringlib
from capfan.sources import open_source
from capfan.sources.pcap import PcapSource, parse_speed

from tests.conftest import PCAPS as CORPUS  # noqa: E402
RING_SNAPLEN = 65535
MAX_CAPLEN = 256 * 1024
OFFSET_RE = re.compile(r"at byte offset (\d+)")


def need(tool: str) -> str:
    """Path of a Wireshark tool; a missing one fails the test (CI installs tshark)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: install the tshark package (apt-get install tshark) to run the pcap tests")
    return path


def corpus_files() -> list[Path]:
    """Every capture of the tcpdump corpus; an absent corpus is a failure, not a skip."""
    if not CORPUS.is_dir():
        pytest.fail(f"pcap corpus {CORPUS} not found (set CAPFAN_PCAPS to the shared pcaps directory)")
    files = sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert len(files) > 300
    return files


# ---------------------------------------------------------------------------------------------
# writers for crafted captures

def pcap_bytes(packets, endian="<", nsec=False, linktype=1, snaplen=65535, version=(2, 4)) -> bytes:
    """A classic pcap file; packets are (ts_ns, data) or (ts_ns, data, wirelen)."""
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)]
    for p in packets:
        ts, data = p[0], p[1]
        wl = p[2] if len(p) > 2 else len(data)
        frac = ts % 10**9 if nsec else ts % 10**9 // 1000
        out.append(struct.pack(endian + "IIII", ts // 10**9, frac, len(data), wl) + data)
    return b"".join(out)


def ng_block(btype: int, body: bytes, endian="<") -> bytes:
    """A pcapng block with its body padded to 4 bytes."""
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def ng_opt(code: int, value: bytes, endian="<") -> bytes:
    """One pcapng option, padded."""
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(endian="<", major=1) -> bytes:
    """Section header block (byte order from `endian`), section length unknown."""
    return ng_block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, major, 0, -1), endian)


def idb(linktype=1, snaplen=0, tsresol: int | None = None, tsoffset: int | None = None, endian="<") -> bytes:
    """Interface description block with optional if_tsresol / if_tsoffset."""
    opts = b""
    if tsresol is not None:
        opts += ng_opt(9, bytes([tsresol]), endian)
    if tsoffset is not None:
        opts += ng_opt(14, struct.pack(endian + "q", tsoffset), endian)
    if opts:
        opts += ng_opt(0, b"", endian)
    return ng_block(1, struct.pack(endian + "HHI", linktype, 0, snaplen) + opts, endian)


def epb(iface: int, units: int, data: bytes, wirelen=None, endian="<", opb=False) -> bytes:
    """Enhanced packet block (or obsolete packet block with opb=True); units in if_tsresol."""
    wl = len(data) if wirelen is None else wirelen
    if opb:
        head = struct.pack(endian + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), wl)
        return ng_block(2, head + data, endian)
    head = struct.pack(endian + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), wl)
    return ng_block(6, head + data, endian)


def spb(data: bytes, wirelen=None, endian="<") -> bytes:
    """Simple packet block (interface 0, no timestamp)."""
    return ng_block(3, struct.pack(endian + "I", len(data) if wirelen is None else wirelen) + data, endian)


def frame(i: int, size: int = 60) -> bytes:
    """A recognisable Ethernet/IPv4/UDP frame of `size` bytes (i is in the payload)."""
    hdr = bytes.fromhex("020000000002020000000001 0800".replace(" ", ""))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", 1000 + i % 1000, 53, size - 34, 0)
    body = (i.to_bytes(4, "big") * (size // 4 + 1))[:size - 42]
    return hdr + ip + udp + body


# ---------------------------------------------------------------------------------------------
# pure-Python reference reader (the spec of the rules above)

@dataclass
class RefPkt:
    ts_ns: int
    caplen: int
    wirelen: int
    iface: int
    data: bytes
    ts_valid: bool = True  # False: classic pcap fraction field >= 1 s (see the module docstring)
    local_iface: int = 0   # interface id inside its pcapng section (what tshark 4.0 shows)
    spb: bool = False      # simple packet block: no timestamp in the file


@dataclass
class RefFile:
    packets: list[RefPkt] = field(default_factory=list)
    error: tuple[int, str] | None = None   # (byte offset, what)
    at_open: bool = False                  # the error is raised by open, not by the replay
    linktypes: list[int] = field(default_factory=list)  # per interface, numbered across sections


class _Corrupt(Exception):
    def __init__(self, offset, what):
        super().__init__(offset, what)
        self.offset, self.what = offset, what


def ref_read(buf: bytes) -> RefFile:
    """Read a pcap/pcapng capture the way capfan must (see the module docstring)."""
    f = RefFile()
    try:
        if len(buf) < 4:
            f.at_open = True
            raise _Corrupt(0, "empty or too short")
        if buf[:4] == b"\x0a\x0d\x0d\x0a":
            _ref_pcapng(buf, f)
        else:
            _ref_pcap(buf, f)
    except _Corrupt as e:
        f.error = (e.offset, e.what)
    return f


def _ref_pcap(buf: bytes, f: RefFile) -> None:
    magic = buf[:4]
    kinds = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
             b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}
    if magic not in kinds:
        f.at_open = True
        raise _Corrupt(0, "unknown magic")
    e, nsec = kinds[magic]
    if len(buf) < 24:
        f.at_open = True
        raise _Corrupt(0, "header truncated")
    major, = struct.unpack_from(e + "H", buf, 4)
    if major != 2:
        f.at_open = True
        raise _Corrupt(4, "version")
    f.linktypes.append(struct.unpack_from(e + "I", buf, 20)[0] & 0xFFFF)
    off = 24
    while off < len(buf):
        if len(buf) - off < 16:
            raise _Corrupt(off, "record header truncated")
        sec, frac, cl, wl = struct.unpack_from(e + "IIII", buf, off)
        if cl > MAX_CAPLEN or off + 16 + cl > len(buf):
            raise _Corrupt(off, "caplen")
        ts = sec * 10**9 + (frac if nsec else frac * 1000)
        valid = frac < (10**9 if nsec else 10**6)
        f.packets.append(RefPkt(ts, cl, wl, 0, buf[off + 16:off + 16 + cl], valid))
        off += 16 + cl


def _ref_pcapng(buf: bytes, f: RefFile) -> None:
    off, e, sec_base, last_ts = 0, "<", 0, 0
    ifs: list[tuple[int, int, int, int]] = []  # linktype, snaplen, units/s, tsoffset
    while off < len(buf):
        first = off == 0
        f.at_open = first
        rem = len(buf) - off
        if rem < 8:
            raise _Corrupt(off, "block header truncated")
        if buf[off:off + 4] == b"\x0a\x0d\x0d\x0a":
            if rem < 12:
                raise _Corrupt(off, "shb truncated")
            bom = buf[off + 8:off + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                e = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                e = ">"
            else:
                raise _Corrupt(off + 8, "bad bom")
        btype, blen = struct.unpack_from(e + "II", buf, off)
        if blen < (28 if btype == 0x0A0D0D0A else 12) or blen % 4:
            raise _Corrupt(off, "bad block length")
        if blen > rem:
            raise _Corrupt(off, "block truncated")
        if struct.unpack_from(e + "I", buf, off + blen - 4)[0] != blen:
            raise _Corrupt(off, "trailer")
        if btype == 0x0A0D0D0A:
            major, = struct.unpack_from(e + "H", buf, off + 12)
            if major != 1:
                raise _Corrupt(off + 12, "version")
            sec_base = len(ifs)
        elif btype == 1:
            if blen < 20:
                raise _Corrupt(off, "idb short")
            lt, _, snap = struct.unpack_from(e + "HHI", buf, off + 8)
            ups, tsoff = 10**6, 0
            p, end = off + 16, off + blen - 4
            while p + 4 <= end:
                code, olen = struct.unpack_from(e + "HH", buf, p)
                val = p + 4
                if code == 0 or val + olen > end:
                    break
                if code == 9 and olen >= 1:
                    r = buf[val]
                    if (r & 0x80 and r & 0x7F > 63) or (not r & 0x80 and r > 19):
                        ups = 2**64 - 1  # does not fit 64 bits: wiretap's "invalid" rate
                    else:
                        ups = 2 ** (r & 0x7F) if r & 0x80 else 10**r
                elif code == 14 and olen >= 8:
                    tsoff, = struct.unpack_from(e + "q", buf, val)
                p = val + olen + (-olen % 4)
            ifs.append((lt, snap, ups, tsoff))
            f.linktypes.append(lt)
        elif btype in (2, 6):
            if blen < 32:
                raise _Corrupt(off, "epb short")
            if btype == 2:
                iface, _, hi, lo, cl, wl = struct.unpack_from(e + "HHIIII", buf, off + 8)
            else:
                iface, hi, lo, cl, wl = struct.unpack_from(e + "IIIII", buf, off + 8)
            if iface >= len(ifs) - sec_base:
                raise _Corrupt(off, "no idb")
            if cl > MAX_CAPLEN or 28 + cl + 4 > blen:
                raise _Corrupt(off, "caplen")
            lt, snap, ups, tsoff = ifs[sec_base + iface]
            units = hi << 32 | lo
            secs = units // ups + tsoff
            ts = 0 if secs < 0 else min(secs * 10**9 + (units % ups) * 10**9 // ups, 2**64 - 1)
            if secs >= (2**64 - 1) // 10**9:
                ts = 2**64 - 1
            last_ts = ts
            f.packets.append(RefPkt(ts, cl, wl, sec_base + iface, buf[off + 28:off + 28 + cl], local_iface=iface))
        elif btype == 3:
            if blen < 16:
                raise _Corrupt(off, "spb short")
            if len(ifs) - sec_base < 1:
                raise _Corrupt(off, "no idb")
            wl, = struct.unpack_from(e + "I", buf, off + 8)
            snap = ifs[sec_base][1]
            cl = snap if snap and snap < wl else wl
            if cl > MAX_CAPLEN or 12 + cl + 4 > blen:
                raise _Corrupt(off, "caplen")
            f.packets.append(RefPkt(last_ts, cl, wl, sec_base, buf[off + 12:off + 12 + cl], spb=True))
        off += blen
    f.at_open = False


# ---------------------------------------------------------------------------------------------
# replay harness: what capfan published, read back by a reliable consumer

@dataclass
class Pkt:
    ts_ns: int
    caplen: int
    wirelen: int
    port: int
    flags: int
    data: bytes


@dataclass
class Replay:
    packets: list[Pkt]
    stats: dict | None
    error: str | None
    at_open: bool = False


class Rig:
    """One ring + producer + reliable consumer, reused for many replays (a file each)."""

    def __init__(self, name="pcap", arena=32 << 20, ndesc=1 << 16, full_policy="block"):
        ringlib.create(name, ndesc=ndesc, arena_bytes=arena, snaplen=RING_SNAPLEN, full_policy=full_policy)
        self.consumer = ringlib.Consumer(name, "check", policy="reliable", stall_budget_us=30_000_000)
        self.producer = ringlib.Producer(name)
        self.name = name

    def drain(self, out: list[Pkt]) -> None:
        """Append every published packet not read yet."""
        while (b := self.consumer.next(timeout=0)) is not None:
            d = b.desc
            wl = b.wirelens()
            for i in range(len(b)):
                out.append(Pkt(int(d["ts_ns"][i]), int(d["caplen"][i]), int(wl[i]), int(d["port"][i]),
                               int(d["flags"][i]), bytes(b.packet(i))))
            b.release()

    def replay(self, path, **opts) -> Replay:
        """Replay a file to its end (or its corruption) and return what the consumer got."""
        out: list[Pkt] = []
        try:
            src = PcapSource(path, **opts)
        except errors.CorruptCapture as e:
            return Replay([], None, str(e), at_open=True)
        error = None
        with src:
            src.prepare(self.producer)
            while True:
                try:
                    n = src.run(self.producer, max_packets=256, duration=30)
                except errors.CorruptCapture as e:
                    error = str(e)
                    break
                self.drain(out)
                if n < 0:
                    break
            self.drain(out)
            return Replay(out, src.stats(), error)

    def close(self):
        """Leave the ring (producer and consumer)."""
        self.producer.close()
        self.consumer.close()


@pytest.fixture
def rig(ring_dir):
    """A Rig in the test's private ring directory."""
    r = Rig()
    yield r
    r.close()


def offset_of(msg: str) -> int:
    """The byte offset an error message names."""
    m = OFFSET_RE.search(msg)
    assert m, f"error message names no byte offset: {msg!r}"
    return int(m.group(1))


def check_against_ref(rep: Replay, ref: RefFile, port_base=0, snaplen=RING_SNAPLEN):
    """capfan's packets equal the reference reader's, byte for byte, and errors agree."""
    assert len(rep.packets) == len(ref.packets)
    for k, (got, want) in enumerate(zip(rep.packets, ref.packets)):
        stored = min(want.caplen, snaplen)
        assert (got.ts_ns, got.caplen, got.wirelen, got.port) == \
            (want.ts_ns, stored, want.wirelen, port_base + want.iface), f"packet {k}"
        assert got.data == want.data[:stored], f"packet {k} bytes"
        assert bool(got.flags & ringlib.F_TRUNCATED) == (stored < want.wirelen), f"packet {k} flags"
    if ref.error is None:
        assert rep.error is None
        assert rep.stats["eof"] == 1
    else:
        assert rep.error is not None, f"expected corruption at {ref.error}"
        assert rep.at_open == ref.at_open
        assert offset_of(rep.error) == ref.error[0], rep.error
    if rep.stats is not None:
        s = rep.stats
        assert s["packets"] == s["published"] == len(ref.packets)
        assert s["bytes"] == sum(p.wirelen for p in ref.packets)
        assert s["truncated"] == sum(1 for p in ref.packets if min(p.caplen, snaplen) < max(p.wirelen, p.caplen))
        assert s["malformed"] == (0 if ref.error is None else 1)


# ---------------------------------------------------------------------------------------------
# tshark oracle

TS_RE = re.compile(r"^(-?\d+)(?:\.(\d+))?$")


def _ns(text: str) -> int | None:
    if not text:
        return None  # no timestamp (simple packet block)
    m = TS_RE.match(text)
    assert m, text
    return int(m.group(1)) * 10**9 + int((m.group(2) or "0").ljust(9, "0")[:9])


@dataclass
class Oracle:
    rows: list[tuple]  # (ts_ns or None, frame.len, frame.cap_len, interface id or None)
    error: str | None


def tshark_read(path) -> Oracle:
    """tshark's view of one file: one row per frame, and its error message if any."""
    r = subprocess.run([need("tshark"), "-n", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch",
                        "-e", "frame.len", "-e", "frame.cap_len", "-e", "frame.interface_id"],
                       capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    rows = []
    for line in r.stdout.splitlines():
        ts, wl, cl, iface = line.split("\t")
        rows.append((_ns(ts), int(wl), int(cl), int(iface) if iface else None))
    err = [ln for ln in r.stderr.splitlines() if ln.strip() and "dangerous" not in ln]
    return Oracle(rows, "\n".join(err) if (err or r.returncode) else None)


def tshark_many(paths) -> list[Oracle]:
    """tshark_read for several files, two tshark processes at a time."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(tshark_read, paths))


def tshark_corpus(files: list[Path], nifaces: dict[Path, int]) -> dict[Path, Oracle]:
    """tshark's view of many files in one tshark run: mergecap concatenates them (-a) keeping
    every interface distinct (-I none), so interface ids map back to files. A file mergecap
    cannot read (tshark would report it corrupt) gets its own tshark run."""
    need("mergecap")
    out: dict[Path, Oracle] = {}
    pending = list(files)
    with tempfile.TemporaryDirectory() as tmp:
        merged = os.path.join(tmp, "all.pcapng")
        while pending:
            r = subprocess.run([need("mergecap"), "-I", "none", "-a", "-F", "pcapng", "-w", merged] +
                               [str(p) for p in pending], capture_output=True, text=True)
            if r.returncode == 0:
                break
            bad = [p for p in pending if f'"{p}"' in r.stderr] or list(pending)
            out.update(zip(bad, tshark_many(bad)))
            pending = [p for p in pending if p not in bad]
        if not pending:
            return out
        whole = tshark_read(merged)
        assert whole.error is None, whole.error
    base, owner = 0, []
    for p in pending:
        owner += [(p, base)] * nifaces[p]
        base += nifaces[p]
    for p in pending:
        out[p] = Oracle([], None)
    if any(iface is None for *_, iface in whole.rows):  # records mergecap could not attribute
        return {**out, **dict(zip(pending, tshark_many(pending)))}
    for ts, wl, cl, iface in whole.rows:
        p, first = owner[iface]
        out[p].rows.append((ts, wl, cl, iface - first))
    return out


def expected_from_tshark(tsh: Oracle, ref: RefFile, pcapng: bool, port_base=0, snaplen=RING_SNAPLEN):
    """What capfan must publish according to tshark: (ts_ns, wirelen, stored caplen, port) per
    packet, and the set of documented deviations from tshark that were applied:
      'custom-block'   tshark 4.0 shows pcapng custom blocks as frames without interface; they
                       carry no packet, capfan skips them;
      'spb-timestamp'  a simple packet block has no timestamp (tshark prints none); capfan gives
                       it the previous packet's timestamp (0 if none) so replays stay in order;
      'section-iface'  tshark 4.0 numbers interfaces inside each section; capfan numbers them
                       across sections so one port never stands for two link types;
      'invalid-fraction' see the module docstring (classic pcap fraction >= 1 s)."""
    rules = set()
    rows = tsh.rows
    if pcapng and any(r[3] is None for r in rows):
        rules.add("custom-block")
        rows = [r for r in rows if r[3] is not None]
    assert len(rows) == len(ref.packets), "tshark and the reference reader see different packet counts"
    out = []
    for (ts, wl, cl, iface), q in zip(rows, ref.packets):
        assert (wl, cl, iface or 0) == (q.wirelen, q.caplen, q.local_iface), "reference reader differs from tshark"
        if q.iface != q.local_iface:
            rules.add("section-iface")
        if ts is None:
            assert q.spb, "tshark shows no timestamp for a packet that has one"
            rules.add("spb-timestamp")
        elif not q.ts_valid:
            rules.add("invalid-fraction")
        else:
            assert ts == q.ts_ns, "reference reader timestamp differs from tshark"
        out.append((q.ts_ns, wl, min(cl, snaplen), port_base + q.iface))
    return out, rules


def check_against_tshark(rep: Replay, tsh: Oracle, ref: RefFile, pcapng: bool, port_base=0) -> set:
    """capfan's packets equal tshark's (up to the documented deviations, returned) and capfan
    reports a corrupt file exactly when tshark does."""
    want, rules = expected_from_tshark(tsh, ref, pcapng, port_base)
    got = [(q.ts_ns, q.wirelen, q.caplen, q.port) for q in rep.packets]
    assert got == want, "packets differ from tshark"
    assert (tsh.error is None) == (rep.error is None), f"tshark: {tsh.error!r}, capfan: {rep.error!r}"
    return rules


# ---------------------------------------------------------------------------------------------
# the corpus

def test_corpus_matches_tshark_and_reference(ring_dir):
    """Every file of the tcpdump corpus: capfan publishes exactly the frames tshark shows
    (count, wire length, stored caplen, timestamp, interface), the bytes the reference reader
    reads, and reports corruption (with its offset) for exactly the files tshark rejects."""
    files = corpus_files()
    refs = {p: ref_read(p.read_bytes()) for p in files}
    oracle: dict = {}
    worker = threading.Thread(target=lambda: oracle.update(
        tshark_corpus(files, {p: len(refs[p].linktypes) for p in files})))
    worker.start()
    rig = Rig()
    replays = {p: rig.replay(p) for p in files}
    rig.close()
    worker.join()
    assert len(oracle) == len(files), "the tshark oracle failed (see the thread's exception above)"
    problems, deviations = [], {}
    for p in files:
        try:
            rules = check_against_tshark(replays[p], oracle[p], refs[p], p.suffix == ".pcapng")
            check_against_ref(replays[p], refs[p])
            if rules:
                deviations[p.name] = rules
        except AssertionError as e:
            problems.append(f"{p.name}: {e}")
    assert not problems, f"{len(problems)} of {len(files)} files disagree:\n" + "\n".join(problems[:20])
    # the only documented deviation the corpus needs, and the files it concerns
    assert deviations == {n: {"invalid-fraction"} for n in (
        "rx_serviceid_oobr.pcap", "timestamp_invalid_micro.pcap", "timestamp_invalid_nano.pcap")}
    assert sum(len(r.packets) for r in replays.values()) > 5000
    big = [q for r in replays.values() for q in r.packets if q.wirelen > 65535]
    assert len(big) > 20 and all(q.caplen <= 65535 and q.flags & ringlib.F_WIRELEN_SAT for q in big)


def test_merged_oracle_equals_direct_tshark():
    """The one-run tshark oracle (mergecap -a -I none) gives what tshark gives per file."""
    files = corpus_files()
    pick = [p for p in files if p.suffix == ".pcapng"][::3] + \
        [p for p in files if p.name in ("afs.pcap", "bigtcp-ipv4.pcap", "huge-tipc-messages.pcap", "empty.pcap")]
    merged = tshark_corpus(pick, {p: len(ref_read(p.read_bytes()).linktypes) for p in pick})
    direct = dict(zip(pick, tshark_many(pick)))
    for p in pick:
        # tshark prints no interface id for classic pcap files; the merged pcapng has id 0
        rows = [(ts, wl, cl, 0 if iface is None and p.suffix == ".pcap" else iface)
                for ts, wl, cl, iface in direct[p].rows]
        assert merged[p] == Oracle(rows, direct[p].error), p.name


# ---------------------------------------------------------------------------------------------
# crafted captures

T0 = 1_600_000_000_123_456_789


def five_packets(step_ns=1_000_000):
    """(ts_ns, frame) of five packets of 60..100 bytes, step_ns apart."""
    return [(T0 + i * step_ns, frame(i, 60 + 10 * i)) for i in range(5)]


def multi_section_pcapng(endian2=">") -> bytes:
    """Two sections (little- then big-endian); interfaces of three link types and resolutions;
    EPB, SPB and OPB packets; ISB, NRB, DSB and custom blocks to skip."""
    return (shb() + idb(1, 0, tsresol=9) + idb(101, 0, tsresol=0x80 | 20, tsoffset=100)
            + epb(0, T0, frame(1)) + spb(frame(2)) + epb(1, (5 << 20) + 12345, frame(3)[14:])
            + ng_block(4, b"\0" * 8) + epb(1, 7 << 20, frame(4)[14:], opb=True)
            + ng_block(5, b"\0" * 16) + ng_block(10, b"\0" * 8) + ng_block(0xBAD, b"abcd")
            + ng_block(0x40000BAD, b"abcd")
            + shb(endian2) + idb(113, 0, endian=endian2) + idb(101, 0, tsresol=3, endian=endian2)
            + epb(1, 1_700_000_000_001, frame(5)[14:], endian=endian2)
            + epb(0, 1_700_000_000_000_001, frame(6), endian=endian2) + spb(frame(7), endian=endian2))


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nsec", [False, True], ids=["usec", "nsec"])
def test_classic_pcap_byte_orders_and_resolutions(rig, tmp_path, endian, nsec):
    """Both byte orders, µs and ns magics: exact timestamps (to the file's resolution), lengths,
    bytes; tshark agrees. The FCS bits in the link-type field are masked off."""
    pk = five_packets(step_ns=1_000_001)
    if not nsec:
        pk = [(ts // 1000 * 1000, d) for ts, d in pk]
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap_bytes(pk, endian=endian, nsec=nsec, linktype=0x1000_0000 | 101))
    rep = rig.replay(path)
    ref = ref_read(path.read_bytes())
    check_against_ref(rep, ref)
    assert [(q.ts_ns, q.data) for q in rep.packets] == pk
    with PcapSource(path) as src:
        assert src.linktype() == 101
    assert rig.consumer.ring.port_linktype(0) == 101
    check_against_tshark(rep, tshark_read(path), ref, pcapng=False)


def test_pcapng_sections_interfaces_and_block_types(rig, tmp_path):
    """Two sections in both byte orders; interfaces with link types 1/101/113, if_tsresol 10^-9,
    2^-20, 10^-3 and if_tsoffset; EPB/SPB/OPB; other blocks skipped. Interface i is port
    port_base + i with its link type; tshark agrees up to the documented deviations."""
    path = tmp_path / "multi.pcapng"
    path.write_bytes(multi_section_pcapng())
    ref = ref_read(path.read_bytes())
    assert ref.error is None and ref.linktypes == [1, 101, 113, 101]
    rep = rig.replay(path, port_base=10)
    check_against_ref(rep, ref, port_base=10)
    assert [q.port for q in rep.packets] == [10, 10, 11, 11, 13, 12, 12]
    assert [q.ts_ns for q in rep.packets] == [
        T0, T0, (5 + 100) * 10**9 + 12345 * 10**9 // 2**20, 107 * 10**9,
        1_700_000_000_001_000_000, 1_700_000_000_000_001_000, 1_700_000_000_000_001_000]
    assert [q.data for q in rep.packets] == [frame(1), frame(2), frame(3)[14:], frame(4)[14:], frame(5)[14:],
                                             frame(6), frame(7)]
    r = rig.consumer.ring
    assert [r.port_linktype(p) for p in (10, 11, 12, 13)] == [1, 101, 113, 101]
    rules = check_against_tshark(rep, tshark_read(path), ref, pcapng=True, port_base=10)
    assert rules == {"custom-block", "spb-timestamp", "section-iface"}


def test_interface_described_mid_file(rig, tmp_path):
    """An IDB after packets: its link type reaches the ring before its first packet."""
    path = tmp_path / "late.pcapng"
    path.write_bytes(shb() + idb(1) + epb(0, 10**15, frame(1)) + idb(228) + epb(1, 10**15 + 1, frame(2)[14:]))
    with PcapSource(path) as src:
        assert src.linktype() == 1
        src.prepare(rig.producer)
        assert src.run(rig.producer, duration=5) == 2
        assert src.linktype(1) == 228
    assert rig.consumer.ring.port_linktype(1) == 228
    out = []
    rig.drain(out)
    assert [q.port for q in out] == [0, 1]


def _damaged() -> dict[str, tuple[bytes, int, int]]:
    """Damaged captures: name -> (bytes, packets before the damage, offset of the bad record)."""
    pk = five_packets()
    base = pcap_bytes(pk)
    rec = [24]
    for _ts, d in pk:
        rec.append(rec[-1] + 16 + len(d))
    out = {}

    def put(name, data, at, n=3):
        out[name] = (bytes(data), n, at)

    put("pcap-cut-in-record-header", base[:rec[3] + 7], rec[3])
    put("pcap-cut-in-packet-data", base[:rec[3] + 16 + 20], rec[3])
    b = bytearray(base)
    struct.pack_into("<I", b, rec[3] + 8, MAX_CAPLEN + 1)
    put("pcap-caplen-over-256k", b, rec[3])
    b = bytearray(base)
    struct.pack_into("<II", b, rec[3] + 8, 70000, 70000)
    put("pcap-caplen-past-eof", b, rec[3])
    put("pcap-trailing-garbage", base + b"\1\2\3\4\5", rec[5], 5)
    blocks = [shb(), idb(1, 0, tsresol=9), idb(101), epb(0, T0, frame(0)), spb(frame(1)),
              epb(1, T0 // 1000, frame(2)[14:], opb=True), epb(0, T0 + 10**8, frame(3)), epb(1, T0 // 1000 + 1, frame(4)[14:])]
    ng = b"".join(blocks)
    at = [0]
    for x in blocks:
        at.append(at[-1] + len(x))
    put("pcapng-cut-in-block", ng[:at[6] + 20], at[6])

    def patched(pos, fmt, *vals):
        b = bytearray(ng)
        struct.pack_into(fmt, b, pos, *vals)
        return b

    put("pcapng-length-not-multiple-of-4", patched(at[6] + 4, "<I", len(blocks[6]) + 2), at[6])
    put("pcapng-length-below-12", patched(at[6] + 4, "<I", 8), at[6])
    put("pcapng-trailer-mismatch", patched(at[7] - 4, "<I", len(blocks[6]) + 4), at[6])
    put("pcapng-interface-without-idb", patched(at[6] + 8, "<I", 7), at[6])
    put("pcapng-caplen-past-block", patched(at[6] + 20, "<I", 200), at[6])
    put("pcapng-caplen-over-256k", patched(at[6] + 20, "<I", MAX_CAPLEN + 1), at[6])
    bad_shb = shb()[:8] + b"\x11\x22\x33\x44" + shb()[12:]
    put("pcapng-bad-byte-order-magic", b"".join(blocks[:6]) + bad_shb + b"".join(blocks[6:]), at[6] + 8)
    put("pcapng-section-version-2", b"".join(blocks[:6]) + shb(major=2) + b"".join(blocks[1:3]), at[6] + 12)
    put("pcapng-spb-without-idb", shb() + spb(frame(1)), len(shb()), 0)
    put("pcapng-trailing-garbage", ng + b"\0\0\0\0", len(ng), 5)
    return out


def test_damaged_files_deliver_everything_before_the_damage(rig, tmp_path):
    """Truncated / corrupt files: the packets before the bad record are delivered, then a
    CorruptCapture names the file and the exact byte offset; tshark also rejects each file after
    the same packets."""
    cases = _damaged()
    paths = []
    for name, (data, n, at) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
        ref = ref_read(data)
        assert (len(ref.packets), ref.error and ref.error[0]) == (n, at), name
        rep = rig.replay(path)
        check_against_ref(rep, ref)
        assert rep.error.startswith("corrupt pcap") and str(path) in rep.error, rep.error
        assert f"at byte offset {at}:" in rep.error
        assert rep.stats["file_offset"] == at and rep.stats["eof"] == 0 and rep.stats["malformed"] == 1
    for path, tsh in zip(paths, tshark_many(paths)):
        assert tsh.error is not None, f"tshark accepts {path.name}"
        check_against_tshark(rig.replay(path), tsh, ref_read(path.read_bytes()), path.name.startswith("pcapng"))


def test_corrupt_error_is_sticky_and_comes_after_the_packets(rig, tmp_path):
    """recv returns the packets before the damage first, then the error on every later call."""
    from capfan._capfan_core import ffi, lib
    data, n, at = _damaged()["pcap-cut-in-packet-data"]
    path = tmp_path / "cut.pcap"
    path.write_bytes(data)
    with PcapSource(path) as src:
        src.prepare(rig.producer)
        assert lib.capfan_source_recv(src._s, rig.producer._p, 1000, 0) == n
        for _ in range(2):
            assert lib.capfan_source_recv(src._s, rig.producer._p, 1000, 0) == -12  # CAPFAN_ECORRUPT
            msg = ffi.string(lib.capfan_last_error()).decode()
            assert f"at byte offset {at}: packet data truncated" in msg
            with pytest.raises(errors.CorruptCapture, match=f"at byte offset {at}"):
                src.run(rig.producer, duration=5)
        assert src.stats()["published"] == n


@pytest.mark.parametrize("data, what", [
    (b"", "empty file"),
    (b"\xd4\xc3", "too short"),
    (b"GIF89a" + b"\0" * 40, "unknown magic"),
    (pcap_bytes([])[:20], "file header truncated"),
    (shb()[:20], "section header|block"),
], ids=["empty", "3-bytes", "bad-magic", "short-header", "short-shb"])
def test_unreadable_file_fails_at_open_with_offset_0(tmp_path, data, what):
    """Nothing to deliver: the error comes from the constructor and names the file and offset 0."""
    path = tmp_path / "bad.cap"
    path.write_bytes(data)
    with pytest.raises(errors.CorruptCapture, match=f"bad.cap at byte offset 0: .*({what})"):
        PcapSource(path)


def test_open_errors_and_option_validation(tmp_path):
    """Missing files, directories and bad options are clear SourceErrors."""
    with pytest.raises(errors.SourceError, match="cannot open capture file .*nope.pcap: No such file"):
        PcapSource(tmp_path / "nope.pcap")
    with pytest.raises(errors.SourceError, match="not a regular file"):
        PcapSource(tmp_path)
    good = tmp_path / "ok.pcap"
    good.write_bytes(pcap_bytes(five_packets()))
    for bad in ("fast", "-1", "0.0.1x", "x", "", "0x1", None, float("nan"), float("inf"), -2, True):
        with pytest.raises(errors.SourceError, match="speed"):
            PcapSource(good, speed=bad)
    for bad in (0, -1, 2**32, 1.5, "3"):
        with pytest.raises(errors.SourceError, match="loops"):
            PcapSource(good, loops=bad)
    with pytest.raises(errors.SourceError, match="port_base"):
        PcapSource(good, port_base=70000)


def test_speed_parsing():
    """'max', '1x', '10x', '0.5x' and numbers."""
    assert parse_speed("max") == parse_speed("MAX") == parse_speed(0) == 0.0
    assert parse_speed("1x") == parse_speed("1") == parse_speed(1) == 1.0
    assert parse_speed("10x") == parse_speed(" 10X ") == 10.0
    assert parse_speed("0.5x") == parse_speed(".5") == 0.5
    assert parse_speed(2.5) == 2.5


def test_registry_opens_pcap_source(tmp_path):
    """open_source('pcap', ...) goes through the backend registry."""
    path = tmp_path / "r.pcap"
    path.write_bytes(pcap_bytes(five_packets()))
    with open_source("pcap", path=str(path), speed="10x", loops=2) as src:
        assert isinstance(src, PcapSource) and src.speed == 10.0 and src.kind == "pcap"
        assert src.file_bytes == path.stat().st_size and src.total_bytes == 2 * src.file_bytes


def test_caplen_beyond_ring_snaplen(ring_dir, tmp_path):
    """Packets longer than the ring's snaplen are cut (flag TRUNCATED, counted); the full wire
    length survives, also above 65535."""
    path = tmp_path / "big.pcap"
    big = bytes(range(256)) * 400  # 102400 bytes
    path.write_bytes(pcap_bytes([(T0, frame(1)), (T0 + 1, frame(2, 200)), (T0 + 2, big, 150000), (T0 + 3, frame(3, 64), 1000)]))
    ringlib.create("small", ndesc=1024, arena_bytes=1 << 20, snaplen=128)
    c = ringlib.Consumer("small", "check")
    with ringlib.Producer("small") as p, PcapSource(path) as src:
        src.prepare(p)
        assert src.run(p, duration=5) == 4
        st = src.stats()
    b = c.next(timeout=1)
    assert b.desc["caplen"].tolist() == [60, 128, 128, 64]
    assert b.wirelens().tolist() == [60, 200, 150000, 1000]
    assert [bool(f & ringlib.F_TRUNCATED) for f in b.desc["flags"]] == [False, True, True, True]
    assert bytes(b.packet(2)) == big[:128]
    assert st["truncated"] == 3 and st["bytes"] == 60 + 200 + 150000 + 1000 and st["published"] == 4
    c.close()


def test_ring_full_with_drop_policy_counts_ring_drops(ring_dir, tmp_path):
    """A reliable consumer that does not read + drop policy: what does not fit is counted as
    ring_drops (source) and dropped_full (ring); the consumer then gets exactly the first ones."""
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap_bytes([(T0 + i * 1000, frame(i)) for i in range(500)]))
    ringlib.create("drop", ndesc=64, arena_bytes=1 << 20, full_policy="drop")
    c = ringlib.Consumer("drop", "slow", policy="reliable", stall_budget_us=60_000_000)
    with ringlib.Producer("drop") as p, PcapSource(path) as src:
        src.prepare(p)
        while src.run(p, duration=5) >= 0:
            pass
        st = src.stats()
        assert (st["packets"], st["published"], st["ring_drops"]) == (500, 64, 436)
        assert p.dropped == 436 and st["eof"] == 1
    got = []
    while (b := c.next(timeout=0)) is not None:
        got += [bytes(b.packet(i)) for i in range(len(b))]
    assert got == [frame(i) for i in range(64)]
    c.close()


def test_loops_repeat_with_increasing_timestamps(rig, tmp_path):
    """loops=N publishes N x the packets; pass n is shifted by n x (last - first + 1 µs), for
    classic pcap and for pcapng (whose interfaces keep their ports)."""
    pk = five_packets()
    span = pk[-1][0] - pk[0][0]
    path = tmp_path / "l.pcap"
    path.write_bytes(pcap_bytes(pk, nsec=True))
    rep = rig.replay(path, loops=3)
    assert [q.data for q in rep.packets] == [d for _ts, d in pk] * 3
    assert [q.ts_ns for q in rep.packets] == [ts + n * (span + 1000) for n in range(3) for ts, _d in pk]
    assert rep.stats["loops_done"] == 3 and rep.stats["packets"] == 15 and rep.stats["eof"] == 1
    ng = tmp_path / "l.pcapng"
    ng.write_bytes(multi_section_pcapng())
    one = rig.replay(ng)
    rep = rig.replay(ng, loops=4)
    assert [q.port for q in rep.packets] == [q.port for q in one.packets] * 4
    ts = [q.ts_ns for q in rep.packets]
    n = len(one.packets)
    for k in range(1, 4):  # every packet of pass k is later than every packet of pass k-1
        assert min(ts[k * n:(k + 1) * n]) > max(ts[(k - 1) * n:k * n])


def test_empty_capture_with_loops_ends(rig, tmp_path):
    """A file without packets ends at once, whatever the number of loops."""
    path = tmp_path / "e.pcap"
    path.write_bytes(pcap_bytes([]))
    rep = rig.replay(path, loops=1_000_000)
    assert rep.packets == [] and rep.error is None and rep.stats["eof"] == 1


def _paced_capture(tmp_path) -> Path:
    """31 packets, 10 ms apart: a 0.3 s capture."""
    path = tmp_path / "paced.pcap"
    path.write_bytes(pcap_bytes([(T0 + i * 10_000_000, frame(i)) for i in range(31)], nsec=True))
    return path


@pytest.mark.parametrize("speed, low, high", [("1x", 0.27, 3.0), ("10x", 0.0, 0.15)])
def test_pacing(rig, tmp_path, speed, low, high):
    """speed 1x replays the 0.3 s capture in >= 0.27 s, 10x in <= 0.15 s."""
    path = _paced_capture(tmp_path)
    with PcapSource(path, speed=speed) as src:
        src.prepare(rig.producer)
        t0 = time.monotonic()
        total = 0
        while (n := src.run(rig.producer, duration=0.05)) >= 0:
            total += n
        elapsed = time.monotonic() - t0
    assert total == 31
    assert low <= elapsed <= high, f"{speed}: {elapsed:.3f} s"


def test_paced_recv_returns_progress(rig, tmp_path):
    """At 1x a short run returns what was due so far (progress), not the whole file."""
    path = _paced_capture(tmp_path)
    with PcapSource(path, speed=1.0) as src:
        src.prepare(rig.producer)
        n = src.run(rig.producer, duration=0.1)
        assert 2 <= n <= 25  # ~10 are due in 0.1 s; never the whole file
        assert 0 < src.progress < 1 and not src.done
        while src.run(rig.producer, duration=0.5) >= 0:
            pass
        assert src.progress == 1.0 and src.done and src.bytes_done == path.stat().st_size


# ---------------------------------------------------------------------------------------------
# fuzz: hypothesis-mutated captures never crash and agree with the reference reader

FUZZ_BASES = {
    "pcap": pcap_bytes(five_packets()),
    "pcap-be-ns": pcap_bytes(five_packets(), endian=">", nsec=True),
    "pcapng": multi_section_pcapng(),
}
INTERESTING = [0, 1, 3, 4, 7, 8, 12, 16, 28, 32, 0xFFFF, 0x10000, MAX_CAPLEN - 1, MAX_CAPLEN, MAX_CAPLEN + 1,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFF, 0x0A0D0D0A, 0x1A2B3C4D, 0x4D3C2B1A]

mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 10**4), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.integers(0, 10**4), st.sampled_from(INTERESTING)),
    st.tuples(st.just("cut"), st.integers(0, 10**4), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**4), st.integers(0, 255)),
)


def mutate(data: bytes, ops) -> bytes:
    """Apply fuzz operations: set a byte, write a 32-bit value (either order), cut, insert."""
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        pos %= len(b)
        if op == "byte":
            b[pos] = val
        elif op == "u32":
            b[pos:pos + 4] = struct.pack("<I" if val & 1 else ">I", val)
        elif op == "cut":
            del b[pos:]
        else:
            b[pos:pos] = bytes([val]) * (1 + val % 8)
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(FUZZ_BASES)), ops=st.lists(mutation, min_size=1, max_size=4),
       loops=st.sampled_from([1, 1, 2]))
def test_fuzzed_captures_match_reference_reader(rig, tmp_path, base, ops, loops):
    """Mutated files (bytes, 32-bit fields, cuts, insertions): capfan never crashes or reads out
    of bounds, delivers exactly the reference reader's packets, and fails at the same offset."""
    data = mutate(FUZZ_BASES[base], ops)
    path = tmp_path / "fuzz.cap"
    path.write_bytes(data)
    ref = ref_read(data)
    rep = rig.replay(path, loops=loops)
    if loops == 1 or ref.error is not None:
        check_against_ref(rep, ref)
    else:
        assert len(rep.packets) == loops * len(ref.packets)
        assert [q.data for q in rep.packets] == [q.data[:RING_SNAPLEN] for q in ref.packets] * loops


# ---------------------------------------------------------------------------------------------
# `capfan replay`

def run_cli(*args):
    """Invoke `capfan replay` with CliRunner."""
    from capfan.replaycli import replay
    return CliRunner().invoke(replay, [str(a) for a in args])


def test_cli_replay_creates_ring_with_file_linktype(ring_dir, tmp_path):
    """A missing ring is created with the file's link type; the summary has the numbers."""
    path = tmp_path / "raw.pcap"
    path.write_bytes(pcap_bytes([(T0 + i, frame(i)[14:]) for i in range(7)], linktype=101))
    res = run_cli(path, "--ring", "cli0", "--loop", "2", "--ndesc", "1K", "--arena", "4M")
    assert res.exit_code == 0, res.output
    assert "created ring cli0" in res.stdout
    assert re.search(r"replayed 14 packets .* into ring cli0 in [\d.]+ s: .*pps.*\(speed max, 2 of 2 passes\)", res.stdout)
    assert "ring drops 0, truncated 0, malformed 0" in res.stdout
    with ringlib.Ring("cli0") as r:
        st = r.stats()
        assert (st["linktype"], st["ndesc"], st["arena_bytes"], st["head"]) == (101, 1024, 4 << 20, 14)


def test_cli_replay_into_existing_ring_json(ring_dir, tmp_path):
    """Into an existing ring, read back by a reliable consumer; --json summary."""
    import json
    path = tmp_path / "x.pcapng"
    path.write_bytes(multi_section_pcapng())
    ringlib.create("cli1", ndesc=1024, arena_bytes=4 << 20)
    c = ringlib.Consumer("cli1", "check")
    res = run_cli(path, "--ring", "cli1", "--no-create", "--json", "--speed", "max")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["packets"], s["published"], s["complete"], s["error"], s["speed"]) == (7, 7, True, None, "max")
    b = c.next(timeout=1)
    assert [bytes(b.packet(i)) for i in range(len(b))] == [q.data for q in ref_read(path.read_bytes()).packets]
    c.close()


def test_cli_corrupt_file_summary_then_error(ring_dir, tmp_path):
    """A truncated file: summary of what was delivered, then the error with the offset, exit 2."""
    data, n, at = _damaged()["pcapng-cut-in-block"]
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data)
    res = run_cli(path, "--ring", "cli2")
    assert res.exit_code == 2
    assert f"replayed {n} packets" in res.stdout and "malformed 1" in res.stdout
    assert f"capfan: error: corrupt pcapng {path} at byte offset {at}: block truncated" in res.stderr
    assert res.output.index("replayed") < res.output.index("corrupt pcapng")


def test_cli_errors(ring_dir, tmp_path):
    """--no-create without the ring, unreadable files, bad --speed: clear messages, non-zero exit."""
    path = tmp_path / "ok.pcap"
    path.write_bytes(pcap_bytes(five_packets()))
    res = run_cli(path, "--ring", "nope", "--no-create")
    assert res.exit_code == 2 and "no ring 'nope'" in res.stderr and "--no-create" in res.stderr
    res = run_cli(tmp_path / "missing.pcap", "--ring", "r")
    assert res.exit_code == 2 and "cannot open capture file" in res.stderr
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    res = run_cli(empty, "--ring", "r")
    assert res.exit_code == 2 and "at byte offset 0: empty file" in res.stderr
    res = run_cli(path, "--ring", "r", "--speed", "fast")
    assert res.exit_code == 2 and "replay speed 'fast' not understood" in res.output
    res = run_cli(path, "--ring", "r", "--loop", "0")
    assert res.exit_code == 2


def test_cli_help():
    """--help explains speeds, loops, ring creation and corrupt files."""
    res = run_cli("--help")
    assert res.exit_code == 0
    for text in ("Replay capture FILE", "--speed", "1x = as recorded", "--loop", "--create / --no-create",
                 "--ndesc", "--arena", "byte", "offset"):
        assert text in res.output, text

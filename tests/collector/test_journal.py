"""The collector's write-ahead journal: round trips across segments, resumable reads, only synced
data visible, release, reopen, kill -9 of a writer, torn tails and corruption."""
import itertools
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest

from capfan.errors import CapfanError
from capfan.collector.journal import Journal, JournalError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def content(i):
    """Deterministic frames of message i (a small header frame and a payload of varying size)."""
    rng = random.Random(i)
    return [f"batch {i}".encode(), rng.randbytes(rng.randrange(0, 3000))]


def segfiles(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".journal"))


def read_all(j, since=None, **kw):
    out = []
    while True:
        got = j.read(since, **kw)
        if not got:
            return out
        out += got
        since = got[-1][0]


def fill(j, n, start=0):
    return [j.append(content(i)) for i in range(start, start + n)]


def test_round_trip_across_segments(tmp_path):
    j = Journal(str(tmp_path / "j"), segment_bytes=20_000, fsync=False)
    pos = fill(j, 300)
    j.sync()
    assert pos == sorted(pos) and len(set(pos)) == 300           # monotonic positions
    assert pos[0] == (1, 0)
    assert len(segfiles(tmp_path / "j")) >= 5
    msgs = read_all(j)
    assert [m[0] for m in msgs] == pos
    assert [m[2] for m in msgs] == [content(i) for i in range(300)]
    for (p, nxt, _), (p2, _, _) in itertools.pairwise(msgs):
        assert nxt[0] == p[0] and nxt[1] > p[1]
        assert p2 == nxt or (p2[0] == p[0] + 1 and p2[1] == 0)   # next record or next segment
    for f in segfiles(tmp_path / "j")[:-1]:                       # no segment exceeds the limit
        assert os.path.getsize(tmp_path / "j" / f) <= 20_000
    st = j.stats()
    assert st["appended"] == st["synced"] == 300
    assert st["segments"] == len(segfiles(tmp_path / "j"))
    assert st["first"] == (1, 0) and st["last"] == pos[-1]
    assert st["bytes"] == sum(os.path.getsize(tmp_path / "j" / f) for f in segfiles(tmp_path / "j"))
    j.close()


def test_read_resumes_exactly_after_position(tmp_path):
    j = Journal(str(tmp_path), segment_bytes=15_000, fsync=False)
    pos = fill(j, 200)
    j.sync()
    # small pieces by count and by bytes give the same sequence
    assert [m[0] for m in read_all(j, max_messages=7)] == pos
    assert [m[0] for m in read_all(j, max_bytes=5000)] == pos
    for k in (0, 1, 57, 120, 198):
        rest = read_all(j, pos[k])
        assert [m[0] for m in rest] == pos[k + 1:]
        assert [m[2] for m in rest] == [content(i) for i in range(k + 1, 200)]
    assert j.read(pos[-1]) == []
    # a message larger than max_bytes still comes, alone
    big = [b"h", os.urandom(100_000)]
    p = j.append(big)
    j.sync()
    got = j.read(pos[-1], max_bytes=10)
    assert got == [(p, (p[0], p[1] + 12 + 8 + 100_001), big)]
    with pytest.raises(JournalError, match="no record at offset 5"):
        j.read((pos[0][0], 5))
    j.close()


def test_only_synced_data_is_visible(tmp_path):
    j = Journal(str(tmp_path), segment_bytes=10_000, fsync=False)
    assert j.read(None) == []
    pos = fill(j, 20)
    assert j.read(None) == []
    assert not j.wait(0.01)
    j.sync()
    assert j.wait(0)
    got = read_all(j)
    assert [m[0] for m in got] == pos
    more = fill(j, 30, start=20)                  # crosses segments, not synced yet
    assert j.read(pos[-1]) == []
    j.sync()
    assert [m[0] for m in read_all(j, pos[-1])] == more
    assert j.stats()["synced"] == 50
    j.close()


def test_concurrent_writer_and_reader(tmp_path):
    j = Journal(str(tmp_path), segment_bytes=50_000, fsync=False)
    n = 2000
    synced_upto = [0]
    errors = []

    def writer():
        for i in range(n):
            j.append(content(i))
            if i % 17 == 16 or i == n - 1:
                j.sync()
                synced_upto[0] = i + 1

    got = []

    def reader():
        since = None
        try:
            while len(got) < n:
                before = synced_upto[0]
                msgs = j.read(since, max_messages=50)
                after = synced_upto[0]
                # never more than what a completed sync covered
                assert len(got) + len(msgs) <= max(after, before) + 17
                got.extend(msgs)
                if msgs:
                    since = msgs[-1][0]
                else:
                    j.wait(0.05)
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert [m[2] for m in got] == [content(i) for i in range(n)]
    j.close()


def test_release_deletes_only_consumed_segments(tmp_path):
    d = tmp_path / "j"
    j = Journal(str(d), segment_bytes=10_000, fsync=False)
    pos = fill(j, 100)
    j.sync()
    nseg = len(segfiles(d))
    assert nseg >= 5
    assert j.release(pos[0]) == 0                 # nothing before segment 1
    k = next(i for i, p in enumerate(pos) if p[0] == 3)   # first record of segment 3
    assert j.release(pos[k]) == 2
    assert segfiles(d)[0] == "00000000000000000003.journal"
    assert len(segfiles(d)) == nseg - 2
    assert [m[2] for m in read_all(j, pos[k])] == [content(i) for i in range(k + 1, 100)]
    assert [m[0] for m in read_all(j)] == pos[k:]   # None: from the first kept segment
    with pytest.raises(JournalError, match="already released"):
        j.read(pos[0])
    # never the segment being written, even with a position beyond it
    assert j.release((10**6, 0)) == nseg - 3
    assert segfiles(d) == [f"{pos[-1][0]:020d}.journal"]
    st = j.stats()
    assert st["segments"] == 1 and st["first"] == (pos[-1][0], 0)
    p = j.append(content(100))
    j.sync()
    assert read_all(j, pos[-1]) == [(p, (p[0], p[1] + 12 + 8 + sum(map(len, content(100)))),
                                     content(100))]
    j.close()
    j = Journal(str(d), segment_bytes=10_000, fsync=False)   # reopens after a release
    assert [m[0] for m in read_all(j)] == [q for q in pos if q[0] == p[0]] + [p]
    j.close()


def test_reopen_resumes_after_last_record(tmp_path):
    d = str(tmp_path / "j")
    j = Journal(d, segment_bytes=8_000)
    pos = fill(j, 40)
    j.sync()
    j.close()
    j.close()                                     # idempotent
    with pytest.raises(JournalError):
        j.append(content(0))
    j = Journal(d, segment_bytes=8_000)
    st = j.stats()
    assert st["last"] == pos[-1] and st["appended"] == 0 and st["cut_bytes"] == 0
    more = fill(j, 40, start=40)
    assert more[0] > pos[-1] and more == sorted(more)
    j.sync()
    assert [m[2] for m in read_all(j)] == [content(i) for i in range(80)]
    assert [m[0] for m in read_all(j, pos[-1])] == more
    j.close()


def test_second_writer_is_refused(tmp_path):
    j = Journal(str(tmp_path), fsync=False)
    with pytest.raises(JournalError, match="in use"):
        Journal(str(tmp_path), fsync=False)
    j.close()
    Journal(str(tmp_path), fsync=False).close()


def test_failed_fsync_stops_the_writer(tmp_path, monkeypatch):
    from capfan.collector import journal as jmod
    d = str(tmp_path / "j")
    j = Journal(d, segment_bytes=10_000)
    pos = fill(j, 5)
    j.sync()
    fill(j, 3, start=5)

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(jmod, "_fdatasync", eio)
    with pytest.raises(JournalError, match="fsync failed"):
        j.sync()
    monkeypatch.undo()
    with pytest.raises(JournalError, match="fsync failed"):   # no retry that "succeeds"
        j.sync()
    with pytest.raises(JournalError, match="fsync failed"):
        j.append(content(9))
    assert [m[0] for m in read_all(j)] == pos              # the unsynced ones never visible
    j.close()
    j = Journal(d, segment_bytes=10_000)
    assert len(read_all(j)) >= 5
    j.close()


def test_journal_error_is_a_capfan_error():
    assert issubclass(JournalError, CapfanError)


def test_bad_messages_are_refused(tmp_path):
    j = Journal(str(tmp_path), fsync=False)
    with pytest.raises(JournalError):
        j.append([])
    assert j.append([b""]) == (1, 0)              # an empty frame is fine
    j.sync()
    assert j.read(None)[0][2] == [b""]
    j.close()


CHILD = r"""
import sys
from capfan.collector.journal import Journal
from tests.collector.test_journal import content
j = Journal(sys.argv[1], segment_bytes=int(sys.argv[2]))
i = 0
while True:
    group = [(i + k, j.append(content(i + k))) for k in range(7)]
    i += 7
    j.sync()
    for n, (seg, off) in group:
        print(n, seg, off, flush=True)
"""


def test_kill_9_loses_no_synced_message(tmp_path):
    d = str(tmp_path / "j")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, d, "30000"], stdout=subprocess.PIPE,
                            env=env, cwd=REPO, text=True)
    printed = []
    deadline = time.monotonic() + 10
    try:
        while len(printed) < 700 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            n, seg, off = map(int, line.split())
            printed.append((n, (seg, off)))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert len(printed) >= 700, f"child printed only {len(printed)} positions"
    assert [n for n, _ in printed] == list(range(len(printed)))

    # the crash left at most a partly written record at the end; make it a torn write for sure
    last = max(f for f in os.listdir(d) if f.endswith(".journal"))
    with open(os.path.join(d, last), "ab") as f:
        f.write(b"CFJ1" + b"\x00" * 9)
    j = Journal(d, segment_bytes=30000)
    assert j.stats()["cut_bytes"] >= 13
    msgs = read_all(j)
    assert len(msgs) >= len(printed)              # every synced one, maybe some unsynced after
    assert [m[2] for m in msgs] == [content(i) for i in range(len(msgs))]
    by_pos = {m[0]: m[2] for m in msgs}
    for n, p in printed:
        assert by_pos[p] == content(n)
    # appends resume after the last complete record, nothing of the torn write is returned
    p = j.append([b"after"])
    j.sync()
    assert p > msgs[-1][0]
    assert j.read(msgs[-1][0]) == [(p, (p[0], p[1] + 12 + 4 + 5), [b"after"])]
    j.close()


def _record(frames, crc=None):
    lens = struct.pack(f"<{len(frames)}I", *map(len, frames))
    body = struct.pack("<I", len(frames)) + lens + b"".join(frames)
    c = zlib.crc32(body, zlib.crc32(b"CFJ1")) if crc is None else crc
    return b"CFJ1" + struct.pack("<I", c) + body


@pytest.mark.parametrize("tail,what", [
    (lambda: _record([b"abc", b"x" * 100])[:7], "partial header"),
    (lambda: _record([b"abc", b"x" * 100])[:15], "partial header"),
    (lambda: _record([b"abc", b"x" * 100])[:60], "partial frames"),
    (lambda: _record([b"abc", b"x" * 100], crc=1234), "bad CRC"),
    (lambda: b"\x00" * 4096, "bad magic"),
])
def test_torn_tail_is_cut_and_reported(tmp_path, caplog, tail, what):
    d = str(tmp_path / "j")
    j = Journal(d, segment_bytes=20_000, fsync=False)
    pos = fill(j, 30)
    j.sync()
    size_before = j.stats()["synced_position"][1]
    j.close()
    seg = os.path.join(d, f"{pos[-1][0]:020d}.journal")
    assert os.path.getsize(seg) == size_before
    junk = tail()
    with open(seg, "ab") as f:
        f.write(junk)
    with caplog.at_level(logging.WARNING, logger="capfan.collect.journal"):
        j = Journal(d, segment_bytes=20_000, fsync=False)
    msg = "\n".join(r.getMessage() for r in caplog.records)
    assert f"cut a torn tail of {len(junk)} bytes at offset {size_before}" in msg
    assert what in msg and seg in msg
    assert os.path.getsize(seg) == size_before
    assert j.stats()["cut_bytes"] == len(junk)
    assert [m[2] for m in read_all(j)] == [content(i) for i in range(30)]
    p = j.append([b"next"])
    assert p == (pos[-1][0], size_before)
    j.close()


def test_empty_last_segment_is_dropped(tmp_path):
    d = tmp_path / "j"
    j = Journal(str(d), segment_bytes=10_000, fsync=False)
    pos = fill(j, 30)
    j.sync()
    j.close()
    empty = d / f"{pos[-1][0] + 1:020d}.journal"
    empty.write_bytes(b"")                        # created by a roll just before a crash
    j = Journal(str(d), segment_bytes=10_000, fsync=False)
    assert not empty.exists()
    assert j.stats()["last"] == pos[-1]
    assert [m[0] for m in read_all(j)] == pos
    j.close()


def test_corrupt_record_before_a_valid_one_is_an_error(tmp_path):
    d = str(tmp_path / "j")
    j = Journal(d, segment_bytes=10_000, fsync=False)
    pos = fill(j, 40)
    while pos[-2][0] != pos[-1][0]:               # at least 2 records in the last segment
        pos.append(j.append(content(len(pos))))
    j.sync()
    j.close()
    # in the last segment: found on open
    seg, off = pos[-2]
    path = os.path.join(d, f"{seg:020d}.journal")
    with open(path, "r+b") as f:
        f.seek(off + 20)
        b = f.read(1)
        f.seek(off + 20)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(JournalError) as e:
        Journal(d, segment_bytes=10_000, fsync=False)
    assert path in str(e.value) and f"offset {off}" in str(e.value) and "bad CRC" in str(e.value)
    with open(path, "r+b") as f:                  # repair it
        f.seek(off + 20)
        f.write(b)
    # in an earlier segment: found by read, nothing after it is skipped silently
    seg, off = pos[3]
    assert seg == 1 and pos[4][0] == 1
    path = os.path.join(d, f"{seg:020d}.journal")
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"XXXX")
    j = Journal(d, segment_bytes=10_000, fsync=False)
    with pytest.raises(JournalError) as e:
        read_all(j)
    assert path in str(e.value) and f"offset {off}" in str(e.value)
    assert [m[0] for m in j.read(None, max_messages=3)] == pos[:3]   # before it: fine
    j.close()


def test_missing_segment_is_an_error(tmp_path):
    d = tmp_path / "j"
    j = Journal(str(d), segment_bytes=5_000, fsync=False)
    fill(j, 40)
    j.sync()
    j.close()
    os.unlink(d / segfiles(d)[2])
    with pytest.raises(JournalError, match="missing"):
        Journal(str(d), fsync=False)


def test_measure_append_throughput(tmp_path):
    from capfan.collector.journal import measure
    r = measure(str(tmp_path), messages=256, message_bytes=350_000, rounds=2)
    print(f"\njournal: 256 x 350 KB per group: append {r['append_MBps']:,.0f} MB/s, "
          f"append+sync {r['append_sync_MBps']:,.0f} MB/s, fsync share {r['sync_share']:.0%} "
          f"(per group: append {r['append_ms_per_group']:.1f} ms of which CPU "
          f"{r['append_cpu_ms_per_group']:.1f} ms, CRC {r['crc_ms_per_group']:.1f} ms; "
          f"sync {r['sync_ms_per_group']:.1f} ms)")
    assert r["append_MBps"] > 200

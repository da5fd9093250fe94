"""recorder analyzer (capfan/analyzers/recorder.py + capfan/_core/pcapwrite.c).

Sample captures are replayed through a ring into a Recorder driven by hand (start, on_batch,
on_tick, stop); the files it leaves are read back with tshark (frame bytes, lengths, ns
timestamps, link types) and tcpdump, and compared with what tshark/tcpdump read from the input.
The ring stores at most 65535 bytes of a packet, so longer input frames are expected cut to
65535 bytes with their wire length kept.
"""
from __future__ import annotations

import itertools
import json
import shutil
import struct
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from capfan import errors
from capfan import ring as ringlib
from capfan.analyzers import Context, validate_options
from capfan.analyzers.recorder import Recorder
from capfan.sources.pcap import PcapSource
from tests.conftest import PCAPS

RING_SNAPLEN = 65535
_names = itertools.count()


def need(tool: str) -> str:
    """Path of a capture tool; a missing one fails the test (CI installs tshark and tcpdump)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: install tshark / tcpdump (wireshark-common) to run the recorder tests")
    return path


def sample(name: str) -> Path:
    """A capture of the shared corpus; a missing corpus fails the test."""
    p = PCAPS / name
    if not p.exists():
        pytest.fail(f"sample capture {p} not found (set CAPFAN_PCAPS to the shared pcaps directory)")
    return p


@dataclass(frozen=True)
class Frame:
    """One packet as tshark reads it."""
    encap: int      # wiretap encapsulation (tells link types apart)
    wirelen: int
    caplen: int
    ts_ns: int
    data: bytes


def tshark_frames(path) -> list[Frame]:
    """Every packet of a capture file as tshark reads it (fails on a file tshark rejects)."""
    r = subprocess.run([need("tshark"), "-n", "-r", str(path), "-T", "json", "-x", "-j", "frame"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"tshark cannot read {path}: {r.stderr}"
    out = []
    for pkt in json.loads(r.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        fr = layers["frame"]
        raw = layers.get("frame_raw", [""])[0]
        ts = Decimal(fr["frame.time_epoch"])
        out.append(Frame(int(fr["frame.encap_type"]), int(fr["frame.len"]), int(fr["frame.cap_len"]),
                         int(ts * 1_000_000_000), bytes.fromhex(raw)))
    return out


def through_ring(frames: list[Frame], snaplen=RING_SNAPLEN) -> list[Frame]:
    """What a lossless recording of `frames` must hold: bytes cut to snaplen, wire length kept."""
    return [Frame(f.encap, f.wirelen, min(f.caplen, snaplen), f.ts_ns, f.data[:snaplen]) for f in frames]


def tcpdump_text(path, *filter_expr) -> list[str]:
    """tcpdump's decode with ns timestamps and hex of every packet."""
    r = subprocess.run([need("tcpdump"), "-r", str(path), "-nn", "-tt", "--time-stamp-precision=nano", "-xx",
                        *filter_expr], capture_output=True, text=True)
    assert r.returncode == 0, f"tcpdump cannot read {path}: {r.stderr}"
    return r.stdout.splitlines()


def pcap_header(path) -> tuple[int, int, int]:
    """(magic, snaplen, linktype) of a classic pcap file written in host (little) byte order."""
    with open(path, "rb") as f:
        magic, _maj, _min, _tz, _sf, snaplen, linktype = struct.unpack("<IHHiIII", f.read(24))
    return magic, snaplen, linktype


class FakeClock:
    """Wall clock under the test's control (ns)."""

    def __init__(self, t_ns=1_700_000_000 * 10**9):
        self.t = t_ns

    def __call__(self):
        return self.t


class Rig:
    """A ring with a producer and a consumer feeding a Recorder by hand."""

    def __init__(self, linktype=1, policy="reliable", ndesc=1 << 16, arena=64 << 20, clock=None, **opts):
        self.name = f"rec{next(_names)}"
        ringlib.create(self.name, ndesc=ndesc, arena_bytes=arena, linktype=linktype, snaplen=RING_SNAPLEN)
        self.consumer = ringlib.Consumer(self.name, "recorder", policy=policy, stall_budget_us=60_000_000)
        self.producer = ringlib.Producer(self.name)
        self.rec = Recorder(clock=clock) if clock else Recorder()
        config = validate_options("recorder", Recorder.options, opts)
        self.rec.start(Context("recorder", config, self.name, consumer=self.consumer))

    def drain(self) -> int:
        """Hand every batch waiting in the ring to the recorder; returns the packets seen."""
        n = 0
        while (b := self.consumer.next(timeout=0)) is not None:
            n += len(b)
            self.rec.on_batch(b)
            b.release()
        return n

    def replay(self, path) -> dict:
        """Replay a capture file to its end (or its corruption) through the recorder."""
        with PcapSource(path) as src:
            src.prepare(self.producer)
            while True:
                try:
                    n = src.run(self.producer, max_packets=256, duration=30)
                except errors.CorruptCapture:
                    n = -1
                self.drain()
                if n < 0:
                    return src.stats()

    def close(self):
        """Stop the recorder and leave the ring."""
        self.rec.stop()
        self.producer.close()
        self.consumer.close()


def record(path, out_dir, **opts) -> tuple[Recorder, list[Path]]:
    """Replay `path` through a recorder writing to out_dir; returns it and its files in order."""
    with PcapSource(path) as src:
        linktype = src.linktype()
    rig = Rig(linktype=linktype, dir=str(out_dir), **opts)
    try:
        rig.replay(path)
    finally:
        rig.close()
    return rig.rec, sorted(out_dir.iterdir())


# ---------------------------------------------------------------------------------------------
# round trips

ROUND_TRIP = [
    "dns_udp.pcap",                 # plain Ethernet, µs pcap
    "of13_ericsson.pcapng",         # pcapng, 174 packets up to 11858 bytes
    "huge-tipc-messages.pcap",      # frames above 65535 bytes: cut to the ring's 65535
    "bigtcp-ipv4.pcap",             # "big TCP" GSO frame of 80066 bytes (wire length > 65535)
    "gso-ipv4-vxlan-ipv4.pcap",     # GSO super-packet
    "msnlb2.pcapng",                # captured with a 20-byte snaplen (caplen < wire length)
    "bgp-role.pcapng",              # Linux cooked (SLL) link type
    "LINKTYPE_RAW_ipv4.pcap",       # raw IP link type
]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_equals_input(ring_dir, tmp_path, name, fmt):
    src = sample(name)
    rec, files = record(src, tmp_path / "out", format=fmt)
    assert len(files) == 1 and files[0].suffix == f".{fmt}"
    expected = through_ring(tshark_frames(src))
    got = tshark_frames(files[0])
    assert got == expected
    st = rec.stats()
    assert st["packets"] == len(expected) and st["files"] == 1
    assert st["torn"] == st["filtered"] == st["skipped_linktype"] == 0
    assert st["bytes"] == files[0].stat().st_size
    if fmt == "pcap":
        magic, snaplen, linktype = pcap_header(files[0])
        assert (magic, snaplen) == (0xA1B23C4D, 65535)
        with PcapSource(src) as s:
            assert linktype == s.linktype()


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("name", ["dns_udp.pcap", "of13_ericsson.pcapng", "msnlb2.pcapng", "dns_tcp.pcap"])
def test_tcpdump_reads_the_same_packets(ring_dir, tmp_path, name, fmt):
    src = sample(name)
    _, files = record(src, tmp_path / "out", format=fmt)
    assert tcpdump_text(files[0]) == tcpdump_text(src)


def test_big_frames_keep_wire_length_above_65535(ring_dir, tmp_path):
    src = sample("bigtcp-ipv4.pcap")
    _, files = record(src, tmp_path / "out", format="pcapng")
    (f,) = tshark_frames(files[0])
    assert f.wirelen == 80066 and f.caplen == 65535


def test_multi_interface_pcapng_keeps_every_link_type(ring_dir, tmp_path):
    merged = tmp_path / "multi.pcapng"
    parts = [sample(n) for n in ("dns_udp.pcap", "bgp-role.pcapng", "LINKTYPE_RAW_ipv4.pcap",
                                 "ikev2pI2-segfault.pcapng")]
    subprocess.run([need("mergecap"), "-a", "-F", "pcapng", "-w", str(merged), *map(str, parts)], check=True)
    expected = through_ring(tshark_frames(merged))
    assert len({f.encap for f in expected}) == 4  # Ethernet, SLL, raw IP, BSD null

    rec, files = record(merged, tmp_path / "ng", format="pcapng")
    assert tshark_frames(files[0]) == expected
    info = subprocess.run([need("capinfos"), str(files[0])], capture_output=True, text=True, check=True).stdout
    assert info.count("Interface #") == 4

    # pcap holds one link type: the first packet's; the others are skipped and counted
    rec, files = record(merged, tmp_path / "pcap", format="pcap")
    first = [f for f in expected if f.encap == expected[0].encap]
    assert tshark_frames(files[0]) == first
    assert rec.stats()["skipped_linktype"] == len(expected) - len(first) > 0
    assert pcap_header(files[0])[2] == 1


def test_microsecond_pcap(ring_dir, tmp_path):
    src = sample("of13_ericsson.pcapng")
    _, files = record(src, tmp_path / "out", tstamp="us")
    assert pcap_header(files[0])[0] == 0xA1B2C3D4
    expected = [Frame(f.encap, f.wirelen, f.caplen, f.ts_ns // 1000 * 1000, f.data) for f in tshark_frames(src)]
    assert tshark_frames(files[0]) == expected


def test_nanosecond_timestamps_survive(ring_dir, tmp_path):
    """Timestamps with odd nanoseconds (not µs multiples) come back exactly in both formats."""
    frames = [bytes(range(i, i + 60)) for i in range(5)]
    ts = [1_700_000_000_123_456_789 + i * 1_000_000_007 for i in range(5)]
    for fmt in ("pcap", "pcapng"):
        out = tmp_path / fmt
        rig = Rig(dir=str(out), format=fmt)
        rig.producer.publish(frames, ts_ns=ts)
        rig.drain()
        rig.close()
        got = tshark_frames(next(out.iterdir()))
        assert [f.ts_ns for f in got] == ts
        assert [f.data for f in got] == frames


def test_snaplen_cuts_bytes_but_keeps_wire_length(ring_dir, tmp_path):
    src = sample("of13_ericsson.pcapng")
    for fmt in ("pcap", "pcapng"):
        _, files = record(src, tmp_path / fmt, format=fmt, snaplen=64)
        assert tshark_frames(files[0]) == through_ring(tshark_frames(src), snaplen=64)
    assert pcap_header(next((tmp_path / "pcap").iterdir()))[1] == 64


# ---------------------------------------------------------------------------------------------
# filter

def test_filter_equals_tcpdump(ring_dir, tmp_path):
    merged = tmp_path / "dns.pcap"
    subprocess.run([need("mergecap"), "-a", "-F", "pcap", "-w", str(merged),
                    str(sample("dns_udp.pcap")), str(sample("dns_tcp.pcap")), str(sample("of13_ericsson.pcapng"))],
                   check=True)
    expected = tcpdump_text(merged, "tcp port 53")
    assert 0 < sum(1 for line in expected if not line.startswith("\t")) < len(tshark_frames(merged))
    for fmt in ("pcap", "pcapng"):
        rec, files = record(merged, tmp_path / fmt, format=fmt, filter="tcp port 53")
        if fmt == "pcap":
            assert tcpdump_text(files[0]) == expected
        st = rec.stats()
        assert st["packets"] == sum(1 for line in expected if not line.startswith("\t"))
        assert st["packets"] + st["filtered"] == len(tshark_frames(merged))
        assert len(tshark_frames(files[0])) == st["packets"]


def test_bad_filter_is_a_config_error_naming_filter(ring_dir, tmp_path):
    with pytest.raises(errors.ConfigError) as e:
        Rig(dir=str(tmp_path), filter="tcp port banana")
    assert e.value.key == "filter"
    assert "banana" in str(e.value)


@pytest.mark.parametrize("key,value", [("format", "pcapx"), ("tstamp", "ms"), ("snaplen", "0"),
                                       ("snaplen", "70000"), ("rotate_size", "12Q"), ("max_files", "-1"),
                                       ("rotate_seconds", "-5"), ("nonsense", "1")])
def test_bad_options_name_their_key(key, value):
    with pytest.raises(errors.ConfigError) as e:
        validate_options("recorder", Recorder.options, {key: value})
    assert e.value.key == key


def test_options_are_typed():
    cfg = validate_options("recorder", Recorder.options, {"rotate_size": "2M", "rotate_seconds": "1.5",
                                                         "max_files": "3", "format": "PCAPNG", "snaplen": "96"})
    assert cfg["rotate_size"] == 2 << 20 and cfg["rotate_seconds"] == 1.5 and cfg["max_files"] == 3
    assert cfg["format"] == "pcapng" and cfg["snaplen"] == 96
    assert Recorder.policy == "lossy"
    assert validate_options("recorder", Recorder.options, {})["rotate_size"] == 1 << 30


# ---------------------------------------------------------------------------------------------
# rotation

@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_rotation_by_size(ring_dir, tmp_path, fmt):
    src = sample("pim-packet-assortment.pcap")  # 245 packets, one of them 65589 bytes
    limit = 16 << 10
    rec, files = record(src, tmp_path / "out", format=fmt, rotate_size=str(limit))
    assert len(files) > 5
    assert all(not f.name.endswith(".part") for f in files)
    got = []
    for f in files:
        frames = tshark_frames(f)   # every piece opens cleanly on its own
        assert frames
        assert f.stat().st_size <= limit or len(frames) == 1
        got += frames
    assert got == through_ring(tshark_frames(src))
    merged = tmp_path / "merged.pcapng"
    subprocess.run([need("mergecap"), "-a", "-w", str(merged), *map(str, files)], check=True)
    assert tshark_frames(merged) == got
    assert rec.stats()["files"] == len(files)
    assert sum(f.stat().st_size for f in files) == rec.stats()["bytes"]


def test_rotation_by_time_with_on_tick(ring_dir, tmp_path):
    clock = FakeClock()
    out = tmp_path / "out"
    rig = Rig(dir=str(out), rotate_seconds="10", clock=clock)
    first = [bytes([i]) * 60 for i in range(3)]
    second = [bytes([0x80 + i]) * 70 for i in range(4)]
    rig.producer.publish(first)
    rig.drain()
    rig.rec.on_tick(clock.t + 9 * 10**9)          # not yet
    assert [p.name.endswith(".part") for p in out.iterdir()] == [True]
    clock.t += 10 * 10**9
    rig.rec.on_tick(clock.t)                      # idle, but the file's time is up
    done = [p for p in out.iterdir() if not p.name.endswith(".part")]
    assert len(done) == 1 and [f.data for f in tshark_frames(done[0])] == first
    clock.t += 25 * 10**9
    rig.rec.on_tick(clock.t)                      # idle period without packets: no empty file kept
    assert [p for p in out.iterdir() if not p.name.endswith(".part")] == done
    rig.producer.publish(second)
    rig.drain()
    rig.close()
    files = sorted(out.iterdir())
    assert len(files) == 2 and files[0] == done[0]
    assert [f.data for f in tshark_frames(files[1])] == second
    # names: prefix, UTC open time, index; they sort in writing order
    assert files[0].name == "capfan-20231114-221320-0000.pcap"
    assert files[1].name == "capfan-20231114-221355-0002.pcap"  # opened at the last rotation
    assert rig.rec.stats()["files"] == 2


def test_max_files_deletes_the_oldest(ring_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    older = out / "cap-20000101-000000-0000.pcap"    # an earlier run's file counts too
    older.write_bytes(b"")
    unrelated = out / "other-20000101-000000-0000.pcap"
    unrelated.write_bytes(b"")
    src = sample("of13_ericsson.pcapng")
    rec, files = record(src, out, prefix="cap", rotate_size="8K", max_files="3")
    assert rec.stats()["files"] > 3
    files = [f for f in files if f != unrelated]
    assert len(files) == 3 and older not in files
    assert unrelated.exists()
    kept = [fr for f in files for fr in tshark_frames(f)]
    expected = tshark_frames(src)
    assert kept == expected[len(expected) - len(kept):]  # the newest packets survive


def test_empty_run_leaves_one_valid_file(ring_dir, tmp_path):
    for fmt in ("pcap", "pcapng"):
        out = tmp_path / fmt
        rig = Rig(dir=str(out), format=fmt)
        rig.close()
        (f,) = out.iterdir()
        assert tshark_frames(f) == []
        assert rig.rec.stats()["files"] == 1


def test_unwritable_dir_is_a_config_error(ring_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(errors.ConfigError) as e:
        Rig(dir=str(blocker / "sub"))
    assert e.value.key == "dir"


# ---------------------------------------------------------------------------------------------
# lossy consumer overrun

def numbered(i: int, size: int = 100) -> bytes:
    """A frame that says which packet it is (seq in the first 8 bytes, then a pattern of it)."""
    return struct.pack("<Q", i) + bytes((i * 7 + k) & 0xFF for k in range(size - 8))


def intact(frame: Frame) -> int:
    """The number a `numbered` frame carries; asserts the rest of it is untouched."""
    i = struct.unpack("<Q", frame.data[:8])[0]
    assert frame.data == numbered(i, len(frame.data)), "a torn packet reached the file"
    assert frame.ts_ns == 1_000_000_000 * (1_700_000_000 + i)
    return i


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_lapped_lossy_consumer_never_writes_torn_packets(ring_dir, tmp_path, fmt):
    ndesc = 64
    out = tmp_path / "out"
    rig = Rig(dir=str(out), format=fmt, policy="lossy", ndesc=ndesc, arena=1 << 20)
    seq = itertools.count()

    def publish(n):
        ids = [next(seq) for _ in range(n)]
        rig.producer.publish([numbered(i) for i in ids], ts_ns=[10**9 * (1_700_000_000 + i) for i in ids])

    publish(ndesc)                        # fill the ring
    b = rig.consumer.next(timeout=1)
    assert len(b) == ndesc
    publish(20)                           # overwrite the batch's first 20 packets before they are read
    rig.rec.on_batch(b)
    assert rig.rec.stats()["torn"] == 20 and rig.rec.stats()["packets"] == ndesc - 20
    b.release()

    b = rig.consumer.next(timeout=1)      # the 20 new ones
    publish(3 * ndesc)                    # lap the reader completely: the whole batch is gone
    rig.rec.on_batch(b)
    assert rig.rec.stats()["torn"] == 20 + len(b)
    b.release()
    rig.drain()                           # the consumer skips ahead to what is still in the ring
    ring_view = rig.consumer.stats()
    rig.close()

    written = [intact(f) for f in tshark_frames(next(out.iterdir()))]
    assert written == sorted(set(written))
    assert written[:ndesc - 20] == list(range(20, ndesc))
    st = rig.rec.stats()
    assert st["packets"] == len(written)
    assert st["torn"] == ring_view["torn"]          # the ring counted the same torn packets
    assert ring_view["dropped"] > ring_view["torn"]  # plus the lapped ones it skipped


def test_torn_packets_cut_out_around_a_new_interface_block(ring_dir, tmp_path):
    """The first packet of port 1 brings its IDB into the buffer; when that packet is torn the
    IDB must stay (later port-1 packets refer to it) while the packet goes."""
    ndesc = 64
    out = tmp_path / "out"
    rig = Rig(dir=str(out), format="pcapng", policy="lossy", ndesc=ndesc, arena=1 << 20)
    rig.producer.set_linktype(1, 101)  # port 1: raw IP

    def publish(ids, port):
        rig.producer.publish([numbered(i) for i in ids], ts_ns=[10**9 * (1_700_000_000 + i) for i in ids],
                             port=port)

    publish(range(0, 10), 0)
    publish(range(10, ndesc), 1)
    b = rig.consumer.next(timeout=1)
    assert len(b) == ndesc
    publish(range(ndesc, ndesc + 15), 0)   # tears packets 0..14: port 0's and port 1's first ones
    rig.rec.on_batch(b)
    b.release()
    rig.drain()
    rig.close()
    frames = tshark_frames(next(out.iterdir()))
    assert [intact(f) for f in frames] == list(range(15, ndesc + 15))
    encaps = [f.encap for f in frames]
    assert encaps[:ndesc - 15] == [encaps[0]] * (ndesc - 15) and encaps[-1] != encaps[0]
    assert rig.rec.stats()["torn"] == 15

"""The flow meter on hostile input: random bytes, mutated real packets and every sample
capture. It must never crash, and account for every packet exactly once:
packets == ip_packets + non_ip + sum(bad), with every metered packet in some record."""
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capfan import errors
from capfan import ring as ringlib
from capfan.flowtable import FlowTable
from capfan.sources.pcap import PcapSource
from tests.conftest import PCAPS

LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147]
DECAPS = [(), ("mpls", "gre", "vxlan")]


def check_accounting(t: FlowTable) -> dict:
    """Flush the table and check the accounting identity; returns the stats."""
    t.flush()
    recs = t.drain()
    s = t.stats()
    assert s["packets"] == s["ip_packets"] + s["non_ip"] + sum(s["bad"].values()), s
    assert int(recs["packetDeltaCount"].sum() + recs["reversePacketDeltaCount"].sum()) == s["ip_packets"]
    assert s["flows_active"] == 0 and s["records_pending"] == 0 and s["records_lost"] == 0
    return s


def feed_frames(t: FlowTable, frames, linktype, wirelens=None, ts=None) -> int:
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    offs = np.zeros(len(frames), dtype=np.uint64)
    np.cumsum(lens[:-1], out=offs[1:])
    buf = b"".join(frames) or b"\0"
    return t.add_packets(buf, offs, lens, wirelens=wirelens, ts_ns=ts, linktype=linktype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=40),
       linktype=st.sampled_from(LINKTYPES), decap=st.sampled_from(DECAPS),
       extra=st.integers(0, 70000))
def test_random_bytes_never_crash_and_are_accounted(frames, linktype, decap, extra):
    t = FlowTable(max_flows=8, max_fragments=4, decap=decap, end_linger=0)
    wl = [len(f) + extra % (len(f) + 1) for f in frames]
    ts = [10**18 + i * 10**6 for i in range(len(frames))]
    feed_frames(t, frames, linktype, wirelens=wl, ts=ts)
    check_accounting(t)


class Rig:
    """A ring with a reliable consumer and a producer, reused for every sample file."""

    def __init__(self):
        ringlib.create("fuzz", ndesc=1 << 14, arena_bytes=32 << 20)
        self.consumer = ringlib.Consumer("fuzz", "fm", policy="reliable", stall_budget_us=30_000_000)
        self.producer = ringlib.Producer("fuzz")

    def replay(self, path, table: FlowTable, keep: list, keep_per_file: int) -> int:
        """Replay a file into the ring and meter it with `table` (via add_batch); keeps the first
        packets as (bytes, linktype) in `keep`. Returns packets delivered."""
        try:
            src = PcapSource(str(path))
        except errors.CorruptCapture:
            return 0
        delivered = kept = 0
        with src:
            src.prepare(self.producer)
            while True:
                try:
                    n = src.run(self.producer, max_packets=512, duration=30)
                except errors.CorruptCapture:
                    n = -1
                while (b := self.consumer.next(timeout=0)) is not None:
                    table.add_batch(b)
                    delivered += len(b)
                    d = b.desc
                    for i in range(min(len(b), keep_per_file - kept)):
                        lt = self.consumer.ring.port_linktype(int(d["port"][i]))
                        keep.append((bytes(b.packet(i)), lt))
                        kept += 1
                    b.release()
                if n < 0:
                    break
        return delivered

    def close(self):
        self.producer.close()
        self.consumer.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every sample capture metered through a ring (checked), and a corpus of their packets."""
    import os
    d = tmp_path_factory.mktemp("rings")
    old = os.environ.get("CAPFAN_RING_DIR")
    os.environ["CAPFAN_RING_DIR"] = str(d)
    files = sorted(PCAPS.glob("*")) if PCAPS.is_dir() else []
    keep, results = [], {}
    rig = Rig()
    try:
        for i, path in enumerate(files):
            t = FlowTable(decap=DECAPS[i % 2], max_flows=64)
            delivered = rig.replay(path, t, keep, keep_per_file=30)
            results[path.name] = (delivered, check_accounting(t))
            t.close()
    finally:
        rig.close()
        if old is None:
            os.environ.pop("CAPFAN_RING_DIR", None)
        else:
            os.environ["CAPFAN_RING_DIR"] = old
    return files, results, keep


def test_every_sample_capture_meters_with_exact_accounting(corpus):
    files, results, _ = corpus
    assert len(files) >= 300, f"sample captures missing under {PCAPS}"
    assert set(results) == {f.name for f in files}
    for name, (delivered, s) in results.items():
        assert s["packets"] == delivered, name
    # about 7800 packets, a little over half of them IP (the rest ARP, STP, IS-IS, CDP...):
    # guards against a parser that stops finding IP
    total = sum(s["ip_packets"] for _, s in results.values())
    assert total > 4000


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data(), decap=st.sampled_from(DECAPS))
def test_mutated_real_packets_never_crash(corpus, data, decap):
    _, _, keep = corpus
    seed = data.draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(seed)
    frames, lts = [], []
    for _ in range(data.draw(st.integers(1, 30))):
        pkt, lt = keep[rnd.randrange(len(keep))]
        b = bytearray(pkt)
        for _ in range(rnd.randrange(4)):
            if b:
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        if b and rnd.random() < 0.5:
            b = b[:rnd.randrange(len(b) + 1)]
        frames.append(bytes(b))
        lts.append(lt if rnd.random() < 0.8 else rnd.choice(LINKTYPES))
    t = FlowTable(max_flows=16, max_fragments=8, decap=decap, end_linger=0.001, idle_timeout=0.5)
    ts = 10**18
    for f, lt in zip(frames, lts):  # one link type per call
        ts += rnd.randrange(10**9)
        feed_frames(t, [f], lt, wirelens=[len(f) + rnd.randrange(100)], ts=[ts])
    check_accounting(t)

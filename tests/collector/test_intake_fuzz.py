"""Fuzzed wire messages never crash the collector.

One live intake (real Store in tmp, plain mode) per run, kept across the hypothesis examples,
once with the journal + loader (the production path, as collector/service.py wires it) and once
storing directly. Each example sends a few messages through a DEALER: random frame lists,
mutations of valid encoded batches (bit flips, truncation, extension, frames swapped, doubled or
dropped, header fields overwritten with extreme values, descriptors replaced by random JSON) and
valid batches of random dtypes and seqs. The test decodes each message itself (the oracle: what
the intake must do with it), then checks that the intake thread lives and still acks a valid
probe batch with its seq, that nothing malformed was acked, that the counters add up and that
the store holds exactly the valid batches and records.
"""
import json
import struct
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capfan import records as R
from capfan import wire
from capfan.collector import intake as intake_mod
from capfan.collector import journal as journal_mod
from capfan.collector import loader as loader_mod
from capfan.collector import store as store_mod

MAX_BYTES = 1 << 20           # the intake's (and the oracle's) message limit: huge counts are cheap rejects
HOSTS = ("h1", "h2", "h3")
PROBE_SEQ = 1 << 62
REJECTED = ("rejected_malformed", "rejected_oversized", "rejected_version")
_HEAD = struct.Struct("<4sHBBQQIHBBHI")
# (offset, struct format) of each header field after the magic
HEADER_FIELDS = {"version": (4, "<H"), "codec": (6, "<B"), "flags": (7, "<B"), "seq": (8, "<Q"),
                 "created_ns": (16, "<Q"), "count": (24, "<I"), "itemsize": (28, "<H"), "lhost": (30, "<B"),
                 "lstream": (31, "<B"), "lsource": (32, "<H"), "ldesc": (34, "<I")}
NUMERIC = ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16",
           ">u4", ">i8", ">f8"]


# ------------------------------------------------------------------------------ the harness

class Harness:
    """A live intake with its store (and journal + loader), a DEALER, and what should have happened."""

    def __init__(self, tmp, journaled: bool):
        self.journaled = journaled
        self.store = store_mod.Store(str(tmp / "store.duckdb"))
        self.journal = self.loader = None
        if journaled:
            self.journal = journal_mod.Journal(str(tmp / "journal"))
            self.loader = loader_mod.Loader(self.store, self.journal, MAX_BYTES)
            self.loader.start()
        self.intake = intake_mod.Intake(self.store, "tcp://127.0.0.1:*", mode="plain", max_message_bytes=MAX_BYTES,
                                        journal=self.journal)
        self.endpoint = self.intake.start()
        self.ctx = zmq.Context()
        self.sock = self.dealer()
        self.sent = 0
        self.fresh: dict[tuple[str, int], int] = {}   # (host, seq) stored -> records
        self.duplicates = 0
        self.rejected = 0
        self.ackable: set[int] = set()                # seqs of valid messages: the only ones that may be acked
        self.rejectable: set[int] = set()             # seqs the intake may reject for good
        self.probe_seq = 0

    def dealer(self):
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(self.endpoint)
        return s

    def close(self):
        self.intake.stop()
        if self.loader is not None:
            self.loader.stop()
            self.journal.close()
        self.store.close()
        self.ctx.destroy(linger=0)

    def send(self, frames: list[bytes]) -> None:
        """Send one message and record what the intake must do with it (decided by wire.decode)."""
        frames = frames or [b""]          # a ROUTER always sees at least one frame after the identity
        try:
            batch = wire.decode(frames, MAX_BYTES)
        except wire.WireError as e:      # anything else escaping decode would kill the intake loop
            self.rejected += 1
            if isinstance(e.seq, int) and e.seq > 0:
                self.rejectable.add(e.seq)
        else:
            if intake_mod.content_error(batch) is not None:
                self.rejected += 1
                self.rejectable.add(batch.seq)
            elif (batch.host, batch.seq) in self.fresh:
                self.duplicates += 1
                self.ackable.add(batch.seq)
            else:
                self.fresh[(batch.host, batch.seq)] = len(batch.records)
                self.ackable.add(batch.seq)
        self.sock.send_multipart(frames, copy=True)
        self.sent += 1

    def probe(self) -> None:
        """A valid batch from host `probe` must be acked with its own seq (after everything sent before)."""
        self.probe_seq += 1
        seq = PROBE_SEQ + self.probe_seq   # never a fuzzed batch's seq: its ack could be taken for the probe's
        self.send(wire.encode(wire.Batch("probe", "flows", "eth0.q0/fuzz", seq, flows(2, seq))))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.intake._thread.is_alive(), "the intake thread died"
            if not self.sock.poll(50):
                continue
            acked, rejected = wire.decode_ack(self.sock.recv_multipart())
            assert set(acked) <= self.ackable, f"acked seqs of malformed messages: {set(acked) - self.ackable}"
            assert set(rejected) <= self.rejectable, f"rejected unexpected seqs: {set(rejected) - self.rejectable}"
            if seq in acked:
                return
        pytest.fail(f"probe batch {seq} not acked within 10 s; counters {self.intake.counters()}")

    def check(self) -> None:
        """The intake lives, answers, and counters and store agree with what was sent."""
        self.probe()
        c = self.intake.counters()
        assert self.intake._thread.is_alive()
        rejected = sum(c[k] for k in REJECTED)
        assert c["received"] == self.sent
        assert c["store_errors"] == 0
        assert rejected == self.rejected
        if self.journaled:
            assert c["received"] == c["journaled"] + rejected
            assert c["journaled"] == len(self.fresh) + self.duplicates
            want = len(self.fresh) + self.duplicates
            deadline = time.monotonic() + 10
            while True:
                ld = self.loader.counters()
                if ld["loaded_batches"] + ld["duplicates"] >= want or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert ld["load_errors"] == 0, self.loader.error
            assert (ld["loaded_batches"], ld["duplicates"]) == (len(self.fresh), self.duplicates)
            assert ld["loaded_records"] == sum(self.fresh.values())
        else:
            assert c["received"] == c["stored"] + c["duplicates"] + rejected
            assert (c["stored"], c["duplicates"]) == (len(self.fresh), self.duplicates)
            assert c["records_stored"] == sum(self.fresh.values())
        # the store holds exactly the valid batches: per host, batches and records
        got = {h["host"]: (h["batches"], h["records"]) for h in self.store.health() if h["source"] is None}
        want = {}
        for (host, _seq), n in self.fresh.items():
            b, r = want.get(host, (0, 0))
            want[host] = (b + 1, r + n)
        assert got == want


@pytest.fixture(scope="module", params=["journal", "direct"])
def harness(request, tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp(request.param), journaled=request.param == "journal")
    yield h
    h.close()


# ------------------------------------------------------------------------------ strategies

def flows(n, seed):
    rng = np.random.default_rng(seed)
    r = R.empty(n)
    raw = rng.integers(0, 256, n * r.dtype.itemsize, dtype=np.uint8)
    return np.frombuffer(raw.tobytes(), dtype=r.dtype).copy()


@st.composite
def dtypes(draw):
    """A structured dtype of numbers and fixed-size bytes, sometimes with gaps and a padded end."""
    n = draw(st.integers(1, 6))
    names = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), min_size=n, max_size=n,
                          unique=True))
    types = [draw(st.sampled_from(NUMERIC) | st.builds(lambda k, s: f"|{k}{s}", st.sampled_from("SV"),
                                                        st.integers(1, 40))) for _ in names]
    offsets, off = [], 0
    for t in types:
        off += draw(st.integers(0, 3))
        offsets.append(off)
        off += np.dtype(t).itemsize
    return np.dtype({"names": names, "formats": types, "offsets": offsets, "itemsize": off + draw(st.integers(0, 4))})


@st.composite
def batches(draw):
    """A valid Batch: FLOW_DTYPE flows most often (those get stored), else a random dtype and stream."""
    host = draw(st.sampled_from(HOSTS))
    seq = draw(st.integers(1, 8) | st.integers(1, 1 << 40) | st.just(wire.MAX_SEQ))   # small ones repeat
    n = draw(st.integers(0, 20))
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        return wire.Batch(host, "flows", "eth0.q0/fuzz", seq, flows(n, seed))
    dt = draw(dtypes())
    raw = np.random.default_rng(seed).integers(0, 256, n * dt.itemsize, dtype=np.uint8).tobytes()
    stream = draw(st.sampled_from(["stats", "health", "flows", "x.y"]))
    source = draw(st.sampled_from(["", "eth0.q1/stats", "a:b/c"]))
    return wire.Batch(host, stream, source, seq, np.frombuffer(raw, dtype=dt).copy(), draw(st.integers(0, 2**64 - 1)))


def encoded(draw):
    return wire.encode(draw(batches()), draw(st.sampled_from(wire.CODECS)))


EXTREMES = {"<B": [0, 1, 2, 3, 127, 255], "<H": [0, 1, 2, 64, 0x7FFF, 0xFFFF],
            "<I": [0, 1, 2, 1 << 20, 1 << 31, 2**32 - 1], "<Q": [0, 1, 2**63 - 1, 2**63, 2**64 - 1]}
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=12)


@st.composite
def mutated(draw):
    """A valid encoded batch with one to three mutations."""
    frames = [bytearray(f) for f in encoded(draw)]
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["flip", "truncate", "extend", "swap", "duplicate", "drop", "header",
                                     "descriptor"]))
        i = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if what == "flip" and frames and frames[i]:
            bit = draw(st.integers(0, 8 * len(frames[i]) - 1))
            frames[i][bit // 8] ^= 1 << bit % 8
        elif what == "truncate" and frames:
            frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
        elif what == "extend" and frames:
            frames[i] += draw(st.binary(min_size=1, max_size=64))
        elif what == "swap" and len(frames) >= 2:
            frames[0], frames[1] = frames[1], frames[0]
        elif what == "duplicate" and frames:
            frames.insert(i, bytearray(frames[i]))
        elif what == "drop" and frames:
            del frames[i]
        elif what == "header" and frames and len(frames[0]) >= _HEAD.size:
            off, fmt = HEADER_FIELDS[draw(st.sampled_from(sorted(HEADER_FIELDS)))]
            value = draw(st.sampled_from(EXTREMES[fmt.replace(">", "<")]) | st.integers(0, 2**(8 * struct.calcsize(fmt)) - 1))
            struct.pack_into(fmt, frames[0], off, value)
        elif what == "descriptor" and frames and len(frames[0]) >= _HEAD.size:
            # a random (often ill-typed) descriptor, with ldesc fixed up so the parse gets that far
            head = _HEAD.unpack_from(frames[0])
            start = _HEAD.size + head[8] + head[9] + head[10]
            desc = json.dumps(draw(JSON | st.lists(st.lists(JSON, min_size=3, max_size=3), max_size=4))).encode()
            frames[0] = frames[0][:start] + desc
            struct.pack_into("<I", frames[0], 34, len(desc))
    return [bytes(f) for f in frames]


MESSAGES = st.one_of(
    st.lists(st.binary(max_size=200), min_size=0, max_size=5),                                # random frames
    st.lists(st.binary(max_size=100), max_size=3).map(lambda fs: [b"CFWB\x01\x00" + f for f in fs[:1]] + fs[1:]),
    mutated(),
    st.composite(lambda draw: encoded(draw))(),                                                # valid batches
)


# ------------------------------------------------------------------------------ the tests

EXAMPLES = 300


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(messages=st.lists(MESSAGES, min_size=1, max_size=4))
def test_fuzzed_messages_never_crash_the_intake(harness, messages):
    for frames in messages:
        harness.send(frames)
    harness.check()   # every example: a broken count points at the example that broke it


def test_fuzz_final_accounting(harness):
    """After the fuzzing (same module-scoped intake): one last full check; and something was stored."""
    harness.check()
    assert len(harness.fresh) > harness.probe_seq or harness.sent == harness.probe_seq
    assert harness.rejected > 0 or harness.sent == harness.probe_seq


def test_over_zmq_maxmsgsize_drops_only_that_connection(tmp_path):
    """A message over ZMQ_MAXMSGSIZE: libzmq drops that connection before the intake reads anything;
    a peer connected all along keeps being served on its connection."""
    store = store_mod.Store(str(tmp_path / "s.duckdb"))
    it = intake_mod.Intake(store, "tcp://127.0.0.1:*", mode="plain", max_message_bytes=4096)
    ctx = zmq.Context()
    try:
        ep = it.start()
        good, bad = (ctx.socket(zmq.DEALER) for _ in range(2))
        for s in (good, bad):
            s.linger = 0
            s.connect(ep)

        def acked(seq):
            good.send_multipart(wire.encode(wire.Batch("good", "flows", "", seq, flows(2, seq))))
            assert good.poll(5000), f"no ack for {seq}"
            assert wire.decode_ack(good.recv_multipart()) == ([seq], {})

        acked(1)
        bad.send_multipart(wire.encode(wire.Batch("bad", "flows", "", 1, flows(1, 1))))   # bad is connected
        deadline = time.monotonic() + 5
        while it.counters()["received"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bad.poll(5000)
        bad.recv_multipart()
        before = it.counters()
        bad.send_multipart([b"x" * (4096 + intake_mod.ZMQ_SIZE_SLACK + 1)])
        deadline = time.monotonic() + 5
        while it.counters()["disconnects"] <= before["disconnects"] and time.monotonic() < deadline:
            time.sleep(0.01)
        c = it.counters()
        assert c["disconnects"] == before["disconnects"] + 1
        acked(2)   # the same connection as before: not dropped
        acked(3)
        c = it.counters()
        assert c["received"] == 4 and c["stored"] == 4 and sum(c[k] for k in REJECTED) == 0
        assert it._thread.is_alive()
        assert {h["host"]: h["batches"] for h in store.health() if h["source"] is None} == {"good": 3, "bad": 1}
    finally:
        it.stop()
        ctx.destroy(linger=0)
        store.close()

"""capfan.wire: batches and acks round-trip; anything malformed raises WireError only."""
import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capfan import wire as W
from capfan.analyzers.stats import STATS_DTYPE
from capfan.errors import WireError
from capfan.records import FLOW_DTYPE

BYTES_DTYPE = np.dtype([("name", "S12"), ("raw", "V5"), ("x", ">i4"), ("f", "<f8"), ("ok", "?"),
                        ("c", "<c8"), ("h", "<f2")])


def flows(n, seed=0):
    """n FLOW_DTYPE records with flow-meter-like values (random bytes everywhere but _pad)."""
    rng = np.random.default_rng(seed)
    a = np.frombuffer(rng.integers(0, 256, n * FLOW_DTYPE.itemsize, dtype=np.uint8).tobytes(), FLOW_DTYPE).copy()
    a["_pad"] = b"\0\0\0"
    return a


def roundtrip(records, codec=None, **kw):
    b = W.Batch(kw.get("host", "sensor-1.example"), kw.get("stream", "flows"), kw.get("source", "eth0.q0/flowmeter"),
                kw.get("seq", 42), records, kw.get("created_ns", 1_700_000_000_000_000_000))
    frames = W.encode(b, codec)
    assert all(isinstance(f, bytes) for f in frames)
    got = W.decode(frames)
    assert (got.host, got.stream, got.source, got.seq, got.created_ns) == (b.host, b.stream, b.source, b.seq,
                                                                           b.created_ns)
    assert got.records.dtype == records.dtype
    assert got.records.tobytes() == records.tobytes()
    return frames, got


@pytest.mark.parametrize("codec", W.CODECS)
@pytest.mark.parametrize("n", [0, 1, 100_000])
def test_flow_batches_round_trip(codec, n):
    roundtrip(flows(n), codec)


@pytest.mark.parametrize("codec", W.CODECS)
def test_other_dtypes_round_trip(codec):
    s = np.zeros(3, STATS_DTYPE)
    s["packets"] = [1, 2, 2**64 - 1]
    roundtrip(s, codec, stream="stats")
    a = np.zeros(W.BLOCK + 3, BYTES_DTYPE)  # crosses a block boundary
    a["name"][:3] = [b"eth0", b"", b"x" * 12]
    a["raw"][1] = b"\x01\x02\x03\x04\x05"
    a["x"] = np.arange(len(a)) - 5
    a["f"][0] = np.nan
    a["ok"][::2] = True
    roundtrip(a, codec, stream="health", source="")


def test_gaps_between_fields_come_back_zero():
    dt = np.dtype({"names": ["a", "b"], "formats": ["u1", "<u8"], "offsets": [0, 8], "itemsize": 24})
    a = np.zeros(4, dt)
    a.view(np.uint8)[:] = 0xAA  # garbage in the gaps
    a["a"], a["b"] = 7, 2**40
    got = W.decode(W.encode(W.Batch("h", "s", "", 1, a)))
    assert got.records.dtype == dt
    assert (got.records["a"] == 7).all() and (got.records["b"] == 2**40).all()
    assert got.records.view(np.uint8).reshape(4, 24)[:, 1:8].sum() == 0


def test_default_codec_compresses_flow_records():
    from capfan.bench.wire import flow_records

    a = flow_records(20_000)
    frames = W.encode(W.Batch("h", "flows", "", 1, a))
    assert W.DEFAULT_CODEC == "zstd"
    assert len(frames[1]) < a.nbytes / 3  # measured ~4x on metered records


@pytest.mark.parametrize("records, match", [
    (np.zeros(3, dtype=[("o", object)]), "objects, unicode"),
    (np.zeros(3, dtype=[("u", "U4")]), "objects, unicode"),
    (np.zeros(3, dtype=[("t", "M8[ns]")]), "objects, unicode"),
    (np.zeros(3, dtype=np.uint64), "no named fields"),
    (np.zeros((2, 2), dtype=FLOW_DTYPE), "1-D"),
    (np.zeros(3, dtype=[("a", "<u4", (2,))]), "sub-array"),
    (np.zeros(3, dtype=[("a", [("b", "u1")])]), "nested"),
    (np.zeros(1, dtype=[("x", "V5000")]), "not allowed"),
    (np.zeros(1, dtype=[(f"f{i}", "u1") for i in range(257)]), "257 fields"),
    (np.zeros(1, dtype=[("bad name", "u1")]), "field name"),
    ([1, 2], "1-D numpy"),
])
def test_encode_rejects_unsendable_records(records, match):
    with pytest.raises(WireError, match=match):
        W.encode(W.Batch("h", "s", "", 1, records))


@pytest.mark.parametrize("kw, match", [
    ({"host": ""}, "host"), ({"host": "a b"}, "host"), ({"host": "h" * 65}, "host"),
    ({"stream": "flows!"}, "stream"), ({"source": "x" * 129}, "source"), ({"source": "é"}, "source"),
    ({"seq": 0}, "seq"), ({"seq": 2**63}, "seq"), ({"seq": True}, "seq"), ({"created_ns": -1}, "created_ns"),
])
def test_encode_rejects_bad_ids(kw, match):
    args = {"host": "h", "stream": "s", "source": "", "seq": 1, "records": flows(1), "created_ns": 0} | kw
    with pytest.raises(WireError, match=match):
        W.encode(W.Batch(**args))
    with pytest.raises(WireError, match="unknown codec 'gzip'"):
        W.encode(W.Batch("h", "s", "", 1, flows(1)), "gzip")


def header(frames):
    return bytearray(frames[0])


def test_version_and_magic_errors_say_what():
    frames = W.encode(W.Batch("h", "flows", "", 9, flows(2)))
    h = header(frames)
    h[4:6] = (2).to_bytes(2, "little")
    with pytest.raises(WireError, match="version 2 is not understood .*understands 1") as e:
        W.decode([bytes(h), frames[1]])
    assert e.value.kind == "version"
    with pytest.raises(WireError, match="bad magic"):
        W.decode([b"XXXX" + frames[0][4:], frames[1]])
    with pytest.raises(WireError, match="3 frames, expected 2"):
        W.decode(frames + [b""])
    with pytest.raises(WireError, match="frame 0: .* trailing|frame 0: .* bytes, header declares"):
        W.decode([frames[0] + b"x", frames[1]])


def test_errors_carry_host_and_seq_once_known():
    frames = W.encode(W.Batch("agent7", "flows", "", 77, flows(2)))
    with pytest.raises(WireError, match="frame 1") as e:
        W.decode([frames[0], frames[1][:-1]])
    assert (e.value.host, e.value.seq, e.value.kind) == ("agent7", 77, "malformed")


@pytest.mark.parametrize("codec", W.CODECS)
def test_oversized_is_refused_before_decompressing(codec):
    a = np.zeros(1 << 16, dtype=[("x", "<u8")])  # 512 KiB of zeros: compresses to almost nothing
    frames = W.encode(W.Batch("h", "s", "", 3, a), codec)
    with pytest.raises(WireError, match="exceed the 65,536-byte limit") as e:
        W.decode(frames, max_bytes=1 << 16)
    assert e.value.kind == "oversized" and e.value.seq == 3


def test_padded_records_count_their_full_size_against_the_limit():
    """Found by the fuzz test: 1 packed byte per record in a 4000-byte item must not decode into
    40 kB when the limit is 16 kB."""
    dt = np.dtype({"names": ["x"], "formats": ["u1"], "offsets": [0], "itemsize": 4000})
    frames = W.encode(W.Batch("h", "s", "", 4, np.zeros(10, dtype=dt)))
    assert W.decode(frames, max_bytes=40_000).records.nbytes == 40_000
    with pytest.raises(WireError, match="10 records of 4000 bytes .* exceed the 16,384-byte limit") as e:
        W.decode(frames, max_bytes=16_384)
    assert e.value.kind == "oversized"


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_zip_bomb_cannot_expand_beyond_the_declared_size(codec):
    """A payload that expands hugely, under a header declaring a small batch: refused without
    allocating the expansion (zstd frame size checked first, lz4 bounded output buffer)."""
    big = np.zeros(1 << 20, dtype=[("x", "<u8")])        # 8 MiB, compresses to a few KiB
    small = np.zeros(16, dtype=[("x", "<u8")])
    bomb = W.encode(W.Batch("h", "s", "", 1, big), codec)[1]
    assert len(bomb) < 64 << 10
    head = W.encode(W.Batch("h", "s", "", 1, small), codec)[0]
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="frame 1"):
            W.decode([head, bomb], max_bytes=1 << 12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a 128-byte batch allocated {peak:,} bytes"
    # a header declaring the real size is refused as oversized before any decompression
    with pytest.raises(WireError, match="exceed") as e:
        W.decode(W.encode(W.Batch("h", "s", "", 1, big), codec), max_bytes=1 << 12)
    assert e.value.kind == "oversized"


def _rebuild(desc, itemsize=None, count=0, codec="none", payload=b""):
    """A batch message with a hand-made dtype descriptor."""
    d = json.dumps(desc).encode() if not isinstance(desc, bytes) else desc
    h = W._HEAD.pack(W.MAGIC, 1, W._CODEC_ID[codec], 0, 1, 0, count, itemsize or 8, 1, 1, 0, len(d))
    return [h + b"hs" + d, payload]


@pytest.mark.parametrize("desc, itemsize, match", [
    ([["a", "|O8", 0]], 8, "not a numpy type string"),
    ([["a", "<U2", 0]], 8, "not a numpy type string"),
    ([["a", "<u3", 0]], 8, "not a numpy type|not allowed"),
    ([["a", "<f16", 0]], 16, "not allowed"),
    ([["a", "=u8", 0]], 8, "not a numpy type string"),
    ([["a", "<u1", 0]], 1, "not allowed"),           # byte order mark not canonical
    ([["a", "|V9999", 0]], 4096, "not allowed"),
    ([["a", "<u8", 4]], 8, "outside"),
    ([["a", "<u8", 0], ["b", "<u4", 4]], 12, "overlaps"),
    ([["a", "<u8", 0], ["a", "<u4", 8]], 12, "twice"),
    ([["1a", "<u8", 0]], 8, "field name"),
    ([["a", "<u8", -1]], 8, "outside|overlaps"),
    ([["a", "<u8", 0.0]], 8, "outside|overlaps"),
    ([["a", "<u8"]], 8, "not \\[name, type, offset\\]"),
    ([], 8, "0 fields"),
    ({"a": 1}, 8, "must be a list"),
    ([["a", "|u1", 0]], 5000, "record size 5000"),
    ([[f"f{i}", "|u1", i] for i in range(257)], 257, "at most 256"),
    (b"\xff[", 8, "not ASCII JSON"),
    (b"[" * 100000, 8, "at most 32768"),
])
def test_bad_descriptors_are_refused(desc, itemsize, match):
    with pytest.raises(WireError, match=match):
        W.decode(_rebuild(desc, itemsize))


def test_count_times_itemsize_must_match_payload():
    frames = _rebuild([["a", "<u8", 0]], 8, count=3, payload=b"\0" * 23)
    with pytest.raises(WireError, match="23 bytes of uncompressed payload, header declares 24"):
        W.decode(frames)
    frames = _rebuild([["a", "<u8", 0]], 8, count=3, codec="zstd",
                      payload=W._compress("zstd", b"\0" * 32))
    with pytest.raises(WireError, match="zstd frame says 32 bytes, header declares 24"):
        W.decode(frames)


def test_trailing_garbage_after_compressed_payload():
    for codec in ("zstd", "lz4"):
        frames = W.encode(W.Batch("h", "s", "", 1, flows(10)), codec)
        with pytest.raises(WireError, match="frame 1"):
            W.decode([frames[0], frames[1] + b"\0junk"])


def test_unknown_codec_and_flags():
    frames = W.encode(W.Batch("h", "s", "", 1, flows(1)))
    for off, val, match in ((6, 9, "unknown codec id 9"), (7, 1, "flags 0x1")):
        h = header(frames)
        h[off] = val
        with pytest.raises(WireError, match=match):
            W.decode([bytes(h), frames[1]])


def test_decode_accepts_zmq_frames_and_memoryviews():
    zmq = pytest.importorskip("zmq")
    frames = W.encode(W.Batch("h", "s", "", 1, flows(5)))
    got = W.decode([zmq.Frame(frames[0]), memoryview(frames[1])])
    assert got.records.tobytes() == flows(5).tobytes()


# ---------------------------------------------------------------- hypothesis

FIELD_TYPES = ["|b1", "|i1", "<i2", ">i4", "<i8", "|u1", "<u2", "<u4", ">u8", "<f2", "<f4", ">f8", "<c8",
               "<c16", "|S1", "|S7", "|V3", "|V16"]


@st.composite
def batches(draw):
    nf = draw(st.integers(1, 6))
    names = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), min_size=nf,
                          max_size=nf, unique=True))
    dt = np.dtype([(n, draw(st.sampled_from(FIELD_TYPES))) for n in names])
    n = draw(st.integers(0, 300))
    raw = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    recs = np.frombuffer(raw, dtype=dt).copy() if n else np.zeros(0, dt)
    host = draw(st.from_regex(r"[A-Za-z0-9_.@-]{1,64}", fullmatch=True))
    stream = draw(st.from_regex(r"[A-Za-z0-9_.@-]{1,64}", fullmatch=True))
    source = draw(st.from_regex(r"[A-Za-z0-9_.@/:-]{0,128}", fullmatch=True))
    return W.Batch(host, stream, source, draw(st.integers(1, 2**63 - 1)), recs, draw(st.integers(0, 2**64 - 1)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from(W.CODECS))
def test_random_batches_round_trip(b, codec):
    got = W.decode(W.encode(b, codec))
    assert (got.host, got.stream, got.source, got.seq, got.created_ns) == (b.host, b.stream, b.source, b.seq,
                                                                           b.created_ns)
    assert got.records.dtype == b.records.dtype and got.records.tobytes() == b.records.tobytes()


_SEEDS = [W.encode(W.Batch("h", "flows", "eth0/fm", 5, flows(40, 1)), c) for c in W.CODECS] + [
    W.encode(W.Batch("h", "stats", "", 6, np.ones(7, STATS_DTYPE)), "zstd")]
FUZZ_MAX = 1 << 14


def _check_fuzzed(frames):
    try:
        got = W.decode(frames, max_bytes=FUZZ_MAX)
    except WireError:
        return
    assert isinstance(got, W.Batch) and got.records.nbytes <= FUZZ_MAX
    W.decode(W.encode(got))  # whatever decodes is a valid batch


@st.composite
def mutated(draw):
    frames = [bytearray(f) for f in draw(st.sampled_from(_SEEDS))]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "extend", "drop", "add", "replace", "word"]))
        i = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if op in ("flip", "byte", "word") and frames and frames[i]:
            p = draw(st.integers(0, len(frames[i]) - 1))
            if op == "flip":
                frames[i][p] ^= 1 << draw(st.integers(0, 7))
            elif op == "byte":
                frames[i][p] = draw(st.integers(0, 255))
            else:  # overwrite a length/count field with something large
                v = draw(st.sampled_from([0, 1, 255, 0xFFFF, 0xFFFFFFFF, 2**63]))
                frames[i][p:p + 8] = v.to_bytes(8, "little")
        elif op == "truncate" and frames:
            frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
        elif op == "extend" and frames:
            frames[i] += draw(st.binary(min_size=1, max_size=20))
        elif op == "drop" and frames:
            frames.pop(i)
        elif op == "add":
            frames.insert(draw(st.integers(0, len(frames))), bytearray(draw(st.binary(max_size=40))))
        elif op == "replace" and frames:
            frames[i] = bytearray(draw(st.binary(max_size=200)))
    return [bytes(f) for f in frames]


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_mutated_frames_raise_only_wire_error(frames):
    _check_fuzzed(frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_random_frames_raise_only_wire_error(frames):
    _check_fuzzed(frames)
    try:
        W.decode_ack(frames)
    except WireError:
        pass


# ---------------------------------------------------------------- acks

def test_ack_round_trip():
    seqs = [1, 2, 2**63 - 1, 17]
    rej = {5: "dtype: field 'x' has kind O", 9: "", 11: "é" * 10}
    assert W.decode_ack(W.encode_ack(seqs, rej)) == (seqs, rej)
    assert W.decode_ack(W.encode_ack([])) == ([], {})


def test_ack_reason_is_capped_on_encode():
    (_, rej) = W.decode_ack(W.encode_ack([], {3: "é" * 5000}))
    assert len(rej[3].encode()) <= W.MAX_REASON and set(rej[3]) == {"é"}


@pytest.mark.parametrize("mutate, match", [
    (lambda f: [f[0], f[1]], "2 frames, expected 3"),
    (lambda f: [b"CFWB" + f[0][4:], f[1], f[2]], "bad magic"),
    (lambda f: [f[0][:4] + b"\x07\x00" + f[0][6:], f[1], f[2]], "version 7 is not understood"),
    (lambda f: [f[0], f[1][:-1], f[2]], "ack frame 1: 15 bytes for 2"),
    (lambda f: [f[0], b"\0" * 16, f[2]], "seq 0 outside"),
    (lambda f: [f[0], f[1], f[2] + b"x"], "1 trailing bytes"),
    (lambda f: [f[0], f[1], f[2][:-1]], "reason of 3 bytes"),
    (lambda f: [f[0], f[1], f[2][:5]], "truncated rejection"),
    (lambda f: [f[0], f[1], struct.pack("<QH", 4, 1) + b"\xff"], "not UTF-8"),
    (lambda f: [f[0][:-1], f[1], f[2]], "expected 16"),
    (lambda f: [W._ACK_HEAD.pack(b"CFWA", 1, 0, 2, 2), f[1], f[2] + f[2]], "rejected twice"),
    (lambda f: [W._ACK_HEAD.pack(b"CFWA", 1, 0, 2**31, 0), f[1], f[2]], "at most"),
])
def test_malformed_acks(mutate, match):
    f = W.encode_ack([1, 2], {4: "bad"})
    with pytest.raises(WireError, match=match):
        W.decode_ack(mutate(f))


def test_encode_ack_refuses_bad_seqs():
    for bad in ([0], [2**63], [-1]):
        with pytest.raises(WireError, match="seq"):
            W.encode_ack(bad)
    with pytest.raises(WireError, match="seq"):
        W.encode_ack([], {0: "x"})


def test_encode_and_decode_from_several_threads_at_once():
    """The collector decodes in its intake and its loader thread at the same time."""
    import threading

    from capfan.bench.wire import flow_records
    recs = flow_records(20_000)
    msgs = [W.encode(W.Batch("h", "flows", "s", i + 1, recs[i * 2000:(i + 1) * 2000])) for i in range(10)]
    errors = []

    def work():
        try:
            for _ in range(20):
                for i, m in enumerate(msgs):
                    b = W.decode(m)
                    assert b.seq == i + 1 and b.records.tobytes() == recs[i * 2000:(i + 1) * 2000].tobytes()
                    again = W.encode(b)
                    assert W.decode(again).records.tobytes() == b.records.tobytes()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

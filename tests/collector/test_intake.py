"""The collector intake with real pyzmq sockets: acks after ingest, duplicates, bad messages,
CURVE authentication; and the collector config's checks."""
import os
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from capfan import records as R
from capfan import wire
from capfan.errors import ConfigError
from capfan.collector import config as ccfg
from capfan.collector import intake as intake_mod
from capfan.collector import store as store_mod


def flows(n, seed=0, src="10.0.0.1"):
    """n flow records with distinct destinations and random (incompressible) hashes."""
    rng = np.random.default_rng(seed)
    r = R.empty(n)
    r["flowStartNanoseconds"] = 1_700_000_000_000_000_000 + np.arange(n)
    r["flowEndNanoseconds"] = r["flowStartNanoseconds"] + 1000
    r["packetDeltaCount"] = 2
    r["octetDeltaCount"] = 100 + np.arange(n)
    r["ipVersion"] = 4
    r["protocolIdentifier"] = 6
    r["flowHash"] = rng.integers(0, 2**32, n, dtype=np.uint32)
    for i in range(n):
        r["sourceIPAddress"][i] = np.void(R.pack_address(src))
        r["destinationIPAddress"][i] = np.void(R.pack_address(f"10.1.{i // 250}.{i % 250 + 1}"))
    return r


def frames(seq, n=3, host="sensor1", codec=None, **kw):
    return wire.encode(wire.Batch(host=host, stream="flows", source="eth0.q0/flowmeter", seq=seq,
                                  records=flows(n, seed=seq, **kw)), codec)


class SpyStore:
    """The stand-in store, remembering which seqs were committed before any ack could go out."""

    def __init__(self, path):
        self.inner = store_mod.Store(str(path))
        self.committed = set()
        self.fail = 0

    def ingest(self, host, seq, stream, source, records):
        if self.fail:
            self.fail -= 1
            raise RuntimeError("disk full")
        fresh = self.inner.ingest(host, seq, stream, source, records)
        self.committed.add((host, seq))
        return fresh

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def store(tmp_path):
    s = SpyStore(tmp_path / "store.db")
    yield s
    s.inner.close()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def start(store, **kw):
    kw.setdefault("mode", "plain")
    it = intake_mod.Intake(store, kw.pop("listen", "tcp://127.0.0.1:*"), **kw)
    it.start()
    return it


@pytest.fixture
def plain(store):
    it = start(store)
    yield it
    it.stop()


def dealer(ctx, endpoint, curve=None):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if curve:
        server_pub, (pub, sec) = curve
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_pub, pub, sec
    s.connect(endpoint)
    return s


def recv_acks(sock, until, timeout=5.0):
    """(acked, rejected) collected until `until(acked, rejected)` or the timeout."""
    acked, rejected = [], {}
    deadline = time.monotonic() + timeout
    while not until(acked, rejected) and time.monotonic() < deadline:
        if sock.poll(100):
            a, r = wire.decode_ack(sock.recv_multipart())
            acked += a
            rejected.update(r)
    return acked, rejected


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_batches_are_acked_only_after_the_store_committed_them(plain, store, ctx):
    s = dealer(ctx, plain.endpoint)
    for seq in range(1, 6):
        s.send_multipart(frames(seq))
    acked = []
    deadline = time.monotonic() + 5
    while len(acked) < 5 and time.monotonic() < deadline:
        if s.poll(100):
            got, rejected = wire.decode_ack(s.recv_multipart())
            assert not rejected
            # committed is filled after Store.ingest returned: an ack before that would fail here
            assert all(("sensor1", q) in store.committed for q in got)
            acked += got
    assert sorted(acked) == [1, 2, 3, 4, 5]
    host = [h for h in store.health() if h["host"] == "sensor1" and h.get("source") is None]
    assert host[0]["records"] == 15 and host[0]["batches"] == 5   # every record stored once
    c = plain.counters()
    assert (c["received"], c["stored"], c["records_stored"], c["duplicates"]) == (5, 5, 15, 0)
    assert c["hosts"]["sensor1"]["batches"] == 5 and c["hosts"]["sensor1"]["last_seen_ns"] > 0


def test_duplicates_are_acked_and_stored_once(plain, store, ctx):
    s = dealer(ctx, plain.endpoint)
    for _ in range(3):
        s.send_multipart(frames(7))
    acked, _ = recv_acks(s, lambda a, r: len(a) >= 3)
    assert acked == [7, 7, 7]
    assert store.totals()["flows"] == 3
    c = plain.counters()
    assert (c["stored"], c["duplicates"]) == (1, 2)


def test_a_store_failure_is_not_acked_and_the_resend_is(plain, store, ctx):
    store.fail = 1
    s = dealer(ctx, plain.endpoint)
    s.send_multipart(frames(1))
    assert wait_for(lambda: plain.counters()["store_errors"] == 1)
    assert not s.poll(300), "a batch the store did not commit must not be acked"
    s.send_multipart(frames(1))   # the agent's resend
    acked, _ = recv_acks(s, lambda a, r: a)
    assert acked == [1] and plain.counters()["stored"] == 1


def test_garbage_and_truncated_messages_are_counted_and_the_intake_keeps_serving(plain, store, ctx):
    s = dealer(ctx, plain.endpoint)
    s.send_multipart([b"garbage"])
    s.send_multipart([b"\x00" * 3, b"", b"\xff" * 100])
    good = frames(2)
    s.send_multipart(good[:-1] + [good[-1][:-7]])  # truncated records
    s.send_multipart(frames(3))
    acked, rejected = recv_acks(s, lambda a, r: 3 in a)
    assert acked == [3]
    assert set(rejected) <= {2}  # the truncated batch may be rejected by seq, never acked
    c = plain.counters()
    assert c["rejected_malformed"] == 3 and c["received"] == 4 and c["stored"] == 1
    assert store.totals()["flows"] == 3


def test_a_readable_seq_of_a_bad_message_gets_a_permanent_reject(plain, ctx, monkeypatch):
    real = wire.decode

    def decode(frames, max_bytes=wire.MAX_MESSAGE_BYTES):
        if frames[0] == b"old":
            raise wire.WireError("wire version 9 not supported", kind="version", seq=41)
        return real(frames, max_bytes)
    monkeypatch.setattr(intake_mod.wire, "decode", decode)
    s = dealer(ctx, plain.endpoint)
    s.send_multipart([b"old", b"x"])
    acked, rejected = recv_acks(s, lambda a, r: r)
    assert acked == [] and list(rejected) == [41] and "version" in rejected[41]
    assert plain.counters()["rejected_version"] == 1


def test_oversized_messages_are_counted_at_wire_and_zmq_level(store, ctx):
    it = start(store, max_message_bytes=4096)
    try:
        s = dealer(ctx, it.endpoint)
        big = frames(1, n=200, codec="none")  # 27 KB of records: over 4096, under ZMQ's limit
        assert sum(map(len, big)) > 4096
        s.send_multipart(big)
        assert wait_for(lambda: it.counters()["rejected_oversized"] == 1)
        # over ZMQ_MAXMSGSIZE: libzmq drops the connection before anything is read
        s.send_multipart([b"x" * (4096 + intake_mod.ZMQ_SIZE_SLACK + 1)])
        assert wait_for(lambda: it.counters()["disconnects"] >= 1)
        fresh = dealer(ctx, it.endpoint)
        fresh.send_multipart(frames(2))
        acked, _ = recv_acks(fresh, lambda a, r: a)
        assert acked == [2]
        assert it.counters()["received"] == 2  # the ZMQ-level one never reached the intake
    finally:
        it.stop()


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    out = {}
    for name in ("collector", "agent", "stranger"):
        _, sec_file = zmq.auth.create_certificates(str(d), name)
        out[name] = zmq.auth.load_certificate(sec_file)
    return out


def test_curve_serves_authorized_agents_and_denies_unknown_keys(store, ctx, keys):
    server_pub, server_sec = keys["collector"]
    it = start(store, mode="curve", secret_key=server_sec.decode(), authorized={keys["agent"][0].decode()})
    try:
        ok = dealer(ctx, it.endpoint, (server_pub, keys["agent"]))
        ok.send_multipart(frames(1))
        assert recv_acks(ok, lambda a, r: a)[0] == [1]
        bad = dealer(ctx, it.endpoint, (server_pub, keys["stranger"]))
        bad.send_multipart(frames(2, host="intruder"))
        assert wait_for(lambda: it.counters()["denied_unauthenticated"] >= 1)
        no_curve = dealer(ctx, it.endpoint)
        no_curve.send_multipart(frames(3, host="intruder"))
        assert not bad.poll(500) and not no_curve.poll(10)
        c = it.counters()
        assert c["received"] == 1 and set(c["hosts"]) == {"sensor1"}
        assert {h["host"] for h in store.health()} == {"sensor1"}
    finally:
        it.stop()


def test_curve_needs_a_key_and_authorized_agents(store):
    with pytest.raises(ValueError, match="authorized"):
        intake_mod.Intake(store, "tcp://127.0.0.1:*")
    with pytest.raises(ValueError, match="mode"):
        intake_mod.Intake(store, "tcp://127.0.0.1:*", mode="none")


def test_listen_failure_is_an_oserror_naming_the_endpoint(plain, store):
    with pytest.raises(OSError, match="cannot listen on " + plain.endpoint):
        start(store, listen=plain.endpoint)


def test_error_kind():
    assert intake_mod.error_kind(wire.WireError("x")) == "malformed"
    assert intake_mod.error_kind(wire.WireError("x", kind="oversized")) == "oversized"
    assert intake_mod.error_kind(wire.WireError("unsupported wire version 3", kind="version")) == "version"


# ------------------------------------------------------------------ config

def cfg(tmp_path, text):
    p = tmp_path / "collector.toml"
    p.write_text(text)
    return ccfg.load(str(p))


def test_config_defaults_to_curve_and_names_the_missing_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, "")
    assert e.value.key == "security.server_key" and "capfan keys gen" in str(e.value)


def test_config_curve_without_authorized_keys_is_an_error(tmp_path, keys):
    os.makedirs(tmp_path / "empty")
    base = '[security]\nserver_key = "keys/collector.key_secret"\n'
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, base)
    assert e.value.key == "security.authorized_keys"
    with pytest.raises(ConfigError, match="no \\*.key") as e:
        cfg(tmp_path, base + 'authorized_keys = "empty"\n')
    assert e.value.key == "security.authorized_keys"
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, base + 'authorized_keys = ["keys/agent.key", "keys/nope.key"]\n')
    assert e.value.key == "security.authorized_keys[1]"


def test_config_loads_keys_from_a_directory_files_and_z85(tmp_path, keys):
    base = '[security]\nserver_key = "keys/collector.key_secret"\n'
    c = cfg(tmp_path, base + 'authorized_keys = "keys"\n')
    assert c["security"]["public_key"] == keys["collector"][0].decode()
    assert keys["agent"][0].decode() in c["security"]["authorized"]
    z85 = keys["stranger"][0].decode()
    c = cfg(tmp_path, base + f'authorized_keys = ["keys/agent.key", "{z85}"]\n')
    assert c["security"]["authorized"] == {keys["agent"][0].decode(), z85}
    assert c["collector"]["listen"] == "tcp://127.0.0.1:5557" and c["api"]["listen"] == "127.0.0.1:8477"
    assert c["collector"]["store"] == "/var/lib/capfan/collector.duckdb"


def test_config_plain_must_be_chosen_and_ignores_no_key(tmp_path):
    c = cfg(tmp_path, '[security]\nmode = "plain"\n[collector]\nstore = "db/flows.duckdb"\n')
    assert c["security"]["mode"] == "plain" and c["security"]["authorized"] == set()
    assert c["collector"]["store"] == str(tmp_path / "db/flows.duckdb")
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, '[security]\nmode = "plain"\nauthorized_keys = "keys"\n')
    assert e.value.key == "security.authorized_keys"
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, '[security]\nmode = "open"\n')
    assert e.value.key == "security.mode"


@pytest.mark.parametrize("text, key", [
    ('[collector]\nlisten = "0.0.0.0:5557"\n', "collector.listen"),
    ('[collector]\nlisten = "tcp://127.0.0.1:99999"\n', "collector.listen"),
    ('[api]\nlisten = "localhost"\n', "api.listen"),
    ('[collector]\nlistne = "tcp://*:5557"\n', "collector.listne"),
    ('[collector]\nmax_message_bytes = "1K"\n', "collector.max_message_bytes"),
    ('[collector]\nname = "a b"\n', "collector.name"),
    ('[colector]\n', "colector"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, '[security]\nmode = "plain"\n' + text)
    assert e.value.key == key


def test_unknown_key_suggests_the_known_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'listen'"):
        cfg(tmp_path, '[security]\nmode = "plain"\n[collector]\nlistne = "tcp://*:5557"\n')


def test_example_config_is_valid_apart_from_its_key_files():
    here = os.path.join(os.path.dirname(__file__), "..", "..", "collector", "examples", "collector.toml")
    with pytest.raises(ConfigError) as e:
        ccfg.load(here)
    assert e.value.key == "security.server_key"  # the example names key files the user makes

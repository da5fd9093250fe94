"""The collector's stores -- the embedded DuckDB one and the ClickHouse one (each test runs on
both engines, ClickHouse on a real 18.16 server): durable dedup'd ingest, the cross-host flow
merge, queries, health and export. Expected values are computed here in plain Python, never by
the store's SQL."""
import csv
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from capfan.records import empty, pack_address

# the tree's own collector/ (pytest puts the repository root on sys.path): an editable install may
# map capfan.collector to another checkout
from capfan.collector.chstore import ClickHouseStore
from capfan.collector.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S


def rec(src, dst, sport, dport, start, end, p=1, rp=0, b=100, rb=0, vlan=0, proto=6):
    """One flow observation; start/end in seconds after T0, bytes are frame bytes."""
    r = empty(1)
    r["sourceIPAddress"] = np.frombuffer(pack_address(src), "V16")
    r["destinationIPAddress"] = np.frombuffer(pack_address(dst), "V16")
    r["sourceTransportPort"], r["destinationTransportPort"] = sport, dport
    r["flowStartNanoseconds"], r["flowEndNanoseconds"] = T0 + int(start * S), T0 + int(end * S)
    r["packetDeltaCount"], r["reversePacketDeltaCount"] = p, rp
    r["layer2OctetDeltaCount"], r["reverseLayer2OctetDeltaCount"] = b, rb
    r["octetDeltaCount"], r["reverseOctetDeltaCount"] = b, rb
    r["vlanId"], r["protocolIdentifier"] = vlan, proto
    r["ipVersion"] = 6 if ":" in src else 4
    return r


def batch(*records):
    return np.concatenate(records) if records else empty(0)


@pytest.fixture(params=["duckdb", "clickhouse"])
def engine(request):
    """Which store the test runs on."""
    return request.param


@pytest.fixture
def open_store(engine, tmp_path, request):
    """open_store(name, **kw): open (or reopen) the store `name` of this test on its engine;
    open_store.spec(name): the JSON a child process passes to open_spec() for the same store."""
    opened = []
    if engine == "clickhouse":
        srv = request.getfixturevalue("clickhouse")
        prefix = "t_" + uuid.uuid4().hex[:10]

    def spec(name="c"):
        if engine == "duckdb":
            return json.dumps({"engine": engine, "path": str(tmp_path / f"{name}.duckdb")})
        return json.dumps({"engine": engine, "host": srv.host, "port": srv.port, "database": f"{prefix}_{name}",
                           "collector_id": "c1"})

    def open_(name="c", **kw):
        s = open_spec(spec(name), **kw)
        opened.append(s)
        return s

    open_.spec = spec
    yield open_
    for s in opened:
        s.close()


def open_spec(spec: str, **kw):
    """A store from a spec of open_store (also used by the child processes below)."""
    d = json.loads(spec)
    if d.pop("engine") == "duckdb":
        return Store(d["path"], **kw)
    return ClickHouseStore(**d, **kw)


@pytest.fixture
def db(open_store):
    return open_store("c", merge_window_s=60)


class Feed:
    """Ingests observations with increasing per-host seqs."""

    def __init__(self, store):
        self.store, self.seq = store, {}

    def __call__(self, host, *records, source="eth0.q0/flowmeter"):
        self.seq[host] = self.seq.get(host, 0) + 1
        assert self.store.ingest(host, self.seq[host], "flows", source, batch(*records))


# -- durability and dedup ---------------------------------------------------------------------

def test_duplicate_batch_is_stored_once_also_after_reopen(open_store):
    s = open_store("d")
    b = batch(rec("10.0.0.1", "10.0.0.2", 1000, 80, 0, 1, p=3, b=300))
    assert s.ingest("h1", 7, "flows", "q0", b) is True
    assert s.ingest("h1", 7, "flows", "q0", b) is False
    assert s.ingest("h2", 7, "flows", "q0", b) is True  # seq is per host
    s.close()
    s = open_store("d")
    assert s.ingest("h1", 7, "flows", "q0", b) is False
    assert s.totals() == {"flows": 1, "packets": 3, "bytes": 300}  # h2 saw the same packets
    hosts = {h["host"]: h for h in s.health() if h["source"] is None}
    assert hosts["h1"]["batches"] == 1 and hosts["h1"]["records"] == 1 and hosts["h1"]["duplicates"] == 2
    assert hosts["h2"]["duplicates"] == 0
    s.close()
    ro = open_store("d", read_only=True)
    assert ro.totals()["packets"] == 3
    with pytest.raises(StoreError, match="read-only"):
        ro.ingest("h1", 8, "flows", "q0", b)
    ro.close()


def test_read_only_open_of_missing_store_fails(open_store):
    with pytest.raises(StoreError, match="does not exist"):
        open_store("nope", read_only=True)


def test_flows_stream_needs_flow_records(db):
    with pytest.raises(StoreError, match="fields missing"):
        db.ingest("h1", 1, "flows", "q0", np.zeros(2, [("x", "<u4")]))
    with pytest.raises(StoreError, match="seq"):
        db.ingest("h1", 0, "flows", "q0", empty(1))
    assert db.ingest("h1", 1, "flows", "q0", empty(0)) is True  # the failed batch left nothing


CHILD = textwrap.dedent("""
    import importlib
    import sys
    import numpy as np
    from capfan.records import empty, pack_address
    s = importlib.import_module(sys.argv[3]).open_spec(sys.argv[1])  # this test module's opener
    n = int(sys.argv[2])
    seq = 0
    while True:
        seq += 1
        b = empty(n)
        b["sourceTransportPort"] = seq          # which batch
        b["destinationTransportPort"] = np.arange(n)  # n distinct flows per batch
        b["packetDeltaCount"] = 1
        b["sourceIPAddress"] = np.frombuffer(pack_address("10.0.0.1"), "V16")
        b["destinationIPAddress"] = np.frombuffer(pack_address("10.0.0.2"), "V16")
        s.ingest("h1", seq, "flows", "q0", b)
        print(seq, flush=True)
""")


def kill9_after(script: str, path: str, n: int, acks: int) -> list[int]:
    """Run a child that ingests into the store of spec `path` and prints each acked seq; SIGKILL it
    after `acks` of them; every seq it printed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in sys.path if p]))
    proc = subprocess.Popen([sys.executable, "-c", script, path, str(n), __name__], stdout=subprocess.PIPE,
                            text=True, env=env)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) == acks:
                break
        os.kill(proc.pid, signal.SIGKILL)
        acked += [int(x) for x in proc.stdout]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_kill9_keeps_every_acked_batch_whole(open_store):
    n = 3000
    acked = kill9_after(CHILD, open_store.spec("crash"), n, 25)
    s = open_store("crash")
    per_seq = {r["sport"]: r["flows"] for r in s.top(by="flows", group=["sport"], limit=10_000)}
    assert set(acked) <= set(per_seq)
    assert set(per_seq.values()) == {n}  # no partial batch
    assert max(per_seq) - max(acked) <= 1  # at most the batch in flight when killed
    hosts = [h for h in s.health() if h["source"] is None]
    assert hosts[0]["batches"] == len(per_seq) and hosts[0]["records"] == n * len(per_seq)
    assert s.ingest("h1", max(per_seq) + 1, "flows", "q0", empty(1)) is True  # writable again
    s.close()


# -- ingest_many, checkpoint, schema version ------------------------------------------------

def flows_batch(seq, n=3):
    """n distinct flows tagged with the batch's seq (sport)."""
    return batch(*[rec("10.0.0.1", "10.0.0.2", seq, 1000 + i, 0, 1, p=1, b=10) for i in range(n)])


def stored_seqs(s):
    return {(h["host"], h["batches"], h["records"]) for h in s.health() if h["source"] is None}


def test_ingest_many_duplicates_within_and_across_calls(open_store):
    s = open_store("m")
    assert s.checkpoint() is None
    got = s.ingest_many([("h1", 1, "flows", "q0", flows_batch(1)), ("h1", 2, "flows", "q0", flows_batch(2)),
                         ("h1", 1, "flows", "q0", flows_batch(1)),          # duplicate within the list
                         ("h2", 1, "flows", "q0", flows_batch(1, 2)),        # seq is per host
                         ("h2", 2, "health", "q0", np.array([(5,)], [("kernel_drops", "<u8")]))],
                        checkpoint=(1, 500))
    assert got == [True, True, False, True, True]
    assert s.checkpoint() == (1, 500)
    got = s.ingest_many([("h1", 2, "flows", "q0", flows_batch(2)), ("h1", 3, "flows", "q0", flows_batch(3)),
                         ("h2", 2, "health", "q0", np.array([(6,)], [("kernel_drops", "<u8")]))],
                        checkpoint=(1, 900))
    assert got == [False, True, False]  # duplicates of an earlier call
    assert s.ingest("h1", 3, "flows", "q0", flows_batch(3)) is False
    assert s.ingest_many([], checkpoint=(2, 0)) == [] and s.checkpoint() == (2, 0)
    s.close()
    s = open_store("m")
    assert s.checkpoint() == (2, 0)
    assert s.ingest_many([("h1", 1, "flows", "q0", flows_batch(1))]) == [False]
    assert s.checkpoint() == (2, 0)  # no checkpoint given: the saved one stays
    hosts = {h["host"]: h for h in s.health() if h["source"] is None}
    assert (hosts["h1"]["batches"], hosts["h1"]["records"], hosts["h1"]["duplicates"]) == (3, 9, 4)
    assert (hosts["h2"]["batches"], hosts["h2"]["records"], hosts["h2"]["duplicates"]) == (2, 3, 1)
    per_seq = {r["sport"]: r["flows"] for r in s.top(by="flows", group=["sport"], where={"dst": "10.0.0.2"})}
    assert per_seq == {1: 3, 2: 3, 3: 3}  # h2's seq-1 flows are h1's first two, counted once
    assert [h["kernel_drops"] for h in s.health() if h["source"] == "q0" and h["host"] == "h2"] == [5]
    s.close()


def test_ingest_many_is_all_or_nothing(open_store, engine, monkeypatch):
    s = open_store("a")
    assert s.ingest("h1", 1, "flows", "q0", flows_batch(1))
    good = [("h1", 2, "flows", "q0", flows_batch(2)), ("h2", 1, "stats", "q0", np.array([(1,)], [("x", "<u8")]))]
    with pytest.raises(StoreError, match="fields missing"):  # a bad batch mid-list: checked first
        s.ingest_many(good + [("h1", 3, "flows", "q0", np.zeros(2, [("x", "<u4")]))] + good, checkpoint=(1, 1))
    with pytest.raises(StoreError, match="seq"):
        s.ingest_many(good + [("h1", 0, "flows", "q0", flows_batch(3))])
    with pytest.raises(StoreError, match="checkpoint"):
        s.ingest_many(good, checkpoint=(1, "x"))

    # a failure inside the transaction, after some rows went in: everything of the call is rolled back
    class Boom(Exception):
        pass

    if engine == "duckdb":
        real = s._cur()

        class FailingCursor:
            def __getattr__(self, name):
                return getattr(real, name)

            def execute(self, sql, *a):
                if sql.startswith("INSERT INTO records"):
                    raise Boom()
                return real.execute(sql, *a)

        s._local.cur = FailingCursor()
    else:
        real_insert = s._insert  # the obs rows of the call are in when the records insert fails

        def failing_insert(table, columns):
            if table == "records":
                raise Boom()
            return real_insert(table, columns)

        monkeypatch.setattr(s, "_insert", failing_insert)
    with pytest.raises(Boom):
        s.ingest_many(good + [("h1", 1, "flows", "q0", flows_batch(1))], checkpoint=(1, 2))
    if engine == "duckdb":
        s._local.cur = real
    else:
        monkeypatch.setattr(s, "_insert", real_insert)
    assert s.checkpoint() is None
    assert stored_seqs(s) == {("h1", 1, 3)}
    assert s.totals()["flows"] == 3
    assert [h["duplicates"] for h in s.health() if h["source"] is None] == [0]
    assert s.ingest_many(good, checkpoint=(1, 3)) == [True, True]  # the store is fine afterwards
    assert s.checkpoint() == (1, 3) and s.totals()["flows"] == 6
    s.close()


def test_schema_version_is_checked_duckdb(tmp_path):
    path = str(tmp_path / "v.duckdb")
    Store(path).close()
    con = duckdb.connect(path)
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    for ro in (False, True):
        with pytest.raises(StoreError, match="schema version 1.*version 2"):
            Store(path, read_only=ro)
    old = str(tmp_path / "old.duckdb")  # the first layout: no meta table
    con = duckdb.connect(old)
    con.execute("CREATE TABLE batches(host VARCHAR, seq UBIGINT)")
    con.close()
    with pytest.raises(StoreError, match="no schema version"):
        Store(old)


CHILD_MANY = textwrap.dedent("""
    import importlib
    import sys
    import numpy as np
    from capfan.records import empty, pack_address
    s = importlib.import_module(sys.argv[3]).open_spec(sys.argv[1])
    n = int(sys.argv[2])
    group = 0
    while True:
        group += 1
        items = []
        for k in range(4):  # 4 batches per transaction, seq = 4 * (group - 1) + k + 1
            seq = 4 * (group - 1) + k + 1
            b = empty(n)
            b["sourceTransportPort"] = seq
            b["destinationTransportPort"] = np.arange(n)
            b["packetDeltaCount"] = 1
            b["sourceIPAddress"] = np.frombuffer(pack_address("10.0.0.1"), "V16")
            b["destinationIPAddress"] = np.frombuffer(pack_address("10.0.0.2"), "V16")
            items.append(("h1", seq, "flows", "q0", b))
        s.ingest_many(items, checkpoint=(group, 4 * group))
        print(group, flush=True)
""")


def test_kill9_checkpoint_and_data_stay_consistent(open_store):
    n = 2000
    acked = kill9_after(CHILD_MANY, open_store.spec("crash_many"), n, 8)
    s = open_store("crash_many")
    group, last_seq = s.checkpoint()
    assert max(acked) <= group <= max(acked) + 1  # at most the transaction in flight when killed
    assert last_seq == 4 * group
    per_seq = {r["sport"]: r["flows"] for r in s.top(by="flows", group=["sport"], limit=10_000)}
    assert set(per_seq) == set(range(1, 4 * group + 1))  # exactly the data the checkpoint covers
    assert set(per_seq.values()) == {n}
    s.close()
    ro = open_store("crash_many", read_only=True)
    assert ro.checkpoint() == (group, 4 * group)
    ro.close()


# -- the merge --------------------------------------------------------------------------------

def test_same_flow_seen_by_two_hosts_counts_once(db):
    feed = Feed(db)
    feed("h1", rec("10.0.0.1", "10.0.0.2", 40000, 443, 0, 5, p=10, rp=8, b=5000, rb=4000))
    feed("h2", rec("10.0.0.1", "10.0.0.2", 40000, 443, 0.001, 5.001, p=10, rp=7, b=5000, rb=3500))
    (f,) = db.flows()
    assert (f["src"], f["dst"], f["sport"], f["dport"], f["proto"], f["vlan"]) == \
        ("10.0.0.1", "10.0.0.2", 40000, 443, 6, 0)
    assert (f["packets"], f["reverse_packets"], f["bytes"], f["reverse_bytes"]) == (10, 8, 5000, 4000)
    assert f["observers"] == ["h1", "h2"] and f["n_observations"] == 2
    assert (f["start_ns"], f["end_ns"]) == (T0, T0 + int(5.001 * S))
    assert f["sources"] == ["h1:eth0.q0/flowmeter", "h2:eth0.q0/flowmeter"]


def test_half_flows_from_two_hosts_are_stitched(db):
    feed = Feed(db)
    # the server's sensor sees only replies, reported with the server as source, later
    feed("h2", rec("10.0.0.2", "10.0.0.1", 443, 40000, 1.5, 9, p=6, b=6000))
    feed("h1", rec("10.0.0.1", "10.0.0.2", 40000, 443, 1, 8, p=4, b=400))
    (f,) = db.flows()
    assert (f["src"], f["sport"], f["dst"], f["dport"]) == ("10.0.0.1", 40000, "10.0.0.2", 443)
    assert (f["packets"], f["reverse_packets"], f["bytes"], f["reverse_bytes"]) == (4, 6, 400, 6000)
    assert f["observers"] == ["h1", "h2"]


def test_active_timeout_slices_of_one_host_are_summed(db):
    feed = Feed(db)
    feed("h1", rec("10.0.0.1", "10.0.0.2", 5000, 53, 0, 30, p=3, rp=3, b=300, rb=600, proto=17))
    feed("h1", rec("10.0.0.1", "10.0.0.2", 5000, 53, 30, 60, p=2, rp=1, b=200, rb=150, proto=17))
    feed("h2", rec("10.0.0.1", "10.0.0.2", 5000, 53, 0, 60, p=5, rp=4, b=500, rb=700, proto=17))
    (f,) = db.flows()
    # h1: 5/4 packets, 500/750 bytes summed; h2: 5/4, 500/700 -> max per direction
    assert (f["packets"], f["reverse_packets"], f["bytes"], f["reverse_bytes"]) == (5, 4, 500, 750)
    assert f["n_observations"] == 3 and f["observers"] == ["h1", "h2"]


def test_sessions_far_apart_stay_separate_and_vlan_splits(db):
    feed = Feed(db)
    feed("h1", rec("10.0.0.1", "10.0.0.2", 5000, 80, 0, 10, p=1),
         rec("10.0.0.1", "10.0.0.2", 5000, 80, 70, 80, p=2),        # 60 s after the end: same flow
         rec("10.0.0.1", "10.0.0.2", 5000, 80, 141, 150, p=4),      # 61 s after: a new session
         rec("10.0.0.1", "10.0.0.2", 5000, 80, 0, 10, p=8, vlan=7))  # another VLAN
    got = sorted((f["vlan"], f["start_ns"], f["packets"]) for f in db.flows())
    assert got == [(0, T0, 3), (0, T0 + 141 * S, 4), (7, T0, 8)]


def test_merge_window_is_configurable(open_store):
    s = open_store("w", merge_window_s=0)
    feed = Feed(s)
    feed("h1", rec("10.0.0.1", "10.0.0.2", 1, 2, 0, 10), rec("10.0.0.1", "10.0.0.2", 1, 2, 10, 20),
         rec("10.0.0.1", "10.0.0.2", 1, 2, 20.5, 30))
    assert [f["n_observations"] for f in s.flows()] == [2, 1]
    s.close()


def test_ipv6_flow(db):
    feed = Feed(db)
    feed("h1", rec("2001:db8::1", "2001:db8::ff", 5353, 5353, 0, 1, p=2, b=300, proto=17))
    feed("h2", rec("2001:db8::ff", "2001:db8::1", 5353, 5353, 0.5, 2, p=9, b=900, proto=17))
    (f,) = db.flows()
    assert (f["src"], f["dst"]) == ("2001:db8::1", "2001:db8::ff")
    assert (f["packets"], f["reverse_packets"]) == (2, 9)
    assert db.flows(where={"addr": "2001:db8::/64"}) == [f]
    assert db.flows(where={"addr": "10.0.0.0/8"}) == []


# -- queries ----------------------------------------------------------------------------------

@pytest.fixture
def net(db):
    """Three hosts, several flows; returns the store."""
    feed = Feed(db)
    feed("h1", rec("10.0.0.1", "10.0.0.9", 1001, 80, 0, 10, p=10, rp=10, b=1000, rb=9000),
         rec("10.0.0.2", "10.0.0.9", 1002, 80, 100, 110, p=1, rp=1, b=100, rb=100),
         rec("10.0.0.1", "10.0.0.8", 1003, 22, 200, 210, p=50, rp=40, b=5000, rb=4000),
         source="eth0.q0/flowmeter")
    feed("h2", rec("10.0.0.9", "10.0.0.1", 80, 1001, 0.5, 10, p=10, b=9000),     # reply half of flow 1
         rec("10.0.0.3", "10.0.0.9", 1004, 443, 300, 310, p=3, rp=3, b=300, rb=300, proto=6, vlan=5),
         source="eth1.q0/flowmeter")
    feed("h3", rec("10.0.0.1", "10.0.0.8", 1003, 22, 200, 210, p=50, rp=40, b=5000, rb=4000),  # dup of flow 3
         rec("10.0.0.4", "10.0.0.9", 1005, 53, 400, 401, p=1, rp=1, b=80, rb=200, proto=17),
         source="eth2.q1/flowmeter")
    return db


def test_top_by_bytes_packets_flows(net):
    assert net.top(by="bytes", group=["src", "dst"], limit=3) == [
        {"src": "10.0.0.1", "dst": "10.0.0.9", "bytes": 10000, "packets": 20, "flows": 1},
        {"src": "10.0.0.1", "dst": "10.0.0.8", "bytes": 9000, "packets": 90, "flows": 1},
        {"src": "10.0.0.3", "dst": "10.0.0.9", "bytes": 600, "packets": 6, "flows": 1}]
    assert [(r["src"], r["packets"]) for r in net.top(by="packets", group="src")] == [
        ("10.0.0.1", 110), ("10.0.0.3", 6), ("10.0.0.2", 2), ("10.0.0.4", 2)]
    assert net.top(by="flows", group=["dst"]) == [
        {"dst": "10.0.0.9", "bytes": 10000 + 200 + 600 + 280, "packets": 30, "flows": 4},
        {"dst": "10.0.0.8", "bytes": 9000, "packets": 90, "flows": 1}]


def test_top_group_keys(net):
    assert net.top(by="flows", group=["host"]) == [
        {"host": "h1", "bytes": 19200, "packets": 112, "flows": 3},
        {"host": "h2", "bytes": 10600, "packets": 26, "flows": 2},
        {"host": "h3", "bytes": 9280, "packets": 92, "flows": 2}]
    assert net.top(group=["host", "source"], by="flows", limit=1) == [
        {"host": "h1", "source": "eth0.q0/flowmeter", "bytes": 19200, "packets": 112, "flows": 3}]
    assert net.top(group=["proto", "vlan"], by="flows") == [
        {"proto": 6, "vlan": 0, "bytes": 19200, "packets": 112, "flows": 3},
        {"proto": 6, "vlan": 5, "bytes": 600, "packets": 6, "flows": 1},
        {"proto": 17, "vlan": 0, "bytes": 280, "packets": 2, "flows": 1}]
    assert net.top(group=["dport"], by="bytes", limit=1) == [
        {"dport": 80, "bytes": 10200, "packets": 22, "flows": 2}]
    assert net.top(group="pair", by="bytes", limit=1, where={"port": 80}) == [
        {"pair": ["10.0.0.1", "10.0.0.9"], "bytes": 10000, "packets": 20, "flows": 1}]
    assert net.top(group=["sport"], limit=1)[0]["sport"] == 1001


def test_top_time_range_and_filters(net):
    # flows overlapping [150 s, 305 s): flow 3 (200-210) and flow 4 (300-310)
    got = net.top(by="bytes", group=["src", "dport"], start_ns=T0 + 150 * S, end_ns=T0 + 305 * S)
    assert got == [{"src": "10.0.0.1", "dport": 22, "bytes": 9000, "packets": 90, "flows": 1},
                   {"src": "10.0.0.3", "dport": 443, "bytes": 600, "packets": 6, "flows": 1}]
    assert net.top(group=["src"], where={"vlan": 5}) == [
        {"src": "10.0.0.3", "bytes": 600, "packets": 6, "flows": 1}]
    assert net.top(group=["src"], where={"host": "h3", "proto": 6}) == [
        {"src": "10.0.0.1", "bytes": 9000, "packets": 90, "flows": 1}]
    with pytest.raises(StoreError, match="by 'octets'"):
        net.top(by="octets")
    with pytest.raises(StoreError, match="group key 'mac'"):
        net.top(group=["mac"])


def test_range_keeps_merged_flow_whole(db):
    feed = Feed(db)
    feed("h1", rec("10.0.0.1", "10.0.0.2", 1, 2, 0, 30, p=5), rec("10.0.0.1", "10.0.0.2", 1, 2, 30, 60, p=7))
    (f,) = db.flows(start_ns=T0 + 45 * S)
    assert f["packets"] == 12 and f["start_ns"] == T0
    assert db.flows(end_ns=T0) == []  # end is exclusive
    assert len(db.flows(end_ns=T0 + 1)) == 1


def srcs(flows):
    return sorted((f["src"], f["sport"]) for f in flows)


def test_flow_filter_forms(net):
    assert srcs(net.flows(where={"src": "10.0.0.1"})) == [("10.0.0.1", 1001), ("10.0.0.1", 1003)]
    assert srcs(net.flows(where={"src": ["10.0.0.2", "10.0.0.3"]})) == [("10.0.0.2", 1002), ("10.0.0.3", 1004)]
    assert srcs(net.flows(where={"dst": "10.0.0.8"})) == [("10.0.0.1", 1003)]
    assert net.flows(where={"src": "10.0.0.9"}) == []  # 10.0.0.9 is only ever the responder
    assert len(net.flows(where={"addr": "10.0.0.9"})) == 4
    assert len(net.flows(where={"addr": "10.0.0.0/30"})) == 4  # .1 .2 .3 (and .0)
    assert srcs(net.flows(where={"sport": 1002})) == [("10.0.0.2", 1002)]
    assert net.flows(where={"sport": 80}) == []
    assert len(net.flows(where={"port": 80})) == 2
    assert srcs(net.flows(where={"dport": [22, 53]})) == [("10.0.0.1", 1003), ("10.0.0.4", 1005)]
    assert srcs(net.flows(where={"proto": 17})) == [("10.0.0.4", 1005)]
    assert srcs(net.flows(where={"vlan": [5]})) == [("10.0.0.3", 1004)]
    assert srcs(net.flows(where={"host": ["h2"]})) == [("10.0.0.1", 1001), ("10.0.0.3", 1004)]
    assert srcs(net.flows(where={"host": "h3", "dport": 53})) == [("10.0.0.4", 1005)]
    assert len(net.flows(limit=2)) == 2
    with pytest.raises(StoreError, match="unknown filter 'ip'"):
        net.flows(where={"ip": "10.0.0.1"})
    with pytest.raises(StoreError, match="not an IP address"):
        net.flows(where={"src": "10.0.0.300"})
    with pytest.raises(StoreError, match="integers"):
        net.flows(where={"port": "http"})


def test_totals(net):
    assert net.totals() == {"flows": 5, "packets": 20 + 2 + 90 + 6 + 2, "bytes": 10000 + 200 + 9000 + 600 + 280}
    assert net.totals(start_ns=T0 + 250 * S, end_ns=T0 + 400 * S) == {"flows": 1, "packets": 6, "bytes": 600}
    assert net.totals(where={"proto": 17}) == {"flows": 1, "packets": 2, "bytes": 280}


# -- health and other streams -----------------------------------------------------------------

def test_health_per_host_and_source_with_health_stream(db):
    feed = Feed(db)
    feed("h1", rec("10.0.0.1", "10.0.0.2", 1, 2, 0, 1), rec("10.0.0.1", "10.0.0.3", 1, 2, 0, 1), source="q0")
    hd = np.dtype([("kernel_drops", "<u8"), ("ring_drops", "<u8"), ("nic_drops", "<u8"), ("iface", "S8")])
    h_old = np.array([(1, 2, 3, b"eth0")], hd)
    h_new = np.array([(4, 5, 6, b"eth0"), (7, 8, 9, b"eth0")], hd)
    assert db.ingest("h1", 2, "health", "q0", h_old)
    assert db.ingest("h1", 3, "health", "q0", h_new)
    stats = np.array([(1.5, 10)], [("rate", "<f8"), ("packets", "<u8")])
    assert db.ingest("h2", 1, "stats", "q1", stats)
    assert not db.ingest("h2", 1, "stats", "q1", stats)
    by = {(h["host"], h["source"]): h for h in db.health()}
    assert set(by) == {("h1", None), ("h2", None), ("h1", "q0"), ("h2", "q1")}
    assert {k: by[("h1", None)][k] for k in ("batches", "records", "duplicates")} == \
        {"batches": 3, "records": 5, "duplicates": 0}
    assert {k: by[("h2", None)][k] for k in ("batches", "records", "duplicates")} == \
        {"batches": 1, "records": 1, "duplicates": 1}
    q0 = by[("h1", "q0")]
    assert (q0["kernel_drops"], q0["ring_drops"], q0["nic_drops"], q0["iface"]) == (7, 8, 9, "eth0")
    assert q0["batches"] == 3 and q0["records"] == 5
    assert "kernel_drops" not in by[("h2", "q1")]
    assert by[("h1", None)]["last_seen_ns"] >= by[("h1", "q0")]["last_seen_ns"] > 0
    assert db.totals()["flows"] == 2  # other streams never leak into flows


# -- export -----------------------------------------------------------------------------------

def test_export_csv_and_parquet_round_trip(net, tmp_path):
    want = net.flows()
    n = net.export(str(tmp_path / "f.csv"), "csv")
    assert n == len(want) == 5
    with open(tmp_path / "f.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["src"], r["dst"], int(r["sport"]), int(r["bytes"]), int(r["reverse_bytes"]), r["observers"])
            for r in rows] == [(f["src"], f["dst"], f["sport"], f["bytes"], f["reverse_bytes"],
                                " ".join(f["observers"])) for f in want]
    assert net.export(str(tmp_path / "f.parquet"), "parquet", where={"port": 80}) == 2
    t = pq.read_table(tmp_path / "f.parquet").to_pylist()
    assert [{k: r[k] for k in ("src", "dst", "packets", "reverse_packets", "start_ns", "observers")} for r in t] \
        == [{k: f[k] for k in ("src", "dst", "packets", "reverse_packets", "start_ns", "observers")}
            for f in want if 80 in (f["sport"], f["dport"])]
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{tmp_path / 'f.parquet'}'").fetchone()[0] == 2
    with pytest.raises(StoreError, match="format 'json'"):
        net.export(str(tmp_path / "f.json"), "json")


# -- property: the SQL merge equals a plain-Python merge ------------------------------------------

def reference_merge(observations, window_ns):
    """The merge rule in plain Python: list of merged flows as comparable tuples."""
    by_key = {}
    for o in observations:
        ea, eb = (pack_address(o["src"]), o["sport"]), (pack_address(o["dst"]), o["dport"])
        fwd = ea <= eb
        a, b = (ea, eb) if fwd else (eb, ea)
        by_key.setdefault((o["vlan"], o["proto"], a, b), []).append((o, fwd))
    flows = []
    for key, obs in by_key.items():
        obs.sort(key=lambda x: (x[0]["start"], x[0]["end"], x[0]["host"], x[0]["seq"]))
        clusters, max_end = [], None
        for o, fwd in obs:
            if max_end is None or o["start"] > max_end + window_ns:
                clusters.append([])
            clusters[-1].append((o, fwd))
            max_end = o["end"] if max_end is None else max(max_end, o["end"])
        for cl in clusters:
            per_host = {}
            for o, fwd in cl:
                c = per_host.setdefault(o["host"], [0, 0, 0, 0])
                ab = (o["p"], o["b"]) if fwd else (o["rp"], o["rb"])
                ba = (o["rp"], o["rb"]) if fwd else (o["p"], o["b"])
                c[0] += ab[0]; c[1] += ba[0]; c[2] += ab[1]; c[3] += ba[1]
            p_ab, p_ba, b_ab, b_ba = (max(c[i] for c in per_host.values()) for i in range(4))
            first_fwd = cl[0][1]  # cl is in (start, end, host, seq) order
            (aa, ap), (ba_, bp) = key[2], key[3]
            if not first_fwd:
                (aa, ap), (ba_, bp), p_ab, p_ba, b_ab, b_ba = (ba_, bp), (aa, ap), p_ba, p_ab, b_ba, b_ab
            flows.append((str(ipaddress.ip_address(aa[12:] if aa[:12] == b"\0" * 10 + b"\xff\xff" else aa)),
                          str(ipaddress.ip_address(ba_[12:] if ba_[:12] == b"\0" * 10 + b"\xff\xff" else ba_)),
                          ap, bp, key[1], key[0], p_ab, p_ba, b_ab, b_ba,
                          min(o["start"] for o, _ in cl), max(o["end"] for o, _ in cl),
                          sorted({o["host"] for o, _ in cl}), len(cl)))
    return sorted(flows, key=repr)


@pytest.mark.parametrize("seed", range(3))
def test_merge_matches_python_reference(open_store, seed):
    rng = random.Random(seed)
    window = 5 * S
    s = open_store(f"p{seed}", merge_window_s=window / S)
    addrs = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "2001:db8::1", "2001:db8::2"]
    seqs, observations = {}, []
    for _ in range(40):
        host = rng.choice(["h1", "h2", "h3"])
        seqs[host] = seqs.get(host, 0) + 1
        rows = []
        for _ in range(rng.randint(0, 25)):
            fam = rng.choice([addrs[:3], addrs[3:]])
            a, b = rng.sample(fam, 2)
            pa_, pb = rng.choice([(1000, 80), (80, 1000), (53, 53)])
            start = rng.randint(0, 200) * S // 2
            o = {"host": host, "seq": seqs[host], "src": a, "dst": b, "sport": pa_, "dport": pb,
                 "vlan": rng.choice([0, 0, 3]), "proto": rng.choice([6, 17]), "start": T0 + start,
                 "end": T0 + start + rng.randint(0, 10) * S, "p": rng.randint(0, 50), "rp": rng.randint(0, 50),
                 "b": rng.randint(0, 10**6), "rb": rng.randint(0, 10**6)}
            observations.append(o)
            r = rec(a, b, pa_, pb, 0, 0, p=o["p"], rp=o["rp"], b=o["b"], rb=o["rb"], vlan=o["vlan"], proto=o["proto"])
            r["flowStartNanoseconds"], r["flowEndNanoseconds"] = o["start"], o["end"]
            rows.append(r)
        assert s.ingest(host, seqs[host], "flows", "q", batch(*rows))
    want = reference_merge(observations, window)
    got = sorted(((f["src"], f["dst"], f["sport"], f["dport"], f["proto"], f["vlan"], f["packets"],
                   f["reverse_packets"], f["bytes"], f["reverse_bytes"], f["start_ns"], f["end_ns"],
                   f["observers"], f["n_observations"]) for f in s.flows(limit=100_000)), key=repr)
    assert got == want
    assert s.totals() == {"flows": len(want), "packets": sum(f[6] + f[7] for f in want),
                          "bytes": sum(f[8] + f[9] for f in want)}
    s.close()

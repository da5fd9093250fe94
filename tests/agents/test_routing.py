"""route = "flow-hash": splitting flow batches per collector (agents/routing.py), split batches in
the spool, and the exporter delivering each part to its collector only, against test collectors
(ROUTER sockets in threads) on 127.0.0.1."""
import json
import os

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from capfan import records, statuscli, wire
from capfan.agents import exporter, metrics, spool
from capfan.agents.routing import FlowHashSplit
from capfan.flowkey import flow_shard
from tests.agents.test_exporter import HOST, Running, free_port, make
from tests.agents.test_exporter import Collector as ExporterTestCollector
from tests.conftest import wait_for

EPS = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]


def flows(ids, seed=0):
    """Flow records with varied keys; packetDeltaCount = the record's id (to count losses/duplicates)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    r = records.empty(n)
    raw = np.zeros((n, 16), dtype=np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = rng.integers(0, 256, (n, 4))
    r["sourceIPAddress"] = raw.view("V16").ravel()
    raw[:, 15] ^= 1
    r["destinationIPAddress"] = raw.view("V16").ravel()
    r["sourceTransportPort"] = rng.integers(1024, 65536, n)
    r["destinationTransportPort"] = rng.choice([53, 80, 443], n)
    r["protocolIdentifier"] = rng.choice([6, 17], n)
    r["packetDeltaCount"] = ids
    return r


HEALTH = np.zeros(2, dtype=[("rx", "<u8"), ("drops", "<u8")])


# ------------------------------------------------------------------------------ the split

def test_split_sends_each_record_to_its_shard_and_keeps_order():
    r = flows(np.arange(1000))
    parts = FlowHashSplit(EPS)("flows", r)
    shard = flow_shard(r, 3)
    assert set(parts) == set(EPS)
    for i, ep in enumerate(EPS):
        want = r[shard == i]
        assert parts[ep].dtype == records.FLOW_DTYPE and np.array_equal(parts[ep], want)
    assert sorted(np.concatenate([p["packetDeltaCount"] for p in parts.values()])) == list(range(1000))


def test_split_omits_empty_parts_and_leaves_other_streams_whole():
    r = flows(np.arange(50))
    only = r[flow_shard(r, 3) == 1]
    assert list(FlowHashSplit(EPS)("flows", only)) == [EPS[1]]
    assert FlowHashSplit(EPS)("health", HEALTH) is None
    one = FlowHashSplit(EPS[:1])("flows", r)
    assert list(one) == EPS[:1] and np.array_equal(one[EPS[0]], r)
    with pytest.raises(ValueError, match="distinct"):
        FlowHashSplit([EPS[0], EPS[0]])


# ------------------------------------------------------------------------------ the spool

def spooled(d, batches):
    w = spool.SpoolWriter(str(d), HOST, "eth0.q0/flowmeter", max_bytes=1 << 30)
    for stream, r in batches:
        w(stream, r)


def test_split_batches_in_the_spool(tmp_path):
    d = tmp_path / "s"
    r = flows(np.arange(300))
    spooled(d, [("flows", r), ("health", HEALTH)])
    sp = spool.Spool(str(d), host=HOST, split=FlowHashSplit(EPS[:2]))
    s_flow, s_health = sp.claim()
    assert sp.due(s_flow) == tuple(EPS[:2]) and sp.due(s_health) is None
    parts = sp.load_parts(s_flow)
    shard = flow_shard(r, 2)
    for i, ep in enumerate(EPS[:2]):
        nrec, frames = parts[ep]
        b = wire.decode(frames)
        assert (b.host, b.seq, b.stream, b.source) == (HOST, s_flow, "flows", "eth0.q0/flowmeter")
        assert nrec == len(b.records) == int((shard == i).sum())
        assert np.array_equal(b.records, r[shard == i])
    with pytest.raises(spool.SpoolError, match="load_parts"):
        sp.load(s_flow)
    assert wire.decode(sp.load(s_health)).stream == "health"
    # another process (a restarted exporter) reads the routing from the file
    sp2 = spool.Spool(str(d), host=HOST)
    assert sp2.due(s_flow) == tuple(EPS[:2]) and sp2.due(s_health) is None
    meta, _ = spool.read_file(os.path.join(d, "outgoing", f"{s_flow:020d}.batch"))
    assert meta["records"] == 300 and [p[0] for p in meta["parts"]] == EPS[:2]


def test_parts_of_a_removed_collector_go_back_to_incoming(tmp_path):
    d = tmp_path / "s"
    r = flows(np.arange(200))
    spooled(d, [("flows", r)])
    sp = spool.Spool(str(d), host=HOST, split=FlowHashSplit(EPS))
    (seq,) = sp.claim()
    shard = flow_shard(r, 3)
    assert sp.respool(seq, {EPS[0], EPS[2]}) == (EPS[0], EPS[2])
    left = sp.load_parts(seq)
    assert set(left) == {EPS[0], EPS[2]} and np.array_equal(wire.decode(left[EPS[2]][1]).records, r[shard == 2])
    sp2 = spool.Spool(str(d), host=HOST, split=FlowHashSplit(EPS[:1]))
    (new,) = sp2.claim()  # routed afresh over the current collectors
    assert new > seq and sp2.due(new) == (EPS[0],)
    assert np.array_equal(wire.decode(sp2.load_parts(new)[EPS[0]][1]).records, r[shard == 1])
    assert sp2.respool(seq, set()) == () and sp2.pending() == [new]


# ------------------------------------------------------------------------------ the exporter

class Collector(ExporterTestCollector):
    """A test collector that keeps every decoded batch and acks it (start/close: the exporter
    tests' collector)."""

    def __init__(self, port):
        super().__init__(port)
        self.batches = {}      # (host, seq) -> Batch (the first copy)

    def run(self):
        ctx = zmq.Context()
        r = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 0)
        r.bind(f"tcp://127.0.0.1:{self.port}")
        self.bound.set()
        try:
            while not self.stop_ev.is_set():
                if not r.poll(20):
                    continue
                ident, *frames = r.recv_multipart()
                b = wire.decode(frames)
                self.arrivals.append((b.host, b.seq))
                self.batches.setdefault((b.host, b.seq), b)
                r.send_multipart([ident, *wire.encode_ack([b.seq])])
        finally:
            r.close(0)
            ctx.term()

    def ids(self, stream="flows"):
        return sorted(int(x) for b in self.batches.values() if b.stream == stream
                      for x in b.records["packetDeltaCount"])


def spool_empty(d):
    st = spool.spool_stats(d)
    return st["incoming_batches"] == 0 and st["outgoing_batches"] == 0


def all_flows(n_batches, per=100):
    return [flows(np.arange(i * per, (i + 1) * per), seed=i) for i in range(n_batches)]


def test_each_collector_gets_its_flows_and_every_health_record(tmp_path):
    d = str(tmp_path / "spool")
    batches = all_flows(6)
    spooled(d, [("flows", b) for b in batches] + [("health", HEALTH)])
    ports = [free_port(), free_port()]
    cols = [Collector(p).start() for p in ports]
    run = Running(make(d, ports, route="flow-hash"))
    try:
        assert wait_for(lambda: spool_empty(d), 10), run.ex.stats()
        assert wait_for(lambda: run.ex.stats()["acked"] == 7, 5)
        st = run.ex.stats()
    finally:
        run.close()
        for c in cols:
            c.close()
    every = np.concatenate(batches)
    shard = flow_shard(every, 2)
    for i, c in enumerate(cols):
        assert c.ids() == sorted(every["packetDeltaCount"][shard == i].tolist())
        (health,) = [b for b in c.batches.values() if b.stream == "health"]  # whole, to both
        assert np.array_equal(health.records, HEALTH)
        assert len(c.arrivals) == len(set(c.arrivals)) == 7
    assert set(cols[0].batches) == set(cols[1].batches)  # one (host, seq) per agent batch on both
    assert st["route"] == "flow-hash" and st["pending"] == 0
    per = st["collectors"]
    assert [p["records_acked"] for p in per] == [int((shard == i).sum()) + len(HEALTH) for i in range(2)]
    assert [p["acked"] for p in per] == [7, 7]
    assert sum(p["records_sent"] for p in per) == len(every) + 2 * len(HEALTH)
    # `capfan status` and /metrics show each collector's share
    snap = {"workers": [{"id": "exporter", "kind": "exporter", "state": "running", "stats": st}]}
    lines = statuscli.export_lines(snap)
    assert lines[0].startswith("export (flows routed by flow hash): sent ")
    for i, p in enumerate(ports):
        line = next(ln for ln in lines if f"tcp://127.0.0.1:{p}:" in ln)
        assert f"sent {per[i]['sent']}, acked 7 ({per[i]['records_acked']} records)" in line, line
    fams = {s.name: s for f in text_string_to_metric_families(metrics.render(snap)) for s in f.samples
            if s.labels.get("endpoint") == f"tcp://127.0.0.1:{ports[1]}"}
    assert fams["capfan_export_collector_acked_records_total"].value == per[1]["records_acked"]
    assert fams["capfan_export_collector_sent_records_total"].value == per[1]["records_sent"]
    assert fams["capfan_export_collector_acked_batches_total"].value == 7
    assert fams["capfan_export_collector_sent_batches_total"].value == per[1]["sent"]


def test_a_collector_that_is_down_keeps_only_its_parts_spooled(tmp_path):
    d = str(tmp_path / "spool")
    batches = all_flows(5)
    # one batch whose flows all belong to collector 0: it is not due to collector 1 at all
    extra = flows(np.arange(10_000, 10_400), seed=99)
    only0 = extra[flow_shard(extra, 2) == 0]
    spooled(d, [("flows", b) for b in batches] + [("flows", only0)])
    p0, p1 = free_port(), free_port()
    c0 = Collector(p0).start()
    run = Running(make(d, [p0, p1], route="flow-hash"))
    c1 = None
    try:
        assert wait_for(lambda: len(c0.batches) == 6, 10), run.ex.stats()
        assert wait_for(lambda: run.ex.stats()["acked"] == 1, 5)  # the collector-0-only batch is done
        assert spool.spool_stats(d)["outgoing_batches"] == 5      # the rest wait for collector 1
        st = run.ex.stats()
        assert st["collectors"][1]["sent"] == 0 and not st["collectors"][1]["connected"]
        # the exporter restarts meanwhile: the spool files say which collectors are still due
        run.close()
        run = Running(make(d, [p0, p1], route="flow-hash"))
        c1 = Collector(p1).start()
        assert wait_for(lambda: spool_empty(d), 10), run.ex.stats()
    finally:
        run.close()
        c0.close()
        if c1 is not None:
            c1.close()
    every = np.concatenate([*batches, only0])
    shard = flow_shard(every, 2)
    assert c0.ids() == sorted(every["packetDeltaCount"][shard == 0].tolist())
    assert c1.ids() == sorted(every["packetDeltaCount"][shard == 1].tolist())
    assert len(c1.batches) == 5 and len(c1.arrivals) == len(set(c1.arrivals))  # sent once each
    assert sorted(c0.ids() + c1.ids()) == sorted(every["packetDeltaCount"].tolist())
    # collector 0 may see its parts again after the restart (at-least-once), under the same seq
    assert set(c0.arrivals) == set(c0.batches)


def test_removing_a_collector_routes_its_spooled_parts_to_the_others(tmp_path):
    d = str(tmp_path / "spool")
    batches = all_flows(4)
    spooled(d, [("flows", b) for b in batches])
    p0, p1 = free_port(), free_port()
    c0 = Collector(p0).start()
    run = Running(make(d, [p0, p1], route="flow-hash"))  # collector 1 never comes
    try:
        assert wait_for(lambda: len(c0.batches) == 4, 10), run.ex.stats()
        run.close()
        run = Running(make(d, [p0], route="flow-hash"))      # ... and is taken out of the config
        assert wait_for(lambda: spool_empty(d), 10), run.ex.stats()
    finally:
        run.close()
        c0.close()
    every = np.concatenate(batches)
    assert c0.ids() == sorted(every["packetDeltaCount"].tolist())  # nothing lost, nothing twice
    assert len(c0.batches) == 8                                    # 4 first parts + 4 re-routed


def test_flow_hash_exporter_refuses_a_collector_listed_twice(tmp_path):
    with pytest.raises(exporter.ExporterError, match="distinct"):
        make(str(tmp_path / "s"), [5, 5], route="flow-hash")
    with pytest.raises(exporter.ExporterError, match="route 'hash'"):
        make(str(tmp_path / "s"), [5], route="hash")


def test_a_split_batch_with_a_corrupt_parts_list_is_moved_to_rejected(tmp_path):
    d = tmp_path / "s"
    spooled(d, [("flows", flows(np.arange(100)))])
    sp = spool.Spool(str(d), host=HOST, split=FlowHashSplit(EPS[:2]))
    (seq,) = sp.claim()
    path = os.path.join(d, "outgoing", f"{seq:020d}.batch")
    meta, payload = spool.read_file(path)
    meta["parts"][0][2] += 1  # claims one frame more than the file has
    with open(path, "wb") as f:
        f.write(spool.MAGIC + json.dumps(meta).encode() + b"\n" + payload)
    assert spool.Spool(str(d), host=HOST).due(seq) is None  # unreadable routing: load_parts decides
    assert sp.load_parts(seq) is None and sp.pending() == []
    assert sorted(os.listdir(d / "rejected")) == [f"{seq:020d}.batch", f"{seq:020d}.reason"]
    assert "parts do not match" in (d / "rejected" / f"{seq:020d}.reason").read_text()

"""The exporter against test collectors (ROUTER sockets in threads) on 127.0.0.1: delivery, acks,
resend after a collector restart, CURVE authentication, several collectors, rejections."""
import os
import socket
import threading
import time

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from capfan.agents import exporter, spool
from capfan import keys, records, wire
from tests.conftest import wait_for

HOST = "sensor-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector(threading.Thread):
    """A minimal collector: ROUTER, decode, dedup by (host, seq), ack (or reject / hold back)."""

    def __init__(self, port, curve_keys=None, allow_dir=None, ack_first=None, reject_markers=()):
        super().__init__(daemon=True)
        self.port, self.curve_keys, self.allow_dir = port, curve_keys, allow_dir
        self.ack_first, self.reject_markers = ack_first, set(reject_markers)
        self.arrivals = []     # (host, seq) in arrival order, duplicates included
        self.markers = {}      # (host, seq) -> marker of the batch (packetDeltaCount[0])
        self.stop_ev = threading.Event()
        self.bound = threading.Event()

    def run(self):
        ctx = zmq.Context()
        auth = None
        if self.curve_keys is not None:
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=self.allow_dir)
        r = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 0)
        if self.curve_keys is not None:
            r.curve_server = True
            r.curve_publickey = self.curve_keys["public"].encode()
            r.curve_secretkey = self.curve_keys["secret"].encode()
        r.bind(f"tcp://127.0.0.1:{self.port}")
        self.bound.set()
        acked = 0
        try:
            while not self.stop_ev.is_set():
                if not r.poll(20):
                    continue
                ident, *frames = r.recv_multipart()
                b = wire.decode(frames)
                key = (b.host, b.seq)
                self.arrivals.append(key)
                marker = int(b.records["packetDeltaCount"][0])
                self.markers[key] = marker
                if marker in self.reject_markers:
                    r.send_multipart([ident, *wire.encode_ack([], {b.seq: "schema not accepted"})])
                elif self.ack_first is None or acked < self.ack_first:
                    acked += 1
                    r.send_multipart([ident, *wire.encode_ack([b.seq])])
        finally:
            r.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()

    def start(self):
        super().start()
        assert self.bound.wait(5)
        return self

    def close(self):
        self.stop_ev.set()
        self.join(5)

    def seqs(self):
        return {s for _, s in self.arrivals}


def emit_batches(spool_dir, n, per=3, start=0):
    """n batches of `per` flow records; batch i carries marker start+i in packetDeltaCount."""
    w = spool.SpoolWriter(spool_dir, HOST, "eth0.q0/flowmeter", max_bytes=1 << 30)
    for i in range(start, start + n):
        r = records.empty(per)
        r["packetDeltaCount"] = i
        w("flows", r)
    w.close()


class Running:
    """An Exporter running in a thread."""

    def __init__(self, ex):
        self.ex, self.stop = ex, threading.Event()
        self.t = threading.Thread(target=ex.run, args=(self.stop.is_set,), daemon=True)
        self.t.start()

    def close(self):
        self.stop.set()
        self.t.join(10)
        assert not self.t.is_alive()


def make(spool_dir, ports, curve=None, server_keys=None, **kw):
    cols = [{"endpoint": f"tcp://127.0.0.1:{p}", "server_key": (server_keys or {}).get(p)} for p in ports]
    kw.setdefault("reconnect_ivl_max", 0.2)
    kw.setdefault("heartbeat_ivl", 0.2)
    kw.setdefault("heartbeat_timeout", 1.0)
    return exporter.Exporter(spool_dir, HOST, cols, curve, **kw)


def spool_empty(d):
    st = spool.spool_stats(d)
    return st["incoming_batches"] == 0 and st["outgoing_batches"] == 0


def test_batches_are_sent_acked_and_deleted(tmp_path):
    d = str(tmp_path / "spool")
    emit_batches(d, 10)
    port = free_port()
    col = Collector(port).start()
    run = Running(make(d, [port]))
    try:
        assert wait_for(lambda: spool_empty(d), 10)
        assert wait_for(lambda: run.ex.stats()["acked"] == 10, 5)
        assert run.ex.idle()
        st = run.ex.stats()
    finally:
        run.close()
        col.close()
    assert sorted(col.markers.values()) == list(range(10))
    seqs = sorted(col.seqs())
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert all(h == HOST for h, _ in col.arrivals)
    assert st["acked"] == 10 and st["collectors"][0]["connected"] and st["pending"] == 0


def test_spooled_until_the_collector_starts_then_delivered_in_order(tmp_path):
    d = str(tmp_path / "spool")
    port = free_port()
    emit_batches(d, 5)
    run = Running(make(d, [port]))
    try:
        time.sleep(0.5)
        st = run.ex.stats()
        assert st["sent"] == 0 and st["pending"] == 5 and not st["collectors"][0]["connected"]
        assert not run.ex.idle()
        emit_batches(d, 5, start=5)  # more arrive while the collector is away
        col = Collector(port).start()
        assert wait_for(lambda: spool_empty(d), 10)
        col.close()
    finally:
        run.close()
    first = list(dict.fromkeys(col.arrivals))
    assert [s for _, s in first] == sorted(s for _, s in first)
    assert [col.markers[k] for k in first] == list(range(10))


def test_collector_killed_mid_stream_unacked_batches_are_resent(tmp_path):
    d = str(tmp_path / "spool")
    emit_batches(d, 20)
    port = free_port()
    col1 = Collector(port, ack_first=5).start()
    run = Running(make(d, [port]))
    try:
        assert wait_for(lambda: len(col1.seqs()) == 20, 10), run.ex.stats()
        col1.close()  # gone without acking 15 of them
        assert wait_for(lambda: spool.spool_stats(d)["outgoing_batches"] == 15, 5), run.ex.stats()
        col2 = Collector(port).start()
        assert wait_for(lambda: spool_empty(d), 10), (repr(run.ex.stats()), col2.is_alive(), len(col1.arrivals), col2.arrivals)
        col2.close()
    finally:
        run.close()
    st = run.ex.stats()
    got = {**col1.markers, **col2.markers}
    assert sorted(got.values()) == list(range(20))  # none lost
    assert set(col2.markers.values()) >= set(range(5, 20))  # every unacked one came again
    assert all(col2.markers[k] == col1.markers[k] for k in col2.markers if k in col1.markers)  # same seq, same batch
    assert st["resent"] >= 15 and st["collectors"][0]["disconnects"] >= 1


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    for name in ("collector", "agent-a", "agent-b"):
        keys.generate(name, str(d))
    allow = tmp_path / "allowed"
    allow.mkdir()
    (allow / "agent-a.key").write_text((d / "agent-a.key").read_text())
    return d, allow


def test_curve_collector_accepts_only_listed_agent_keys(tmp_path, keydir):
    kd, allow = keydir
    server = keys.load_keypair(kd / "collector.key_secret")
    port = free_port()
    col = Collector(port, curve_keys=server, allow_dir=str(allow)).start()
    d_a, d_b = str(tmp_path / "spool-a"), str(tmp_path / "spool-b")
    emit_batches(d_a, 4)
    emit_batches(d_b, 4, start=100)
    run_b = Running(make(d_b, [port], curve=keys.load_keypair(kd / "agent-b.key_secret"),
                         server_keys={port: server["public"]}))
    run_a = Running(make(d_a, [port], curve=keys.load_keypair(kd / "agent-a.key_secret"),
                         server_keys={port: server["public"]}))
    try:
        assert wait_for(lambda: spool_empty(d_a), 10)
        time.sleep(0.5)
        st_b = run_b.ex.stats()
    finally:
        run_a.close()
        run_b.close()
        col.close()
    assert sorted(col.markers.values()) == [0, 1, 2, 3]  # nothing from agent-b
    assert spool.spool_stats(d_b)["outgoing_batches"] == 4
    assert st_b["sent"] == 0 and not st_b["collectors"][0]["connected"]
    assert "authentication" in st_b["collectors"][0]["last_error"]


def test_curve_requires_server_keys_and_plain_rejects_them(tmp_path, keydir):
    kd, _ = keydir
    pair = keys.load_keypair(kd / "agent-a.key_secret")
    with pytest.raises(exporter.ExporterError, match="server_key"):
        exporter.Exporter(str(tmp_path / "s"), HOST, [{"endpoint": "tcp://127.0.0.1:1", "server_key": None}], pair)
    with pytest.raises(exporter.ExporterError, match="no key pair"):
        exporter.Exporter(str(tmp_path / "s"), HOST,
                          [{"endpoint": "tcp://127.0.0.1:1", "server_key": pair["public"]}], None)
    with pytest.raises(keys.KeyFileError, match="server_key"):
        exporter.Exporter(str(tmp_path / "s"), HOST, [{"endpoint": "tcp://127.0.0.1:1", "server_key": "short"}],
                          pair)


def test_two_collectors_spool_empties_only_when_both_acked(tmp_path):
    d = str(tmp_path / "spool")
    emit_batches(d, 8)
    p1, p2 = free_port(), free_port()
    c1 = Collector(p1).start()
    run = Running(make(d, [p1, p2]))
    try:
        assert wait_for(lambda: len(c1.seqs()) == 8, 10)
        time.sleep(0.3)
        assert spool.spool_stats(d)["outgoing_batches"] == 8  # c1 acked all, c2 has none
        c2 = Collector(p2).start()
        assert wait_for(lambda: spool_empty(d), 10)
        c2.close()
    finally:
        run.close()
        c1.close()
    assert sorted(c1.markers.values()) == sorted(c2.markers.values()) == list(range(8))


def test_permanently_rejected_batch_goes_to_rejected_dir(tmp_path):
    d = str(tmp_path / "spool")
    emit_batches(d, 5)
    port = free_port()
    col = Collector(port, reject_markers={3}).start()
    run = Running(make(d, [port]))
    try:
        assert wait_for(lambda: spool_empty(d), 10)
    finally:
        run.close()
        col.close()
    st = run.ex.stats()
    rej = sorted(os.listdir(os.path.join(d, "rejected")))
    seq3 = next(seq for (_, seq), marker in col.markers.items() if marker == 3)
    assert rej == [f"{seq3:020d}.batch", f"{seq3:020d}.reason"]
    with open(os.path.join(d, "rejected", rej[1])) as f:
        assert "schema not accepted" in f.read()
    meta, _ = spool.read_file(os.path.join(d, "rejected", rej[0]))
    assert meta["seq"] == seq3 and meta["records"] == 3
    assert st["rejected"] == 1 and st["acked"] == 4
    c = spool.spool_stats(d)
    assert c["rejected_batches"] == 1 and c["rejected_records"] == 3


def test_seqs_continue_across_exporter_restarts(tmp_path):
    d = str(tmp_path / "spool")
    port = free_port()
    col = Collector(port).start()
    try:
        for rnd in range(2):
            emit_batches(d, 3, start=10 * rnd)
            run = Running(make(d, [port]))
            assert wait_for(lambda: spool_empty(d), 10)
            run.close()
    finally:
        col.close()
    seqs = [s for _, s in col.arrivals]
    assert len(set(seqs)) == 6 and seqs == sorted(seqs)

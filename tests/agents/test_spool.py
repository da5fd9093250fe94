"""The on-disk spool: atomic batch files, crash-safe seq assignment, bounded size with counted drops."""
import io
import os

import numpy as np
import pytest

from capfan.agents import spool
from capfan import records, wire

HOST = "sensor-1"


def flows(marker, n=4):
    r = records.empty(n)
    r["packetDeltaCount"] = marker
    return r


def writer(d, max_bytes=1 << 30, policy="drop_oldest"):
    return spool.SpoolWriter(str(d), HOST, "eth0.q0/flowmeter", max_bytes, policy, scan_interval=0)


def markers(d):
    """Markers of the batches left in the spool, outgoing (decoded) then incoming."""
    sp = spool.Spool(str(d))
    out = [int(wire.decode(sp.load(s)).records["packetDeltaCount"][0]) for s in sp.pending()]
    inc_dir = os.path.join(d, "incoming")
    for name in sorted(n for n in os.listdir(inc_dir) if n.endswith(".batch")):
        _, payload = spool.read_file(os.path.join(inc_dir, name))
        out.append(int(np.lib.format.read_array(io.BytesIO(payload))["packetDeltaCount"][0]))
    return out


def batch_size(tmp_path):
    d = tmp_path / "probe"
    writer(d)("flows", flows(0))
    (f,) = os.listdir(d / "incoming")
    return os.path.getsize(d / "incoming" / f)


def test_claim_assigns_consecutive_seqs_and_the_batch_carries_them(tmp_path):
    d = tmp_path / "s"
    w = writer(d)
    for i in range(3):
        w("flows", flows(i))
    w("stats", [{"packets": 5, "iface": "eth0", "load": 0.5}, {"packets": 7}])
    sp = spool.Spool(str(d), host=HOST)
    seqs = sp.claim()
    assert len(seqs) == 4 and seqs == list(range(seqs[0], seqs[0] + 4)) and sp.pending() == seqs
    assert os.listdir(d / "incoming") == []
    b = [wire.decode(sp.load(s)) for s in seqs]
    assert [x.seq for x in b] == seqs
    assert [int(x.records["packetDeltaCount"][0]) for x in b[:3]] == [0, 1, 2]
    assert {(x.host, x.stream, x.source) for x in b[:3]} == {(HOST, "flows", "eth0.q0/flowmeter")}
    assert b[0].records.dtype == records.FLOW_DTYPE
    st = b[3].records
    assert b[3].stream == "stats" and st["packets"].tolist() == [5, 7] and st["iface"].tolist() == [b"eth0", b""]
    assert st["load"].tolist() == [0.5, 0.0]
    sp.ack(seqs[0])
    assert sp.pending() == seqs[1:] and sp.load(seqs[0]) is None


def test_a_crash_between_write_and_rename_leaves_no_visible_batch(tmp_path, monkeypatch):
    d = tmp_path / "s"
    w = writer(d)
    pid = os.fork()
    if pid == 0:  # the "analyzer": dies right after fsync, before the rename
        os.rename = lambda *a: os._exit(7)
        w("flows", flows(1))
        os._exit(0)
    assert os.waitpid(pid, 0)[1] >> 8 == 7
    names = os.listdir(d / "incoming")
    assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".tmp")
    sp = spool.Spool(str(d))
    assert sp.claim() == [] and sp.pending() == []
    monkeypatch.setattr(spool, "STALE_TMP_S", -1.0)  # old enough to be a dead writer's: removed
    assert sp.claim() == [] and os.listdir(d / "incoming") == []


def test_seqs_persist_across_reopen_and_a_crashed_claim_never_reuses_one(tmp_path):
    d = tmp_path / "s"
    w = writer(d)
    for i in range(3):
        w("flows", flows(i))
    first = spool.Spool(str(d)).claim()
    for i in range(3, 6):
        w("flows", flows(i))
    pid = os.fork()
    if pid == 0:  # the exporter dies after persisting next_seq, before claiming the first file
        real = os.rename
        os.rename = lambda src, dst: os._exit(7) if str(dst).endswith(".claim") else real(src, dst)
        spool.Spool(str(d)).claim()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] >> 8 == 7
    sp = spool.Spool(str(d))
    again = sp.claim()
    # the crashed round reserved first[-1]+1 .. first[-1]+3: they are skipped, not reused
    assert again == list(range(first[-1] + 4, first[-1] + 7))
    assert markers(d) == [0, 1, 2, 3, 4, 5]


def test_a_claim_interrupted_after_the_rename_is_finished_with_the_same_seq(tmp_path):
    d = tmp_path / "s"
    writer(d)("flows", flows(9))
    pid = os.fork()
    if pid == 0:  # dies after incoming -> <seq>.claim, before <seq>.batch exists
        real = os.rename
        os.rename = lambda src, dst: os._exit(7) if str(dst).endswith(".batch") else real(src, dst)
        spool.Spool(str(d)).claim()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] >> 8 == 7
    (claim,) = [n for n in os.listdir(d / "outgoing") if n.endswith(".claim")]
    sp = spool.Spool(str(d))
    seq = int(claim.split(".")[0])
    assert sp.pending() == [seq] and wire.decode(sp.load(seq)).seq == seq
    assert sorted(os.listdir(d / "outgoing")) == [f"{seq:020d}.batch"]
    assert sp.claim() == [] and sp.next_seq == seq + 1


def test_drop_oldest_deletes_the_oldest_batches_and_counts_them(tmp_path):
    size = batch_size(tmp_path)
    d = tmp_path / "s"
    w = writer(d, max_bytes=int(3.5 * size))
    for i in range(2):
        w("flows", flows(i))
    spool.Spool(str(d)).claim()  # 0 and 1 are outgoing now (re-encoded: sizes change)
    for i in range(2, 7):
        w("flows", flows(i))
    st = spool.spool_stats(str(d))
    assert st["spool_bytes"] <= 3.5 * size
    kept = markers(d)
    assert 2 <= len(kept) <= 4 and kept == list(range(7 - len(kept), 7))  # the newest survive, oldest (outgoing first) went
    assert st["dropped_batches"] == 7 - len(kept) and st["dropped_records"] == 4 * (7 - len(kept))
    assert st["refused_batches"] == 0 and w.dropped_batches == st["dropped_batches"]


def test_drop_new_refuses_new_batches_and_counts_them(tmp_path):
    size = batch_size(tmp_path)
    d = tmp_path / "s"
    w = writer(d, max_bytes=int(3.5 * size), policy="drop_new")
    for i in range(6):
        w("flows", flows(i))
    st = spool.spool_stats(str(d))
    assert markers(d) == [0, 1, 2]
    assert (st["refused_batches"], st["refused_records"], st["dropped_batches"]) == (3, 12, 0)


def test_a_batch_larger_than_the_whole_spool_is_refused_without_dropping_others(tmp_path):
    size = batch_size(tmp_path)
    d = tmp_path / "s"
    w = writer(d, max_bytes=2 * size)
    w("flows", flows(1))
    w("flows", flows(2, n=100))
    st = spool.spool_stats(str(d))
    assert markers(d) == [1] and (st["refused_batches"], st["refused_records"]) == (1, 100)


def test_counters_are_shared_by_writers_and_persist(tmp_path):
    size = batch_size(tmp_path)
    d = tmp_path / "s"
    a, b = writer(d, max_bytes=int(1.5 * size), policy="drop_new"), writer(d, max_bytes=int(1.5 * size), policy="drop_new")
    a("flows", flows(1))
    b("flows", flows(2))
    a("flows", flows(3))
    assert spool.spool_stats(str(d))["refused_batches"] == 2
    assert spool.SpoolWriter(str(d), HOST, "", 1 << 20) and spool.spool_stats(str(d))["refused_records"] == 8


def test_reject_and_corrupt_files_go_to_rejected(tmp_path):
    d = tmp_path / "s"
    w = writer(d)
    w("flows", flows(1))
    w("flows", flows(2))
    sp = spool.Spool(str(d))
    s1, s2 = sp.claim()
    sp.reject(s1, "schema not accepted")
    assert (d / "rejected" / f"{s1:020d}.reason").read_text() == "schema not accepted\n"
    (d / "outgoing" / f"{s2:020d}.batch").write_bytes(b"CFSPOOL1\n{\"frames\": [99]}\nshort")
    assert sp.load(s2) is None and sp.pending() == []
    st = spool.spool_stats(str(d))
    assert st["rejected_batches"] == 2 and st["rejected_records"] == 4 and st["rejected_files"] == 2


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(spool.CapfanError, match="policy"):
        spool.SpoolWriter(str(tmp_path), HOST, "", 100, policy="block")
    with pytest.raises(spool.CapfanError, match="host id"):
        spool.SpoolWriter(str(tmp_path), "bad host", "", 100)
    w = writer(tmp_path)
    with pytest.raises(spool.CapfanError, match="stream name"):
        w("bad/stream", flows(1))
    with pytest.raises(spool.CapfanError, match="structured"):
        w("flows", np.zeros(3))
    w("flows", records.empty(0))  # nothing to spool
    assert os.listdir(tmp_path / "incoming") == []


def test_a_batch_being_claimed_counts_as_not_delivered(tmp_path, monkeypatch):
    """Found in CI: the agent's shutdown polled the spool while the exporter was encoding a claimed
    batch (outgoing/<seq>.claim), saw nothing left and stopped the exporter: the batch stayed in
    the spool until the next start, and the agent said nothing."""
    from capfan.agents.supervisor import _unacked
    d = tmp_path / "sp"
    writer(d)("flows", flows(1))
    sp = spool.Spool(str(d))
    seen = []
    real = spool.Spool._finish_claim

    def finish(self, seq):
        seen.append((spool.spool_stats(str(d))["claiming_batches"], _unacked(str(d))))
        return real(self, seq)
    monkeypatch.setattr(spool.Spool, "_finish_claim", finish)
    assert len(sp.claim()) == 1
    assert seen == [(1, 1)]                    # mid-claim: one batch still owed
    st = spool.spool_stats(str(d))
    assert (st["claiming_batches"], st["outgoing_batches"], _unacked(str(d))) == (0, 1, 1)

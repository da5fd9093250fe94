"""The loader: journaled batches reach the store once, in order, resuming at the checkpoint after
a restart; a batch the store refuses is set aside without blocking the ones after it."""
import numpy as np

from capfan import records, wire
from capfan.collector.journal import Journal
from capfan.collector.loader import Loader
from capfan.collector.store import Store
from tests.conftest import wait_for


def flows(n, seed):
    r = records.empty(n)
    rng = np.random.default_rng(seed)
    r["flowStartNanoseconds"] = 1_700_000_000_000_000_000 + rng.integers(0, 10**9, n)
    r["flowEndNanoseconds"] = r["flowStartNanoseconds"] + 1000
    r["sourceIPAddress"] = [np.void(records.pack_address(f"10.0.{seed}.{i + 1}")) for i in range(n)]
    r["destinationIPAddress"] = [np.void(records.pack_address("192.0.2.1")) for _ in range(n)]
    r["sourceTransportPort"], r["destinationTransportPort"] = 1000 + np.arange(n), 53
    r["protocolIdentifier"], r["ipVersion"] = 17, 4
    r["packetDeltaCount"], r["layer2OctetDeltaCount"] = 1, 100
    return r


def journal_batches(j, host, seqs, n=5):
    for s in seqs:
        j.append(wire.encode(wire.Batch(host, "flows", "q0/flowmeter", s, flows(n, s))))
    j.sync()


def stored(store, host):
    rows = [h for h in store.health() if h["host"] == host and h.get("source") is None]
    return (rows[0]["batches"], rows[0]["records"]) if rows else (0, 0)


def test_loads_everything_once_and_resumes_at_the_checkpoint(tmp_path):
    store, j = Store(str(tmp_path / "s.duckdb")), Journal(str(tmp_path / "j"), fsync=False)
    ld = Loader(store, j)
    journal_batches(j, "h1", range(1, 21))
    assert sum(iter(ld.load_once, 0)) == 20
    assert stored(store, "h1") == (20, 100) and store.checkpoint() == ld.position
    # a "restart": a new loader on the same store and journal; an agent resent 3 batches meanwhile
    journal_batches(j, "h1", [19, 20, 21])
    ld2 = Loader(store, j)
    assert ld2.position == ld.position        # resumes where the last one committed
    assert sum(iter(ld2.load_once, 0)) == 3
    assert stored(store, "h1") == (21, 105)   # 19 and 20 recognised as duplicates
    c = ld2.counters()
    assert (c["loaded_batches"], c["duplicates"]) == (1, 2)
    store.close()
    j.close()


def test_a_batch_the_store_refuses_is_set_aside_and_the_rest_loads(tmp_path):
    store, j = Store(str(tmp_path / "s.duckdb")), Journal(str(tmp_path / "j"), fsync=False)
    journal_batches(j, "h1", [1])
    odd = np.zeros(3, dtype=[("x", "<u4")])     # not flow records, on the flows stream
    j.append(wire.encode(wire.Batch("h1", "flows", "q0/flowmeter", 2, odd)))
    journal_batches(j, "h1", [3])
    ld = Loader(store, j)
    ld.start()
    try:
        assert wait_for(lambda: ld.counters()["loaded_batches"] == 2, 10)
    finally:
        ld.stop()
    c = ld.counters()
    assert (c["load_rejected"], c["load_errors"], c["duplicates"]) == (1, 0, 0)
    assert stored(store, "h1") == (2, 10)
    store.close()
    j.close()

"""Smoke test of `capfan bench ring`: tiny packet counts, checks the table/JSON structure and that
every consumer accounted for every published packet. Correctness only, never speed."""
import json
import os
import shutil
import tempfile

import pytest
from click.testing import CliRunner

from capfan.bench import ring as B
from capfan.bench.cli import bench

SMALL = B.Settings(ndesc=1 << 12, arena_bytes=8 << 20, copyq_bytes=1 << 20)


def _zmq_sockets() -> set:
    """ZeroMQ ipc socket files this process's bench runs created in the temp directory."""
    mine = f"bench-{os.getpid()}-"
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)}


@pytest.fixture
def ring_dir(monkeypatch):
    """Rings and copy queues of this test go to a private tmpfs directory; the test fails if the
    bench leaves a ring, queue or socket file behind."""
    d = tempfile.mkdtemp(prefix="capfan-bench-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    monkeypatch.setenv("CAPFAN_RING_DIR", d)
    before = _zmq_sockets()
    yield d
    leftovers = os.listdir(d)
    shutil.rmtree(d, ignore_errors=True)
    assert leftovers == [], f"bench left files behind: {leftovers}"
    assert _zmq_sockets() - before == set()


@pytest.mark.parametrize("method", list(B.METHODS))
def test_every_consumer_gets_every_published_packet(ring_dir, method):
    n = 0 if method == "produce-only" else 3
    npkts = 5000  # more than the small ring holds: the ring wraps, reliable consumers hold it
    r = B.run_one(method, 64, n, npkts, SMALL)
    assert r.error is None, r.error
    assert r.published == npkts
    assert len(r.consumers) == n
    for c in r.consumers:
        if "lossy" in method:
            assert c.delivered + c.dropped == r.published  # lossy: every packet delivered or counted
        else:
            assert c.delivered == r.published and c.dropped == 0
        assert c.demotions == 0
        assert c.cpu_ns > 0 and c.end_ns > r.producer_start_ns
    assert r.complete()
    assert r.producer_cpu_ns > 0 and r.producer_ns_per_pkt > 0


def test_reliable_consumers_of_a_1500_byte_ring_see_identical_data(ring_dir):
    r = B.run_one("ring-c", 1500, 2, 3000, SMALL)
    assert r.error is None, r.error
    assert [c.delivered for c in r.consumers] == [3000, 3000]
    assert r.consumers[0].checksum == r.consumers[1].checksum  # same bytes read in place by both


def test_summary_rows_ratios_and_targets(ring_dir):
    runs = B.run_bench(sizes=(64,), consumers=(1, 2), packets=3000, repeat=1, cfg=SMALL)
    assert B.accounting_ok(runs)
    rows = B.summarize(runs)
    keys = {(r.method, r.n) for r in rows}
    assert ("produce-only", 0) in keys
    assert {(m, n) for m in B.DEFAULT_METHODS if m != "produce-only" for n in (1, 2)} <= keys
    for r in rows:
        assert r.repeats == 1 and not r.errors and r.complete
        if r.method in B.RING_METHODS:
            assert r.vs_zmq > 0 and r.vs_copyq > 0
    ts = B.targets(rows, runs, (64,), (1, 2))
    assert any("producer cost 1->2" in t.target for t in ts)
    assert any("Python batch consumer" in t.target for t in ts)
    assert any("ZeroMQ" in t.target for t in ts)
    assert all(t.ok in (True, False) for t in ts)


def test_cli_prints_tables_and_writes_json(ring_dir, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench, [
        "ring", "--packets", "3000", "--sizes", "64,1500", "--consumers", "1,2", "--repeat", "1",
        "--methods", "produce-only,ring-c,ring-py,ring-c-lossy,zmq,copyq",
        "--ndesc", "4096", "--arena", "8M", "--json", str(out), "-q"])
    assert res.exit_code == 0, res.output
    for text in ("64-byte packets", "1500-byte packets", "targets", "x ZMQ", "x copyq",
                 "producer", "ring-py", "zmq", "copyq", "accounting: every consumer"):
        assert text in res.output
    assert "PASS" in res.output or "MISS" in res.output
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data) >= {"settings", "machine", "rows", "targets", "runs", "accounting_ok"}
    assert data["accounting_ok"] is True
    assert data["settings"]["sizes"] == [64, 1500]
    assert len(data["runs"]) == 2 * (1 + 5 * 2)
    for run in data["runs"]:
        assert run["error"] is None and run["complete"]
        for c in run["consumers"]:
            assert c["delivered"] + c["dropped"] == run["published"]
            if "lossy" not in run["method"]:
                assert c["delivered"] == run["published"]


def test_cli_rejects_bad_lists():
    res = CliRunner().invoke(bench, ["ring", "--sizes", "64,abc"])
    assert res.exit_code != 0 and "comma-separated integers" in res.output
    res = CliRunner().invoke(bench, ["ring", "--methods", "ring-c,nope"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_registered_under_the_capfan_command():
    from capfan.cli import main

    res = CliRunner().invoke(main, ["bench", "ring", "--help"])
    assert res.exit_code == 0, res.output
    for opt in ("--packets", "--sizes", "--consumers", "--json", "--repeat", "--pin"):
        assert opt in res.output


def test_unpinned_run_also_accounts_for_everything(ring_dir):
    cfg = B.Settings(ndesc=1 << 12, arena_bytes=8 << 20, copyq_bytes=1 << 20, pin=False)
    runs = [B.run_one(m, 1500, 2, 2000, cfg) for m in ("ring-py", "zmq", "copyq")]
    assert all(r.error is None and r.complete() for r in runs), [r.error for r in runs]

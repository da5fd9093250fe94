"""`capfan bench collect`: flow records per second through the whole export path, acknowledged.

capfan path: the bench encodes batches of real flow records (capfan.wire: blocked columns +
zstd) and sends them from a DEALER to a real `capfan collect` process (plain mode on loopback,
store on disk), which decodes, stores durably and acknowledges each batch; up to `window`
batches are in flight. Time runs from the first encode to the last acknowledgement.

The collector acknowledges a batch once it is in its journal and synced (durable); its loader
moves batches into the DuckDB store in groups. The table gives both rates: acknowledged (what the
target is about) and "in store" (until the last record was queryable).

Baseline, measured in the same run on the same records: the nProbe -> ntopng style of JSON over
ZeroMQ — each batch as a JSON array of per-record objects (`records.to_dicts`), parsed by a
receiver process that turns the objects back into records and stores them in the same store
with the same per-batch commit and acknowledgement. Only the encoding differs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from capfan import records as R

TARGET_RPS = 1_000_000
TARGET_RATIO = 10.0
HOST = "bench"


@dataclass
class Result:
    """One path's run."""

    path: str
    records: int
    batches: int
    seconds: float
    wire_bytes: int
    stored: int
    collector_cpu_s: float
    loaded_seconds: float = float("nan")   # until every record was in the store (queryable)

    @property
    def rps(self) -> float:
        """Records per second, end to end (acknowledged = durable)."""
        return self.records / self.seconds if self.seconds > 0 else float("nan")

    @property
    def loaded_rps(self) -> float:
        """Records per second until all were loaded into the store (queryable)."""
        return self.records / self.loaded_seconds if self.loaded_seconds > 0 else float("nan")


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """CPU seconds a process used so far (NaN once it is gone)."""
    from capfan.agents.snapshot import proc_cpu_rss  # noqa: PLC0415

    got = proc_cpu_rss(pid)
    return got[0] if got else float("nan")


def _send_all(endpoint: str, messages, window: int, timeout: float = 300.0) -> float:
    """Send (seq, frames-or-callable) messages with at most `window` unacknowledged; seconds
    from the first send to the last acknowledgement. Each message's encoding happens inside the
    timed loop (it is part of the agent's cost)."""
    import zmq  # noqa: PLC0415

    from capfan import wire  # noqa: PLC0415

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    pending = set()
    it = iter(messages)
    done = False
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        while not done or pending:
            while not done and len(pending) < window:
                nxt = next(it, None)
                if nxt is None:
                    done = True
                    break
                seq, make = nxt
                s.send_multipart(make())
                pending.add(seq)
            if s.poll(1000):
                acked, rejected = wire.decode_ack(s.recv_multipart())
                if rejected:
                    raise RuntimeError(f"collector rejected batches: {rejected}")
                pending.difference_update(acked)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} batches unacknowledged after {timeout:g} s")
        return time.perf_counter() - t0
    finally:
        s.close()


def _collector_config(work: str, port: int) -> str:
    path = os.path.join(work, "collector.toml")
    with open(path, "w") as f:
        f.write(f'[collector]\nname = "bench"\nlisten = "tcp://127.0.0.1:{port}"\n'
                f'store = "{work}/capfan.duckdb"\nstatus_interval = 0\n'
                f'[security]\nmode = "plain"\n[api]\nlisten = "127.0.0.1:{free_port()}"\n')
    return path


def _wait_listening(port: int, proc, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the receiver did not start listening")


def _stored(store_path: str) -> int:
    """Flow observations in a store file (the receiver has exited)."""
    from capfan.collector.store import Store  # noqa: PLC0415

    st = Store(store_path, read_only=True)
    try:
        return sum(h.get("records", 0) for h in st.health() if h.get("host") == HOST and not h.get("source"))
    finally:
        st.close()


def _run(cmd: list[str], port: int, recs: np.ndarray, total: int, batch: int, window: int, encode,
         loaded=None) -> tuple[int, float, int, float, float]:
    """Start a receiver, send `total` records in batches (encode(seq, chunk) -> frames, timed with
    the sending), stop it; (batches, seconds, wire bytes, receiver CPU s, seconds until loaded)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    nbytes = [0]
    try:
        _wait_listening(port, proc)
        cpu0 = _cpu_seconds(proc.pid)
        n = -(-total // batch)

        def messages():
            for i in range(n):
                lo = (i * batch) % len(recs)
                chunk = recs[lo:lo + min(batch, total - i * batch)]

                def make(i=i, chunk=chunk):
                    frames = encode(i + 1, chunk)
                    nbytes[0] += sum(len(f) for f in frames)
                    return frames
                yield i + 1, make
        t0 = time.perf_counter()
        seconds = _send_all(f"tcp://127.0.0.1:{port}", messages(), window)
        until_loaded = loaded() - t0 if loaded else float("nan")
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return n, seconds, nbytes[0], cpu, until_loaded


def run_capfan(recs: np.ndarray, total: int, batch: int, window: int, work: str) -> Result:
    """The capfan path into a real `capfan collect`."""
    from capfan import wire  # noqa: PLC0415

    port = free_port()
    cfg = _collector_config(work, port)
    api = _api_port(cfg)

    def encode(seq, chunk):
        return wire.encode(wire.Batch(HOST, "flows", "bench.q0/flowmeter", seq, chunk))
    n, seconds, nbytes, cpu, loaded = _run([sys.executable, "-m", "capfan", "collect", "-c", cfg], port, recs, total,
                                           batch, window, encode, loaded=lambda: _wait_loaded(api, total))
    return Result("capfan (wire + zstd)", total, n, seconds, nbytes, _stored(os.path.join(work, "capfan.duckdb")),
                  cpu, loaded)


def _api_port(cfg_path: str) -> int:
    with open(cfg_path) as f:
        return int(f.read().split('[api]\nlisten = "127.0.0.1:')[1].split('"')[0])


def _wait_loaded(api_port: int, records: int, timeout: float = 300.0) -> float:
    """perf_counter() when the collector's loader has stored `records` records."""
    import urllib.request  # noqa: PLC0415

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/health", timeout=30) as r:
            if json.loads(r.read())["loader"]["loaded_records"] >= records:
                return time.perf_counter()
        time.sleep(0.1)  # each look runs store queries: do not slow the loader down
    raise RuntimeError(f"the collector did not load {records} records within {timeout:g} s")


def from_dicts(objs: list[dict]) -> np.ndarray:
    """Flow records back from their JSON objects (what a JSON collector has to do)."""
    out = np.zeros(len(objs), dtype=R.FLOW_DTYPE)
    for name, _, _ in R.FIELDS:
        if name.startswith("_"):
            continue
        if name in ("sourceIPAddress", "destinationIPAddress"):
            out[name] = [np.void(R.pack_address(o[name])) for o in objs]
        else:
            out[name] = [o[name] for o in objs]
    return out


def json_receiver(port: int, store_path: str) -> None:
    """The baseline collector: ROUTER, json.loads, records, store, ack (run as its own process)."""
    import zmq  # noqa: PLC0415

    from capfan import wire  # noqa: PLC0415
    from capfan.collector.store import Store  # noqa: PLC0415

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    store = Store(store_path)
    s = zmq.Context.instance().socket(zmq.ROUTER)
    s.bind(f"tcp://127.0.0.1:{port}")
    try:
        while not stop:
            if not s.poll(200):
                continue
            ident, head, body = s.recv_multipart()
            meta = json.loads(head)
            recs = from_dicts(json.loads(body))
            store.ingest(meta["host"], meta["seq"], meta["stream"], meta["source"], recs)
            s.send_multipart([ident, *wire.encode_ack([meta["seq"]])])
    finally:
        s.close(0)
        store.close()


def run_json(recs: np.ndarray, total: int, batch: int, window: int, work: str) -> Result:
    """The JSON-over-ZeroMQ baseline into the same store."""
    port = free_port()
    store_path = os.path.join(work, "json.duckdb")

    def encode(seq, chunk):
        head = json.dumps({"host": HOST, "stream": "flows", "source": "bench.q0/flowmeter", "seq": seq}).encode()
        return [head, json.dumps(R.to_dicts(chunk)).encode()]
    n, seconds, nbytes, cpu, _ = _run([sys.executable, "-m", "capfan.bench.collect", "--json-receiver", str(port),
                                       store_path], port, recs, total, batch, window, encode)
    return Result("JSON over ZeroMQ (baseline)", total, n, seconds, nbytes, _stored(store_path), cpu)


def measure(records: int = 2_000_000, json_records: int = 100_000, batch: int = 10_000, window: int = 16,
            progress=None) -> dict:
    """Both paths, in one run; the raw numbers."""
    from capfan.bench.wire import flow_records  # noqa: PLC0415

    recs = flow_records(min(records, 200_000))
    work = tempfile.mkdtemp(prefix="capfan-bench-collect-")
    try:
        results = []
        for name, fn, n in (("capfan", run_capfan, records), ("json", run_json, json_records)):
            if progress:
                progress(name, n)
            d = os.path.join(work, name)
            os.makedirs(d)
            results.append(fn(recs, n, batch, window, d))
        return {"results": results, "batch": batch, "window": window, "work": work}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(console, m: dict) -> bool:
    """Print the table and the targets; True if every target passed."""
    from rich.table import Table  # noqa: PLC0415

    from capfan.bench.report import Target, targets_table  # noqa: PLC0415

    capfan, js = m["results"]
    t = Table(title=f"flow records end to end (encode -> ZeroMQ -> collector -> store, acknowledged); "
                    f"batches of {m['batch']}, {m['window']} in flight", title_justify="left")
    for col in ("path", "records", "seconds", "records/s acked", "x JSON", "records/s in store", "wire B/record",
                "collector CPU s", "stored"):
        t.add_column(col, justify="right" if col != "path" else "left")
    for r in (capfan, js):
        in_store = r.loaded_rps if r.loaded_rps == r.loaded_rps else r.rps  # JSON: stored before the ack
        t.add_row(r.path, f"{r.records:,}", f"{r.seconds:.2f}", f"{r.rps:,.0f}", f"{r.rps / js.rps:.1f}x",
                  f"{in_store:,.0f}", f"{r.wire_bytes / r.records:.1f}", f"{r.collector_cpu_s:.2f}", f"{r.stored:,}")
    console.print(t)
    ts = [Target(f">= {TARGET_RPS:,} records/s end to end, acknowledged", f"{capfan.rps:,.0f}",
                 capfan.rps >= TARGET_RPS, "durable in the collector's journal"),
          Target(f">= {TARGET_RPS:,} records/s into the queryable store", f"{capfan.loaded_rps:,.0f}",
                 capfan.loaded_rps >= TARGET_RPS, "until the loader stored the last batch"),
          Target(f">= {TARGET_RATIO:g}x the JSON baseline", f"{capfan.rps / js.rps:.1f}x",
                 capfan.rps / js.rps >= TARGET_RATIO),
          Target("every record stored exactly once", f"{capfan.stored:,} / {capfan.records:,}; "
                 f"{js.stored:,} / {js.records:,}", capfan.stored == capfan.records and js.stored == js.records)]
    console.print(targets_table(ts))
    return all(x.ok for x in ts)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--json-receiver":
        json_receiver(int(sys.argv[2]), sys.argv[3])

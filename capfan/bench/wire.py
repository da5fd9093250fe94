"""Record-batch encodings for `capfan/wire.py`, measured on realistic flow records.

    python -m capfan.bench.wire [RECORDS]

The records are real flow-meter output: a synthetic capture (capfan.bench.flowmeter.synthesize:
IPv4/IPv6, TCP/UDP, heavy-tailed packet counts, 4096 servers, distinct clients, ns timestamps
with jitter) metered by the C FlowTable, in the order the meter emits them. Each candidate is
timed on one core: encode (layout + compression) and decode back to a numpy structured array
of the same dtype (what the collector ingests). The last row is capfan.wire itself, frames and
all. Not registered as a CLI command: `capfan bench collect` folds it in.
"""
from __future__ import annotations

import sys
import time

import numpy as np

REPEAT = 5


def flow_records(records: int = 100_000, seed: int = 1) -> np.ndarray:
    """`records` FLOW_DTYPE records as the C flow meter emits them for a synthetic capture."""
    from capfan.bench import flowmeter as fm  # noqa: PLC0415 - needs the C core

    w = fm.synthesize(max(4 * records, records), records, seed=seed)
    # synthesize() computes times in float64 (256 ns steps near 2023); capture clocks tick in ns
    rng = np.random.default_rng(seed)
    w.ts_ns = np.sort(w.ts_ns + rng.integers(0, 256, len(w.ts_ns), dtype=np.uint64))
    ft = fm.flow_table(records)
    try:
        ft.add_packets(w.buf, w.offs, w.caplens, wirelens=w.wirelens, ts_ns=w.ts_ns)
        ft.flush()
        out = fm.drain_all(ft)
    finally:
        ft.close()
    return np.ascontiguousarray(out[:records])


# ---------------------------------------------------------------- layouts

def rows(a: np.ndarray) -> bytes:
    """The records as they lie in memory (array of structs)."""
    return a.tobytes()


def from_rows(buf, dtype, n) -> np.ndarray:
    """Inverse of rows()."""
    return np.frombuffer(buf, dtype=dtype, count=n).copy()


def columns(a: np.ndarray) -> bytes:
    """Each field's column contiguous (struct of arrays)."""
    return b"".join(np.ascontiguousarray(a[name]).tobytes() for name in a.dtype.names)


def from_columns(buf, dtype, n) -> np.ndarray:
    """Inverse of columns()."""
    out = np.empty(n, dtype=dtype)
    off = 0
    for name in dtype.names:
        ft = dtype.fields[name][0]
        out[name] = np.frombuffer(buf, dtype=ft, count=n, offset=off)
        off += ft.itemsize * n
    return out


def planes(a: np.ndarray) -> bytes:
    """Byte planes: byte k of every record, then byte k+1, ... (columnar with each column
    byte-shuffled; one transpose of the (n, itemsize) byte matrix)."""
    n, size = len(a), a.dtype.itemsize
    return np.ascontiguousarray(a.view(np.uint8).reshape(n, size).T).tobytes()


def from_planes(buf, dtype, n) -> np.ndarray:
    """Inverse of planes()."""
    out = np.empty(n, dtype=dtype)
    out.view(np.uint8).reshape(n, dtype.itemsize)[:] = np.frombuffer(buf, np.uint8).reshape(dtype.itemsize, n).T
    return out


# ---------------------------------------------------------------- compressors

def _codecs():
    import lz4.block  # noqa: PLC0415
    import zstandard  # noqa: PLC0415

    z1, z3 = zstandard.ZstdCompressor(level=1), zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()
    return {
        "none": (lambda b: b, lambda b, size: b),
        "lz4": (lambda b: lz4.block.compress(b, store_size=False),
                lambda b, size: lz4.block.decompress(b, uncompressed_size=size)),
        "zstd1": (z1.compress, lambda b, size: zd.decompress(b, max_output_size=size)),
        "zstd3": (z3.compress, lambda b, size: zd.decompress(b, max_output_size=size)),
    }


def _arrow(codec: str):
    """(encode, decode) through an Arrow IPC stream with buffer compression."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.ipc  # noqa: PLC0415,F401

    opts = pa.ipc.IpcWriteOptions(compression=codec, use_threads=False)  # one core, like the rest

    def enc(a: np.ndarray) -> bytes:
        cols = []
        for name in a.dtype.names:
            col = np.ascontiguousarray(a[name])
            if col.dtype.kind == "V":
                size = col.dtype.itemsize
                cols.append(pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), len(col),
                                                                 [None, pa.py_buffer(col.view(np.uint8))]))
            else:
                cols.append(pa.array(col))
        batch = pa.RecordBatch.from_arrays(cols, names=list(a.dtype.names))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema, options=opts) as w:
            w.write_batch(batch)
        return sink.getvalue().to_pybytes()

    def dec(buf, dtype, n) -> np.ndarray:
        batch = pa.ipc.open_stream(buf).read_next_batch()
        out = np.empty(n, dtype=dtype)
        for i, name in enumerate(dtype.names):
            col = batch.column(i)
            ft = dtype.fields[name][0]
            if ft.kind == "V":
                out[name] = np.frombuffer(col.buffers()[1], dtype=ft, count=n, offset=col.offset * ft.itemsize)
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        return out

    return enc, dec


# ---------------------------------------------------------------- measurement

def _best(fn, repeat: int) -> tuple[float, object]:
    best, res = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t)
    return best, res


def _row(name: str, a: np.ndarray, enc, dec, repeat: int) -> dict:
    n, raw = len(a), a.nbytes
    te, blob = _best(lambda: enc(a), repeat)
    td, back = _best(lambda: dec(blob), repeat)
    if back.dtype != a.dtype or back.tobytes() != a.tobytes():
        raise AssertionError(f"{name}: decode does not give the records back")
    size = sum(len(f) for f in blob) if isinstance(blob, list) else len(blob)
    return {"candidate": name, "records": n, "encode_MBps": raw / te / 1e6, "encode_rps": n / te,
            "decode_rps": n / td, "us_per_record": (te + td) / n * 1e6,
            "bytes_per_record": size / n, "ratio": raw / size}


def measure(records: int = 100_000, repeat: int = REPEAT) -> list[dict]:
    """Time every candidate encoding on `records` metered flow records; one dict per candidate."""
    from capfan import wire  # noqa: PLC0415

    a = flow_records(records)
    dt, n = a.dtype, len(a)
    codecs = _codecs()
    out = []
    for lname, lay, unlay in (("rows", rows, from_rows), ("columns", columns, from_columns),
                              ("byte planes", planes, from_planes)):
        for cname in ("none", "lz4", "zstd1", "zstd3"):
            if lname != "rows" and cname == "none":
                continue
            c, d = codecs[cname]
            size = dt.itemsize * n
            out.append(_row(f"{lname} + {cname}", a, lambda x, c=c, lay=lay: c(lay(x)),
                            lambda b, d=d, unlay=unlay, size=size: unlay(d(b, size), dt, n), repeat))
    for cname in ("lz4", "zstd"):
        enc, dec = _arrow(cname)
        out.append(_row(f"arrow ipc + {cname}", a, enc, lambda b, dec=dec: dec(b, dt, n), repeat))
    b = wire.Batch("bench", "flows", "bench/wire", 1, a)
    for cname in wire.CODECS:
        out.append(_row(f"capfan.wire: blocked columns + {cname}", a, lambda x, c=cname: wire.encode(b, c),
                        lambda f: wire.decode(f).records, repeat))
    return out


def render(rows_: list[dict]):
    """rich Table of measure() results."""
    from rich.table import Table  # noqa: PLC0415

    n = rows_[0]["records"] if rows_ else 0
    t = Table(title=f"wire encodings, {n:,} flow records (136 B each), best of {REPEAT}", title_justify="left")
    for col in ("candidate", "encode MB/s", "encode rec/s", "decode rec/s", "µs/rec enc+dec", "B/rec", "ratio"):
        t.add_column(col, justify="left" if col == "candidate" else "right")
    for r in rows_:
        t.add_row(r["candidate"], f"{r['encode_MBps']:,.0f}", f"{r['encode_rps'] / 1e6:.2f} M",
                  f"{r['decode_rps'] / 1e6:.2f} M", f"{r['us_per_record']:.3f}",
                  f"{r['bytes_per_record']:.1f}", f"{r['ratio']:.2f}")
    return t


if __name__ == "__main__":
    from rich.console import Console

    Console().print(render(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)))

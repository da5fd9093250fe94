"""Local record sink: where `ctx.emit(stream, records)` lands until records are exported to a
collector. Writes one JSON-lines file per stream (`DIR/<stream>.jsonl`) or JSON lines on
stdout ("-"); every line is one record with a "stream" field."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from capfan import errors, records

_STREAM_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def record_dicts(recs) -> list[dict]:
    """Any emitted batch (flow records, another structured array, or dicts) as JSON-ready dicts."""
    if isinstance(recs, np.ndarray) and recs.dtype == records.FLOW_DTYPE:
        return records.to_dicts(recs)
    if isinstance(recs, np.ndarray) and recs.dtype.names:
        out = []
        for r in recs:
            d = {}
            for n in recs.dtype.names:
                v = r[n]
                if isinstance(v, (bytes, np.void)):
                    v = bytes(v).hex() if isinstance(v, np.void) else v.decode("utf-8", "replace")
                elif isinstance(v, np.generic):
                    v = v.item()
                d[n] = v
            out.append(d)
        return out
    return [dict(r) for r in recs]


class FileSink:
    """Append emitted records to DIR/<stream>.jsonl (or stdout for "-"), flushed per batch so a
    reader sees complete lines."""

    def __init__(self, target: str):
        self.target = target
        self._files: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        if target != "-":
            try:
                os.makedirs(target, exist_ok=True)
            except OSError as e:
                raise errors.ConfigError("out", f"cannot create output directory {target!r}: {e.strerror}") from None

    def path(self, stream: str) -> str:
        """File the records of `stream` go to."""
        return "-" if self.target == "-" else os.path.join(self.target, f"{stream}.jsonl")

    def _file(self, stream: str):
        f = self._files.get(stream)
        if f is None:
            if not stream or not set(stream) <= _STREAM_OK:
                raise errors.CapfanError(f"stream name {stream!r} must be letters, digits, '_', '-' or '.'")
            f = sys.stdout if self.target == "-" else open(self.path(stream), "a", encoding="utf-8")
            self._files[stream] = f
        return f

    def __call__(self, stream: str, recs) -> None:
        """Write one emitted batch."""
        f = self._file(stream)
        lines = []
        for d in record_dicts(recs):
            d = {"stream": stream, **d}
            lines.append(json.dumps(d, separators=(",", ":"), default=str))
        f.write("\n".join(lines) + "\n")
        f.flush()
        self.counts[stream] = self.counts.get(stream, 0) + len(lines)

    def close(self) -> None:
        """Close the stream files."""
        for f in self._files.values():
            if f is not sys.stdout:
                f.close()
        self._files.clear()


def read_jsonl(path: str) -> list[dict]:
    """Records a FileSink wrote (for tools and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

"""STAND-IN for capfan/wire.py (helper "exporter" only, NOT the real wire format).

Implements exactly the contract API (Batch, encode, decode, encode_ack, decode_ack) with a JSON
header frame + raw numpy bytes so the spool/exporter can be developed and tested. The lead
replaces this file with the real one from wt-wire at merge.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from capfan.errors import CapfanError

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
CODECS: tuple[str, ...] = ("none",)
DEFAULT_CODEC = "none"


class WireError(CapfanError):
    """Malformed, oversized or unsupported message (stand-in)."""


@dataclass(frozen=True)
class Batch:
    """One record batch of one host/stream."""
    host: str
    stream: str
    source: str
    seq: int
    records: np.ndarray
    created_ns: int = 0


def encode(batch: Batch, codec: str | None = None) -> list[bytes]:
    """Batch -> ZMQ multipart frames (stand-in: JSON header + raw array bytes)."""
    if not 1 <= batch.seq < 2**63:
        raise WireError(f"seq {batch.seq} out of range 1..2**63-1")
    hdr = {"v": WIRE_VERSION, "host": batch.host, "stream": batch.stream, "source": batch.source,
           "seq": batch.seq, "created_ns": batch.created_ns, "n": len(batch.records),
           "dtype": batch.records.dtype.descr}
    return [b"CFW1", json.dumps(hdr).encode(), np.ascontiguousarray(batch.records).tobytes()]


def decode(frames: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Batch:
    """Frames -> Batch; raises WireError only."""
    try:
        frames = [bytes(f) for f in frames]
        if sum(len(f) for f in frames) > max_bytes:
            raise WireError("message too large")
        if len(frames) != 3 or frames[0] != b"CFW1":
            raise WireError("not a capfan wire message")
        h = json.loads(frames[1])
        dt = np.dtype([tuple(x) for x in h["dtype"]])
        recs = np.frombuffer(frames[2], dtype=dt).copy()
        if len(recs) != h["n"]:
            raise WireError("record count mismatch")
        return Batch(h["host"], h["stream"], h["source"], int(h["seq"]), recs, int(h["created_ns"]))
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - stand-in: anything malformed is a WireError
        raise WireError(f"malformed message: {e}") from None


def encode_ack(seqs: list[int], rejected: dict[int, str] | None = None) -> list[bytes]:
    """Ack message frames."""
    return [b"CFA1", json.dumps({"acked": list(seqs),
                                 "rejected": {str(k): v for k, v in (rejected or {}).items()}}).encode()]


def decode_ack(frames) -> tuple[list[int], dict[int, str]]:
    """Ack frames -> (acked seqs, {seq: reason})."""
    try:
        frames = [bytes(f) for f in frames]
        if len(frames) != 2 or frames[0] != b"CFA1":
            raise WireError("not a capfan ack")
        d = json.loads(frames[1])
        return [int(s) for s in d["acked"]], {int(k): str(v) for k, v in d["rejected"].items()}
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001
        raise WireError(f"malformed ack: {e}") from None

"""STAND-IN, replaced at merge: minimal capfan.wire with exactly the contract API (issue 6), so
the collector intake can be built and tested before the real encoder lands.

Frames: [b"CFW" + JSON header, raw record bytes]. No compression; not for production.
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from capfan.errors import CapfanError

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
CODECS: tuple[str, ...] = ("raw",)
DEFAULT_CODEC = "raw"
_MAGIC = b"CFW"
_ACK = b"CFA"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class WireError(CapfanError):
    """STAND-IN (the real one lives in capfan/errors.py): malformed/oversized/unsupported message."""

    def __init__(self, message, kind=None, seq=None):
        super().__init__(message)
        self.kind = kind
        self.seq = seq


@dataclasses.dataclass(frozen=True)
class Batch:
    """One record batch of one host and stream."""

    host: str
    stream: str
    source: str
    seq: int
    records: np.ndarray
    created_ns: int = 0


def encode(batch: Batch, codec: str | None = None) -> list[bytes]:
    """ZMQ multipart frames of a batch."""
    head = {"v": WIRE_VERSION, "host": batch.host, "stream": batch.stream, "source": batch.source,
            "seq": batch.seq, "created_ns": batch.created_ns, "descr": batch.records.dtype.descr,
            "n": len(batch.records)}
    return [_MAGIC + json.dumps(head).encode(), np.ascontiguousarray(batch.records).tobytes()]


def decode(frames: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Batch:
    """The batch in `frames`; WireError for anything else."""
    frames = [bytes(f) for f in frames]
    if sum(len(f) for f in frames) > max_bytes:
        raise WireError(f"message larger than {max_bytes} bytes", "oversized")
    if len(frames) != 2 or not frames[0].startswith(_MAGIC):
        raise WireError("not a capfan wire message (bad frame count or magic)")
    try:
        head = json.loads(frames[0][3:])
        seq = head["seq"]
    except (ValueError, KeyError, TypeError):
        raise WireError("unreadable wire header") from None
    seq = seq if isinstance(seq, int) and 0 < seq < 2**63 else None
    if head.get("v") != WIRE_VERSION:
        raise WireError(f"wire version {head.get('v')!r} not supported (this collector speaks {WIRE_VERSION})",
                        "version", seq)
    try:
        host, stream, source = head["host"], head["stream"], head["source"]
        if seq is None or not _NAME.match(host) or not _NAME.match(stream) or len(source) > 128:
            raise ValueError
        dt = np.dtype([tuple(d) for d in head["descr"]])
        n = int(head["n"])
        if dt.itemsize * n != len(frames[1]):
            raise ValueError
        records = np.frombuffer(frames[1], dtype=dt, count=n)
    except (ValueError, KeyError, TypeError):
        raise WireError("bad batch header or truncated records", "malformed", seq) from None
    return Batch(host, stream, source, seq, records, int(head.get("created_ns", 0)))


def encode_ack(seqs: list[int], rejected: dict[int, str] | None = None) -> list[bytes]:
    """Frames acknowledging `seqs` (stored) and rejecting others for good."""
    return [_ACK + json.dumps({"ack": list(seqs), "rej": {str(k): v for k, v in (rejected or {}).items()}}).encode()]


def decode_ack(frames) -> tuple[list[int], dict[int, str]]:
    """(acked seqs, {seq: reason}) from ack frames."""
    try:
        d = json.loads(bytes(frames[0])[3:])
        return list(d["ack"]), {int(k): v for k, v in d["rej"].items()}
    except (ValueError, KeyError, TypeError, IndexError):
        raise WireError("bad ack") from None

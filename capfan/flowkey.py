"""Canonical flow key hash: which of n collectors a flow record belongs to.

Agents with `[export] route = "flow-hash"` send each flow record to collector
`flow_shard(records, n)[i]`, so every sensor's observations of one flow reach the same collector
and its cross-sensor merge sees them all. The hash must therefore be the same on every host, in
every process and every run (no Python `hash()`, no random seed) and the same for both directions
of a flow. It is defined here exactly, so other tools can reproduce it:

1. The canonical key is the collector store's merge key (collector/store.py): (vlan, proto, A, B)
   where vlan = `vlanId` (outer VLAN, 0 = untagged), proto = `protocolIdentifier`, and A <= B are
   the record's two endpoints (address, port) ordered by the 16 address bytes (IPv4 as
   ::ffff:a.b.c.d), then by the port. A flow seen a->b and b->a has the same key.
2. Five 64-bit words: A.addr[0:8] and A.addr[8:16] as big-endian unsigned integers, the same for
   B, then  A.port << 48 | B.port << 32 | vlan << 8 | proto.
3. h = SEED; for each word w in that order: h = mix64(h XOR w), where mix64 is the splitmix64
   finaliser (all arithmetic modulo 2**64):
       z = (z XOR z >> 30) * 0xBF58476D1CE4E5B9
       z = (z XOR z >> 27) * 0x94D049BB133111EB
       z =  z XOR z >> 31
4. shard = h mod n.

mix64 is a bijection with full avalanche, so the shards are as uniform as the keys are distinct.
Cost: a few dozen vectorised numpy operations per batch (~0.06 µs per record on one core).
"""
from __future__ import annotations

import numpy as np

from capfan.errors import CapfanError

SEED = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

ADDRESS_FIELDS = ("sourceIPAddress", "destinationIPAddress")
PORT_FIELDS = ("sourceTransportPort", "destinationTransportPort")
KEY_FIELDS = (*ADDRESS_FIELDS, *PORT_FIELDS, "protocolIdentifier", "vlanId")


class FlowKeyError(CapfanError):
    """Records cannot be hashed by flow key (a key field is missing or of the wrong type)."""


def has_flow_key(dtype: np.dtype) -> bool:
    """True when records of this dtype carry the canonical flow key fields (flow_shard works)."""
    return _key_problem(dtype) is None


def _key_problem(dtype: np.dtype) -> str | None:
    names = dtype.names or ()
    for f in KEY_FIELDS:
        if f not in names:
            return f"field {f!r} is missing"
        t = dtype.fields[f][0]
        if f in ADDRESS_FIELDS:
            if t.itemsize != 16 or t.kind not in "VS" or t.shape != ():
                return f"field {f!r} has type {t}; a 16-byte address (V16) is needed"
        elif t.kind not in "ui" or t.shape != ():
            return f"field {f!r} has type {t}; an integer is needed"
    return None


def mix64(z: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """The splitmix64 finaliser, in place on a uint64 array z (wraps modulo 2**64); returns z."""
    tmp = np.empty_like(z) if tmp is None else tmp
    for shift, mul in ((_S30, _M1), (_S27, _M2)):
        np.right_shift(z, shift, out=tmp)
        z ^= tmp
        z *= mul
    np.right_shift(z, _S31, out=tmp)
    z ^= tmp
    return z


_HALVES = np.dtype([("hi", ">u8"), ("lo", ">u8")])


def _halves(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo): the big-endian 64-bit halves of a column of 16-byte addresses."""
    be = col.view(_HALVES)  # same item size: works on the strided column, no copy
    return be["hi"].astype(np.uint64), be["lo"].astype(np.uint64)


def flow_hash(records: np.ndarray) -> np.ndarray:
    """The 64-bit canonical flow key hash of each record (uint64; see the module docstring)."""
    if not isinstance(records, np.ndarray) or records.ndim != 1:
        raise FlowKeyError("flow_hash needs a 1-D structured array of flow records")
    problem = _key_problem(records.dtype)
    if problem is not None:
        raise FlowKeyError(f"records cannot be routed by flow key: {problem} "
                           f"(the key is {', '.join(KEY_FIELDS)})")
    s_hi, s_lo = _halves(records["sourceIPAddress"])
    d_hi, d_lo = _halves(records["destinationIPAddress"])
    sp = records["sourceTransportPort"].astype(np.uint64) & np.uint64(0xFFFF)
    dp = records["destinationTransportPort"].astype(np.uint64) & np.uint64(0xFFFF)
    src_first = (s_hi < d_hi) | ((s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sp <= dp))))
    a_hi, b_hi = np.where(src_first, s_hi, d_hi), np.where(src_first, d_hi, s_hi)
    a_lo, b_lo = np.where(src_first, s_lo, d_lo), np.where(src_first, d_lo, s_lo)
    ap, bp = np.where(src_first, sp, dp), np.where(src_first, dp, sp)
    vlan = records["vlanId"].astype(np.uint64) & np.uint64(0xFFFF)
    proto = records["protocolIdentifier"].astype(np.uint64) & np.uint64(0xFF)
    last = (ap << np.uint64(48)) | (bp << np.uint64(32)) | (vlan << np.uint64(8)) | proto
    h = np.full(len(records), SEED, dtype=np.uint64)
    tmp = np.empty_like(h)
    for w in (a_hi, a_lo, b_hi, b_lo, last):
        h ^= w
        mix64(h, tmp)
    return h


def flow_shard(records: np.ndarray, n: int) -> np.ndarray:
    """The collector index 0..n-1 of each flow record (uint32): flow_hash mod n."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < 1 << 32:
        raise FlowKeyError(f"the number of collectors must be an integer in 1..2**32-1, not {n!r}")
    return (flow_hash(records) % np.uint64(n)).astype(np.uint32)

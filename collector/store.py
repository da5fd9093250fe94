"""The collector's embedded store: record batches from many agents in one DuckDB file, with the
cross-host flow merge done in SQL at query time.

Why DuckDB (measured with ``python -m capfan.bench.store``; numbers in that module's docstring:
402k vs 328k records/s durable ingest in 10k-record batches, top-10 with the merge over 1M
observations while ingesting 3.9 s vs 33 s, both lose nothing on kill -9):
columnar storage and a vectorised, parallel group-by make the query-time merge and top-N fast,
a batch goes in as one Arrow table (no per-row Python), and CSV/Parquet export is a native
``COPY``. Each ``ingest`` / ``ingest_many`` call is one transaction: DuckDB appends the commit to
its write-ahead log and fsyncs it before ``COMMIT`` returns, so acked batches survive a crash of
the collector (kill -9) and of the machine; a call interrupted mid-ingest is rolled back whole on
reopen. ``ingest_many`` stores several batches and, optionally, the collector's journal position
(``checkpoint()``) in that one transaction, so the checkpoint never runs ahead of or behind the data.

Ingest speed by table layout (``python -m capfan.bench.store --engines duckdb``; dev VM, 2 vCPU,
ext4, DuckDB 2.0.1; 100 x 10k records, top-10 over the last 300 s with the merge; two runs each,
the first layout measured with the same bench on the tree before the change):

    layout                              ingest rec/s   ingest_many x10 rec/s   top-10 idle   top-10 while ingesting
    1: host/seq/source per row,         268k - 362k    (no API)                2.7 - 3.1 s   4.5 - 5.5 s
       addresses 16-byte BLOBs
    2: batch id, addresses hi/lo        664k - 685k    1,079k - 1,142k         1.2 - 1.9 s   4.1 - 5.3 s
       UBIGINT (this module)

(Per record, DuckDB's INSERT of an Arrow batch spent ~0.95 us of ~1.7 us on the two BLOB columns
and ~0.2 us on the repeated host/source strings; fixed-width integers are cheap to append and
to hash in the merge. ingest_many makes one commit (one WAL fsync) per call, not per batch. The top-10 while
ingesting is bound by the 2 vCPUs it shares with the writer.)

Tables (``SCHEMA_VERSION`` 2, kept in ``meta``; a file of another version is refused with a
StoreError, there is no migration): ``batches(id, host, seq, stream, source, n, received_ns)``
(primary key (host, seq): the dedup of resent batches, ``INSERT OR IGNORE`` in the batches' own
transaction; ``id`` is assigned by the single writer, max + 1 at open, then counting), ``obs``
(flow observations exactly as the sensors sent them: ``batch`` = batches.id, addresses as
``src_hi, src_lo, dst_hi, dst_lo``, the big-endian halves of the 16-byte IPv4-mapped address so
(hi, lo) orders like the bytes), ``records`` (other streams: batch id, index, one JSON text per
record), ``hosts`` (duplicate counters), ``checkpoint`` (one row: the last saved journal
position). Inside the merge an address is one UHUGEINT, (hi << 64) | lo; results render it as
text (IPv4-mapped -> a.b.c.d); address filters become (hi, lo) ranges.

Merge rule (see ``MERGE_SQL``): the canonical key of an observation is (vlan, proto, A, B) where
A < B are its two endpoints (address bytes, then port); its counts are re-oriented to A->B and
B->A. Observations of one key, in start order, form one flow until one starts more than
``merge_window_s`` after the latest end so far (a new session of the same 5-tuple). Within a flow,
each host's observations are summed (active-timeout slices of one sensor); across hosts each
direction takes the max (the same packets seen by several sensors count once; a->b from one
sensor and b->a from another are stitched). start = min, end = max, observers = sorted distinct
hosts, and the flow is oriented like its earliest observation (order: start, end, host, seq; that
observation's source is the initiator, ``src``).

Time ranges select whole merged flows that overlap [start_ns, end_ns) (no pro-rating); ``where``
keys: src, dst, addr (either side), sport, dport, port (either side), proto, vlan, host (an
observer); values are scalars or lists, addresses may be CIDR networks. ``top`` groups by src,
dst, sport, dport, proto, vlan, host, source, pair (the two addresses, sorted) and returns the
group keys plus bytes, packets (both directions) and flows; a flow with several observers counts
under each when grouped by host or source.

Merged flow rows (``flows()``): src, dst (text addresses), sport, dport, proto, vlan,
packets / bytes (src -> dst), reverse_packets / reverse_bytes (dst -> src), bytes are frame bytes
on the wire (layer2OctetDeltaCount), start_ns, end_ns, observers (sorted host ids), sources
(sorted "host:source"), n_observations. ``export`` writes the same columns (CSV: observers and
sources space-separated; Parquet: lists).

Concurrency: one process owns the file read-write (the collector); its query threads read
through their own cursors while the intake thread writes (MVCC snapshots, no blocking). Another
process may open the file ``read_only`` only while no writer has it open (DuckDB's file lock).
"""
from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from functools import lru_cache

import duckdb
import numpy as np
import pyarrow as pa

from capfan.errors import CapfanError

FLOWS = "flows"
HEALTH = "health"

# obs column <- FLOW_DTYPE field (addresses: see _ADDR_COLUMNS)
_FLOW_COLUMNS = [
    ("start_ns", "flowStartNanoseconds", "UBIGINT"),
    ("end_ns", "flowEndNanoseconds", "UBIGINT"),
    ("sport", "sourceTransportPort", "USMALLINT"),
    ("dport", "destinationTransportPort", "USMALLINT"),
    ("vlan", "vlanId", "USMALLINT"),
    ("proto", "protocolIdentifier", "UTINYINT"),
    ("packets", "packetDeltaCount", "UBIGINT"),
    ("rpackets", "reversePacketDeltaCount", "UBIGINT"),
    ("bytes", "layer2OctetDeltaCount", "UBIGINT"),
    ("rbytes", "reverseLayer2OctetDeltaCount", "UBIGINT"),
]
# (hi, lo) obs columns <- 16-byte FLOW_DTYPE address field: the big-endian halves, so comparing
# (hi, lo) orders addresses exactly like their bytes
_ADDR_COLUMNS = [("src", "sourceIPAddress"), ("dst", "destinationIPAddress")]
_OBS_COLUMNS = (["batch"] + [c for c, _, _ in _FLOW_COLUMNS[:2]]
                + [f"{a}_{h}" for a, _ in _ADDR_COLUMNS for h in ("hi", "lo")]
                + [c for c, _, _ in _FLOW_COLUMNS[2:]])

SCHEMA_VERSION = 2

SCHEMA = [
    "CREATE TABLE meta(key VARCHAR NOT NULL, value VARCHAR NOT NULL)",
    # batch ids are assigned by the (single) writer: max(id) + 1 at open, then counting
    """CREATE TABLE batches(id UBIGINT NOT NULL, host VARCHAR NOT NULL, seq UBIGINT NOT NULL,
        stream VARCHAR NOT NULL, source VARCHAR NOT NULL, n UBIGINT NOT NULL,
        received_ns UBIGINT NOT NULL, PRIMARY KEY (host, seq))""",
    "CREATE TABLE hosts(host VARCHAR PRIMARY KEY, duplicates UBIGINT NOT NULL)",
    "CREATE TABLE obs(batch UBIGINT NOT NULL, start_ns UBIGINT NOT NULL, end_ns UBIGINT NOT NULL, "
    "src_hi UBIGINT NOT NULL, src_lo UBIGINT NOT NULL, dst_hi UBIGINT NOT NULL, dst_lo UBIGINT NOT NULL, "
    + ", ".join(f"{c} {t} NOT NULL" for c, _, t in _FLOW_COLUMNS[2:]) + ")",
    "CREATE TABLE records(batch UBIGINT NOT NULL, idx UBIGINT NOT NULL, data VARCHAR NOT NULL)",
    # one row: the journal position saved by the last ingest_many with a checkpoint
    "CREATE TABLE checkpoint(pos_a BIGINT, pos_b BIGINT)",
    "INSERT INTO checkpoint VALUES (NULL, NULL)",
    f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}')",
]

# {obs_where}: orientation-independent predicates on observations (a key either matches them in
# all its observations or in none, so the merge of a selected key is never partial);
# {range_join}: restricts to keys with an observation in the time range; the whole history of such
# a key is merged so a flow is never cut at the range's edge. Parameter $win: merge window in ns.
MERGE_SQL = """
WITH o AS (
    SELECT bt.host, bt.seq, bt.source, start_ns, end_ns,
           (src_hi::UHUGEINT << 64) | src_lo AS src, (dst_hi::UHUGEINT << 64) | dst_lo AS dst,
           sport, dport, vlan, proto, packets, rpackets, bytes, rbytes,
           (src_hi < dst_hi OR (src_hi = dst_hi AND (src_lo < dst_lo OR (src_lo = dst_lo AND sport <= dport))))
               AS fwd
    FROM obs JOIN batches bt ON bt.id = obs.batch WHERE {obs_where}
), k AS (
    SELECT host, seq, source, start_ns, end_ns, vlan, proto, fwd,
           CASE WHEN fwd THEN src ELSE dst END AS a, CASE WHEN fwd THEN sport ELSE dport END AS ap,
           CASE WHEN fwd THEN dst ELSE src END AS b, CASE WHEN fwd THEN dport ELSE sport END AS bp,
           CASE WHEN fwd THEN packets ELSE rpackets END AS p_ab,
           CASE WHEN fwd THEN rpackets ELSE packets END AS p_ba,
           CASE WHEN fwd THEN bytes ELSE rbytes END AS b_ab,
           CASE WHEN fwd THEN rbytes ELSE bytes END AS b_ba
    FROM o
), kr AS (
    SELECT k.* FROM k {range_join}
), c AS (
    SELECT *, CASE WHEN start_ns <= max(end_ns) OVER (
                  PARTITION BY vlan, proto, a, ap, b, bp ORDER BY start_ns, end_ns, host, seq
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + $win
              THEN 0 ELSE 1 END AS brk
    FROM kr
), cl AS (
    SELECT *, sum(brk) OVER (PARTITION BY vlan, proto, a, ap, b, bp ORDER BY start_ns, end_ns, host, seq
                             ROWS UNBOUNDED PRECEDING) AS cid
    FROM c
), per_host AS (
    SELECT vlan, proto, a, ap, b, bp, cid, host,
           sum(p_ab) AS p_ab, sum(p_ba) AS p_ba, sum(b_ab) AS b_ab, sum(b_ba) AS b_ba,
           min(start_ns) AS start_ns, max(end_ns) AS end_ns, count(*) AS n,
           -- the flow's first observation is the one that opened the cluster (brk = 1)
           bool_or(fwd) FILTER (WHERE brk = 1) AS first_fwd{ph_sources}
    FROM cl GROUP BY vlan, proto, a, ap, b, bp, cid, host
), m AS (
    SELECT vlan, proto, a, ap, b, bp,
           max(p_ab) AS p_ab, max(p_ba) AS p_ba, max(b_ab) AS b_ab, max(b_ba) AS b_ba,
           min(start_ns) AS start_ns, max(end_ns) AS end_ns, sum(n) AS n_observations,
           list(host ORDER BY host) AS observers{m_sources},
           bool_or(first_fwd) AS fwd
    FROM per_host GROUP BY vlan, proto, a, ap, b, bp, cid
), flows AS (
    SELECT CASE WHEN fwd THEN a ELSE b END AS src, CASE WHEN fwd THEN b ELSE a END AS dst,
           CASE WHEN fwd THEN ap ELSE bp END AS sport, CASE WHEN fwd THEN bp ELSE ap END AS dport,
           proto, vlan,
           CASE WHEN fwd THEN p_ab ELSE p_ba END AS packets,
           CASE WHEN fwd THEN p_ba ELSE p_ab END AS reverse_packets,
           CASE WHEN fwd THEN b_ab ELSE b_ba END AS bytes,
           CASE WHEN fwd THEN b_ba ELSE b_ab END AS reverse_bytes,
           start_ns, end_ns, observers{f_sources}, n_observations
    FROM m
)
"""

FLOW_ROW = ["src", "dst", "sport", "dport", "proto", "vlan", "packets", "reverse_packets", "bytes",
            "reverse_bytes", "start_ns", "end_ns", "observers", "sources", "n_observations"]
GROUP_KEYS = ("src", "dst", "sport", "dport", "proto", "vlan", "host", "source", "pair")
METRICS = {"bytes": "sum(bytes + reverse_bytes)", "packets": "sum(packets + reverse_packets)",
           "flows": "count(*)"}
FILTER_KEYS = ("src", "dst", "addr", "sport", "dport", "port", "proto", "vlan", "host")
_V4_MAPPED = 0xFFFF  # the high 96 bits of an IPv4-mapped address (::ffff:a.b.c.d)
_U64 = (1 << 64) - 1


class StoreError(CapfanError):
    """The store cannot be opened, or a request or batch is invalid; the message says which."""


class StoreUnavailable(StoreError):
    """The store's server cannot be reached or failed a statement: retry later (never the batch's
    fault, so the loader must not set the batch aside)."""


@lru_cache(maxsize=1 << 16)
def addr_text(value: int) -> str:
    """Text form of a stored address as one 128-bit int, (hi << 64) | lo (IPv4-mapped -> dotted quad)."""
    if value >> 32 == _V4_MAPPED:
        return str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(value))


def _addr_udf(hi: pa.Array, lo: pa.Array) -> pa.Array:
    # vectorised over a DuckDB chunk: the export renders addresses with this
    return pa.array([None if h is None or l_ is None else addr_text((h << 64) | l_)
                     for h, l_ in zip(hi.to_pylist(), lo.to_pylist())], pa.string())


def _addr_range(text) -> tuple[int, int]:
    """(low, high) 128-bit bounds of an address or CIDR network given as text."""
    try:
        net = ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise StoreError(f"filter address {text!r} is not an IP address or network "
                         "(e.g. 10.0.0.1, 2001:db8::/32)") from None
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        return (_V4_MAPPED << 32) | lo, (_V4_MAPPED << 32) | hi
    return lo, hi


def _obs_addr_sql(col: str, lo: int, hi: int) -> str:
    """Predicate on obs's {col}_hi / {col}_lo columns for lo <= address <= hi (literals: ints we
    computed; plain UBIGINT comparisons so DuckDB can prune row groups by their min/max)."""
    ch, cl = f"{col}_hi", f"{col}_lo"
    lh, ll, hh, hl = lo >> 64, lo & _U64, hi >> 64, hi & _U64
    if lh == hh:
        if ll == 0 and hl == _U64:
            return f"{ch} = {lh}"
        return f"({ch} = {lh} AND {cl} BETWEEN {ll} AND {hl})"
    lower = f"{ch} >= {lh}" if ll == 0 else f"({ch} > {lh} OR ({ch} = {lh} AND {cl} >= {ll}))"
    upper = f"{ch} <= {hh}" if hl == _U64 else f"({ch} < {hh} OR ({ch} = {hh} AND {cl} <= {hl}))"
    return f"({lower} AND {upper})"


def _values(key, v) -> list:
    vals = list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]
    if not vals:
        raise StoreError(f"filter {key!r} has an empty list of values")
    return vals


def _ints(key, v) -> list[int]:
    try:
        return [int(x) for x in _values(key, v)]
    except (TypeError, ValueError):
        raise StoreError(f"filter {key!r} takes integers, got {v!r}") from None


def _build_filter(where: dict | None, obs_side: bool) -> tuple[str, list]:
    """SQL predicate and parameters for a `where` dict; obs_side: the orientation-independent
    form that pre-selects observations (src/dst/sport/dport match either side there)."""
    clauses, params = [], []
    for key, v in (where or {}).items():
        if key not in FILTER_KEYS:
            raise StoreError(f"unknown filter {key!r}; use one of {', '.join(FILTER_KEYS)}")
        if key in ("src", "dst", "addr"):
            cols = ("src", "dst") if obs_side or key == "addr" else (key,)
            ors = []
            for lo, hi in (_addr_range(x) for x in _values(key, v)):
                for c in cols:
                    # the merged flows carry addresses as one UHUGEINT, (hi << 64) | lo
                    ors.append(_obs_addr_sql(c, lo, hi) if obs_side
                               else f"{c} BETWEEN {lo}::UHUGEINT AND {hi}::UHUGEINT")
            clauses.append("(" + " OR ".join(ors) + ")")
        elif key in ("sport", "dport", "port"):
            cols = ("sport", "dport") if obs_side or key == "port" else (key,)
            vals = _ints(key, v)
            marks = ", ".join("?" * len(vals))
            clauses.append("(" + " OR ".join(f"{c} IN ({marks})" for c in cols) + ")")
            for _ in cols:
                params += vals
        elif key in ("proto", "vlan"):
            vals = _ints(key, v)
            clauses.append(f"{key} IN ({', '.join('?' * len(vals))})")
            params += vals
        elif key == "host":
            if obs_side:
                continue  # observers are a property of the merged flow, not of the key
            vals = [str(x) for x in _values(key, v)]
            clauses.append(f"list_has_any(observers, [{', '.join('?' * len(vals))}]::VARCHAR[])")
            params += vals
    return (" AND ".join(clauses) or "TRUE"), params


def _json_value(v):
    if isinstance(v, bytes):
        # fixed-size text fields (S) come NUL-padded; opaque (V) fields as hex
        return v.rstrip(b"\0").decode("utf-8", "replace")
    if isinstance(v, (np.void, memoryview)):
        return bytes(v).hex()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    return v


def top_group(by: str, group) -> list[str]:
    """The group keys of a top-N query as a list, after checking `by` and each key."""
    if by not in METRICS:
        raise StoreError(f"top by {by!r}: use one of {', '.join(METRICS)}")
    group = [group] if isinstance(group, str) else list(group)
    if not group:
        raise StoreError("top needs at least one group key")
    bad = [g for g in group if g not in GROUP_KEYS]
    if bad:
        raise StoreError(f"unknown group key {bad[0]!r}; use any of {', '.join(GROUP_KEYS)}")
    return group


def source_health(rows, latest: dict) -> list[dict]:
    """health() rows per (host, source) from (host, source, last_ns, batches, records) rows and the
    latest health record of each (host, source)."""
    out = []
    for host, source, last, nb, nr in rows:
        d = {"host": host, "source": source, "last_seen_ns": int(last), "batches": int(nb), "records": int(nr)}
        for k, v in latest.get((host, source), {}).items():
            d.setdefault(k, v)  # never let a health field shadow the store's own counters
        out.append(d)
    return out


def record_dicts(records: np.ndarray) -> list[dict]:
    """A structured array's records as JSON-ready dicts."""
    names = records.dtype.names
    if not names:
        raise StoreError(f"records must be a structured array with named fields, got dtype {records.dtype}")
    return [{n: _json_value(x) for n, x in zip(names, row)} for row in records.tolist()]


def _flow_columns(records: np.ndarray) -> dict[str, np.ndarray]:
    """obs columns (all but `batch`) of a batch of FLOW_DTYPE records, as contiguous arrays."""
    names = records.dtype.names or ()
    missing = [f for f in [f for _, f, _ in _FLOW_COLUMNS] + [f for _, f in _ADDR_COLUMNS] if f not in names]
    if missing:
        raise StoreError(f"stream 'flows' needs FLOW_DTYPE records; fields missing: {', '.join(missing)}")
    cols = {}
    for col, field in _ADDR_COLUMNS:
        a = records[field]
        if a.dtype.itemsize != 16:
            raise StoreError(f"flow field {field} must be 16 bytes, got dtype {a.dtype}")
        # big-endian halves -> native uint64 (astype swaps the bytes and makes each contiguous)
        halves = np.ascontiguousarray(a).view(">u8").reshape(len(a), 2)
        cols[f"{col}_hi"] = halves[:, 0].astype(np.uint64)
        cols[f"{col}_lo"] = halves[:, 1].astype(np.uint64)
    for col, field, _ in _FLOW_COLUMNS:
        cols[col] = np.ascontiguousarray(records[field])
    return cols


def check_checkpoint(checkpoint) -> tuple[int, int] | None:
    """A checkpoint as two 64-bit ints (None stays None), else StoreError."""
    if checkpoint is not None:
        try:
            checkpoint = tuple(int(x) for x in checkpoint)
        except (TypeError, ValueError):
            raise StoreError(f"checkpoint must be two integers, got {checkpoint!r}") from None
        if len(checkpoint) != 2 or not all(-(1 << 63) <= x < 1 << 63 for x in checkpoint):
            raise StoreError(f"checkpoint must be two 64-bit integers, got {checkpoint!r}")
    return checkpoint


def prepare_batches(batches) -> list[tuple]:
    """Validate and convert batches (host, seq, stream, source, records) before any write, so a bad
    batch stores nothing: [(host, seq, stream, source, n, flow columns | JSON texts)]."""
    prepared = []
    for item in batches:
        try:
            host, seq, stream, source, records = item
        except (TypeError, ValueError):
            raise StoreError("each batch must be (host, seq, stream, source, records)") from None
        host, stream, source = str(host), str(stream), str(source)
        records = np.asarray(records)
        if records.ndim != 1:
            raise StoreError(f"records must be a 1-D array, got shape {records.shape}")
        try:
            ok = 0 < seq < 1 << 63
        except TypeError:
            ok = False
        if not ok:
            raise StoreError(f"batch seq must be in 1..2**63-1, got {seq}")
        seq = int(seq)
        if stream == FLOWS:
            payload = _flow_columns(records)
        else:
            payload = [json.dumps(d) for d in record_dicts(records)] if len(records) else []
        prepared.append((host, seq, stream, source, len(records), payload))
    return prepared


def _open_error(path: str, what: str) -> StoreError:
    return StoreError(f"store {path} {what}; this capfan reads schema version {SCHEMA_VERSION} and does not "
                      "migrate: move the file away (or export its flows with the capfan that wrote it) "
                      "and start a new store")


class Store:
    """Batches from agents in one DuckDB file; merged flow queries over them."""

    def __init__(self, path: str, merge_window_s: float = 60.0, read_only: bool = False):
        """Open (or create, unless read_only) the store at path."""
        if merge_window_s < 0:
            raise StoreError(f"merge_window_s must be >= 0, got {merge_window_s}")
        if read_only and not os.path.exists(path):
            raise StoreError(f"store {path} does not exist (read-only open does not create it)")
        self.path = path
        self.merge_window_ns = int(merge_window_s * 1e9)
        self.read_only = read_only
        try:
            self._con = duckdb.connect(path, read_only=read_only)
        except duckdb.Error as e:
            raise StoreError(f"cannot open store {path}: {e} (is another process writing it? "
                             "only one process may open it read-write)") from None
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._closed = False
        try:
            self._check_schema()
        except BaseException:
            self._con.close()
            self._closed = True
            raise
        self._next_id = 0 if read_only else self._con.execute(
            "SELECT coalesce(max(id), 0) + 1 FROM batches").fetchall()[0][0]
        self._con.create_function("addr_text", _addr_udf, ["UBIGINT", "UBIGINT"], "VARCHAR", type="arrow",
                                  side_effects=False)

    def _check_schema(self) -> None:
        """Create the schema in a new (empty) file; refuse a file of another schema version."""
        con = self._con
        tables = {t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main'").fetchall()}
        if not tables:
            if self.read_only:
                raise _open_error(self.path, "is empty (no capfan store schema)")
            con.execute("BEGIN TRANSACTION")
            try:
                for stmt in SCHEMA:
                    con.execute(stmt)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return
        version = None
        if "meta" in tables:
            rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
            version = rows[0][0] if rows else None
        if version != str(SCHEMA_VERSION):
            raise _open_error(self.path, "has no schema version (written by an earlier capfan, or not a "
                                         "capfan store)" if version is None else f"has schema version {version}")

    # -- connections ---------------------------------------------------------------------------

    def _cur(self) -> duckdb.DuckDBPyConnection:
        # a DuckDB connection is not for concurrent use: one cursor per thread
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._con.cursor()
        return cur

    # -- writing -------------------------------------------------------------------------------

    def ingest(self, host: str, seq: int, stream: str, source: str, records: np.ndarray) -> bool:
        """Durably store one batch (committed on return); False if (host, seq) was already stored."""
        return self.ingest_many([(host, seq, stream, source, records)])[0]

    def ingest_many(self, batches: list[tuple[str, int, str, str, np.ndarray]],
                    checkpoint: tuple[int, int] | None = None) -> list[bool]:
        """Store several batches (host, seq, stream, source, records) in ONE transaction (durable
        on return; all or nothing); for each, False if (host, seq) was already stored (skipped),
        also by an earlier batch of the same list. `checkpoint`, when given, is saved in the same
        transaction (see checkpoint())."""
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")
        checkpoint = check_checkpoint(checkpoint)
        prepared = prepare_batches(batches)
        cur = self._cur()
        with self._write_lock:
            fresh = [False] * len(prepared)
            first, ids, dups = {}, [], {}
            for i, (host, seq, *_rest) in enumerate(prepared):
                if (host, seq) in first:
                    dups[host] = dups.get(host, 0) + 1
                else:
                    first[(host, seq)] = i
                    ids.append(i)
            base = self._next_id
            self._next_id += len(ids)  # ids of batches that turn out stored already are just skipped
            now = time.time_ns()
            cur.execute("BEGIN TRANSACTION")
            try:
                if ids:
                    rows = pa.table({
                        "id": pa.array(np.arange(base, base + len(ids), dtype=np.uint64)),
                        "host": pa.array([prepared[i][0] for i in ids], pa.string()),
                        "seq": pa.array([prepared[i][1] for i in ids], pa.uint64()),
                        "stream": pa.array([prepared[i][2] for i in ids], pa.string()),
                        "source": pa.array([prepared[i][3] for i in ids], pa.string()),
                        "n": pa.array([prepared[i][4] for i in ids], pa.uint64()),
                        "received_ns": pa.array(np.full(len(ids), now, np.uint64))})
                    cur.register("_new_batches", rows)
                    try:
                        stored = {r[0] for r in cur.execute(
                            "INSERT OR IGNORE INTO batches SELECT * FROM _new_batches RETURNING id").fetchall()}
                    finally:
                        cur.unregister("_new_batches")
                    flows, texts = [], []
                    for j, i in enumerate(ids):
                        if base + j not in stored:
                            dups[prepared[i][0]] = dups.get(prepared[i][0], 0) + 1
                            continue
                        fresh[i] = True
                        (flows if prepared[i][2] == FLOWS else texts).append((base + j, prepared[i]))
                    if flows:
                        self._insert(cur, "obs", self._obs_table(flows))
                    if texts:
                        self._insert(cur, "records", pa.table({
                            "batch": pa.array(np.concatenate([np.full(p[4], bid, np.uint64) for bid, p in texts])),
                            "idx": pa.array(np.concatenate([np.arange(p[4], dtype=np.uint64) for _, p in texts])),
                            "data": pa.array([t for _, p in texts for t in p[5]], pa.string())}))
                for host, k in dups.items():
                    cur.execute("INSERT INTO hosts VALUES (?, ?) ON CONFLICT (host) DO UPDATE "
                                "SET duplicates = duplicates + excluded.duplicates", [host, k])
                if checkpoint is not None:
                    cur.execute("UPDATE checkpoint SET pos_a = ?, pos_b = ?", list(checkpoint))
                cur.execute("COMMIT")
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # the failed statement may already have aborted the transaction
                raise
        return fresh

    @staticmethod
    def _obs_table(flows: list) -> pa.Table:
        """One Arrow table of the obs rows of several (batch id, prepared flows batch)."""
        parts = [p[5] for _, p in flows]
        ns = [p[4] for _, p in flows]
        batch = np.repeat(np.array([bid for bid, _ in flows], np.uint64), ns)
        cols = {"batch": batch}
        for c in _OBS_COLUMNS[1:]:
            cols[c] = parts[0][c] if len(parts) == 1 else np.concatenate([p[c] for p in parts])
        return pa.table({c: pa.array(v) for c, v in cols.items()})

    @staticmethod
    def _insert(cur, table: str, data: pa.Table) -> None:
        cur.register("_rows", data)
        try:
            cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
        finally:
            cur.unregister("_rows")

    def checkpoint(self) -> tuple[int, int] | None:
        """The checkpoint saved by the last ingest_many (None if never): the collector's journal
        position up to which everything is stored."""
        rows = self._cur().execute("SELECT pos_a, pos_b FROM checkpoint").fetchall()
        return None if not rows or rows[0][0] is None else (int(rows[0][0]), int(rows[0][1]))

    # -- queries -------------------------------------------------------------------------------

    def _merged(self, where, start_ns, end_ns, sources=True) -> tuple[str, list, str, list]:
        """(WITH ... flows, its params, predicate on flows, its params) for a filtered merge;
        sources: also list each flow's "host:source" observers (costs a string aggregation)."""
        obs_where, obs_params = _build_filter(where, obs_side=True)
        params = {"win": self.merge_window_ns}
        range_join = ""
        flow_pred, flow_params = _build_filter(where, obs_side=False)
        if start_ns is not None or end_ns is not None:
            lo = 0 if start_ns is None else int(start_ns)
            hi = (1 << 64) - 1 if end_ns is None else int(end_ns)
            range_join = ("JOIN (SELECT DISTINCT vlan, proto, a, ap, b, bp FROM k "
                          f"WHERE end_ns >= {lo} AND start_ns < {hi}) r USING (vlan, proto, a, ap, b, bp)")
            flow_pred += f" AND end_ns >= {lo} AND start_ns < {hi}"
        lists = {"ph_sources": ",\n           list(DISTINCT host || ':' || source) AS sources",
                 "m_sources": ",\n           list_sort(flatten(list(sources))) AS sources",
                 "f_sources": ", sources"} if sources else {"ph_sources": "", "m_sources": "", "f_sources": ""}
        sql = MERGE_SQL.format(obs_where=obs_where, range_join=range_join, **lists)
        # DuckDB does not mix $name and ? parameters: inline the merge window (an int we made)
        sql = sql.replace("$win", f"{params['win']}::UBIGINT")
        return sql, obs_params, flow_pred, flow_params

    def flows(self, where: dict | None = None, start_ns=None, end_ns=None, limit: int = 1000) -> list[dict]:
        """Merged flows matching a filter (each with `observers`: list of host ids)."""
        sql, p1, pred, p2 = self._merged(where, start_ns, end_ns)
        rows = self._cur().execute(
            sql + f"SELECT {', '.join(FLOW_ROW)} FROM flows WHERE {pred} "
            "ORDER BY start_ns, src, dst, sport, dport, vlan, proto LIMIT ?", p1 + p2 + [int(limit)]).fetchall()
        out = []
        for r in rows:
            d = dict(zip(FLOW_ROW, r))
            d["src"], d["dst"] = addr_text(d["src"]), addr_text(d["dst"])
            for k in ("packets", "reverse_packets", "bytes", "reverse_bytes", "n_observations"):
                d[k] = int(d[k])
            out.append(d)
        return out

    def top(self, by: str = "bytes", group=("src", "dst"), start_ns=None, end_ns=None,
            limit: int = 10, where: dict | None = None) -> list[dict]:
        """Top-N merged flows grouped by keys (src, dst, sport, dport, proto, vlan, host, ...)."""
        group = top_group(by, group)
        sql, p1, pred, p2 = self._merged(where, start_ns, end_ns, sources="source" in group)
        # a flow seen by several observers (sources) counts under each of them
        if "source" in group:
            base = "(SELECT *, unnest(sources) AS hs FROM flows WHERE {pred}) f"
            exprs = {"host": "split_part(hs, ':', 1)", "source": "hs[strpos(hs, ':') + 1:]"}
        elif "host" in group:
            base = "(SELECT *, unnest(observers) AS host FROM flows WHERE {pred}) f"
            exprs = {"host": "host"}
        else:
            base = "(SELECT * FROM flows WHERE {pred}) f"
            exprs = {}
        exprs.update({"pair": "[least(src, dst), greatest(src, dst)]"})
        sel = [f"{exprs.get(g, g)} AS g_{g}" for g in group]
        gcols = ", ".join(f"g_{g}" for g in group)
        metrics = ", ".join(f"{e} AS {m}" for m, e in METRICS.items())
        q = (sql + f"SELECT {gcols}, {metrics} FROM (SELECT {', '.join(sel)}, * FROM "
             + base.format(pred=pred) + f") GROUP BY {gcols} ORDER BY {by} DESC, {gcols} LIMIT ?")
        rows = self._cur().execute(q, p1 + p2 + [int(limit)]).fetchall()
        out = []
        for r in rows:
            d = {}
            for g, v in zip(group, r):
                if g in ("src", "dst"):
                    v = addr_text(v)
                elif g == "pair":
                    v = [addr_text(x) for x in v]
                d[g] = v
            for m, v in zip(METRICS, r[len(group):]):
                d[m] = int(v)
            out.append(d)
        return out

    def totals(self, start_ns=None, end_ns=None, where=None) -> dict:
        """Merged flows, packets and bytes (both directions) matching a filter and time range."""
        sql, p1, pred, p2 = self._merged(where, start_ns, end_ns, sources=False)
        f, p, b = self._cur().execute(
            sql + "SELECT count(*), coalesce(sum(packets + reverse_packets), 0), "
            f"coalesce(sum(bytes + reverse_bytes), 0) FROM flows WHERE {pred}", p1 + p2).fetchone()
        return {"flows": int(f), "packets": int(p), "bytes": int(b)}

    def health(self) -> list[dict]:
        """Per host and per (host, source): last_seen_ns, batches, records, duplicates, plus the
        fields of the latest record of the `health` stream from that source."""
        cur = self._cur()
        out = []
        for host, last, nb, nr, dups in cur.execute(
                "SELECT b.host, max(received_ns), count(*), sum(n), coalesce(any_value(h.duplicates), 0) "
                "FROM batches b LEFT JOIN hosts h USING (host) GROUP BY b.host ORDER BY b.host").fetchall():
            out.append({"host": host, "source": None, "last_seen_ns": int(last), "batches": int(nb),
                        "records": int(nr), "duplicates": int(dups)})
        latest = {}
        for host, source, data in cur.execute(
                "SELECT b.host, b.source, arg_max(r.data, (b.seq, r.idx)) FROM records r "
                "JOIN batches b ON b.id = r.batch WHERE b.stream = ? GROUP BY b.host, b.source",
                [HEALTH]).fetchall():
            latest[(host, source)] = json.loads(data)
        out += source_health(cur.execute(
            "SELECT host, source, max(received_ns), count(*), sum(n) FROM batches "
            "GROUP BY host, source ORDER BY host, source").fetchall(), latest)
        return out

    def export(self, path: str, fmt: str = "csv", where=None, start_ns=None, end_ns=None) -> int:
        """Write the merged flows matching a filter to a CSV or Parquet file; rows written."""
        if fmt not in ("csv", "parquet"):
            raise StoreError(f"export format {fmt!r}: use csv or parquet")
        sql, p1, pred, p2 = self._merged(where, start_ns, end_ns)
        lists = ("array_to_string(observers, ' ') AS observers, array_to_string(sources, ' ') AS sources"
                 if fmt == "csv" else "observers, sources")
        cols = ("addr_text((src >> 64)::UBIGINT, (src & 18446744073709551615)::UBIGINT) AS src, "
                "addr_text((dst >> 64)::UBIGINT, (dst & 18446744073709551615)::UBIGINT) AS dst, sport, dport, proto, vlan, packets, "
                "reverse_packets, bytes, reverse_bytes, start_ns, end_ns, " + lists + ", n_observations")
        inner = (sql + f"SELECT {cols} FROM flows WHERE {pred} "
                 "ORDER BY start_ns, flows.src, flows.dst, sport, dport, vlan, proto")
        opts = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet"
        target = str(path).replace("'", "''")
        try:
            r = self._cur().execute(f"COPY ({inner}) TO '{target}' ({opts})", p1 + p2).fetchone()
        except duckdb.IOException as e:
            raise StoreError(f"cannot write export {path}: {e}") from None
        return int(r[0]) if r else 0

    def close(self) -> None:
        """Close the store (checkpointing the write-ahead log into the file)."""
        if not self._closed:
            self._closed = True
            self._con.close()

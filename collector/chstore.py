"""The collector's scale-out store on ClickHouse (``[collector] engine = "clickhouse"``): the same
interface and merge semantics as the embedded DuckDB store (collector/store.py, whose docstring
defines the merge rule, filters, top groups and flow rows), the data in ClickHouse tables
(collector/chschema.py), so several collectors can write one server or the shards of a cluster
and queries see all of them.

Works on Debian's clickhouse-server 18.16 (native protocol, clickhouse-driver): no window
functions there, so the merge window clustering is array SQL run in the server — per canonical key
the observations are collected with groupArray and sorted; a cluster starts at observation i
(1-based, in (start, end, host, seq, idx) order) when none of the earlier ones ends within the
window before its start. Since an observation's end is never before its start, that is "the number
of (end + window) values below start_i is i - 1", counted for all i at once by sorting the starts
and the ends + window into one event array and taking arrayCumSum over the end events. Cluster ids
are the cumulative sum of the starts; the rows are ARRAY JOINed back and aggregated per host
(sum) and across hosts (max) as in the DuckDB store.

Exactly-once: every ingest_many call is one load with an id of this collector (``collector_id``);
its data rows carry (collector, load), and a marker row in ``loads`` (with the journal checkpoint,
if given) is inserted after all the data. Queries only count rows whose (collector, load) has a
marker, so a load interrupted by a crash is invisible; on open the collector deletes its unmarked
rows (ALTER TABLE ... DELETE) and reads its checkpoint from its latest marker. Resent batches are
recognised by (collector, host, seq) among the marked batches. ClickHouse 18.16 writes an insert to
disk before acknowledging it but does not fsync, so acked batches survive a crash of the collector
or the server process, not necessarily a power loss of the server's machine.

Cluster layout (``cluster`` set): a store writes the ``*_local`` tables of the server it connects
to and reads through the Distributed tables, so the merge sees every shard; marker lookups run on
each shard against its own ``loads_local`` (a collector's data and markers live on one shard).

Retention (``retention_days`` > 0): tables created on a server with TTL (>= 19.6) carry a TTL; on
others (and for tables without a TTL) the store drops day partitions older than retention_days
when it opens and every ``retention_interval_s`` after (drop_expired()).
"""
from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time

import numpy as np
import pyarrow as pa

from . import chschema
from .store import (FILTER_KEYS, FLOW_ROW, FLOWS, GROUP_KEYS, HEALTH, METRICS, StoreError, StoreUnavailable,
                    _addr_range, _ints, _obs_addr_sql, _values, addr_text, check_checkpoint, prepare_batches,
                    source_health, top_group)

TTL_SINCE = (19, 6)  # first ClickHouse release with table TTL
_KEY = "vlan, proto, a_hi, a_lo, ap, b_hi, b_lo, bp"
_FW = ("(src_hi < dst_hi OR (src_hi = dst_hi AND (src_lo < dst_lo OR "
       "(src_lo = dst_lo AND sport <= dport))))")


def _client_errors():
    from clickhouse_driver import errors
    return errors


def _lit(values) -> str:
    """A ClickHouse list of string literals."""
    return ", ".join("'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


def _filter_sql(where: dict | None, obs_side: bool) -> str:
    """ClickHouse predicate for a `where` dict (see the DuckDB store): obs_side is the orientation-
    independent form on obs rows, otherwise the form on merged flows (values are checked ints and
    addresses, rendered as literals)."""
    clauses = []
    for key, v in (where or {}).items():
        if key not in FILTER_KEYS:
            raise StoreError(f"unknown filter {key!r}; use one of {', '.join(FILTER_KEYS)}")
        if key in ("src", "dst", "addr"):
            cols = ("src", "dst") if obs_side or key == "addr" else (key,)
            ors = [_obs_addr_sql(c, lo, hi) for lo, hi in (_addr_range(x) for x in _values(key, v)) for c in cols]
            clauses.append("(" + " OR ".join(ors) + ")")
        elif key in ("sport", "dport", "port"):
            cols = ("sport", "dport") if obs_side or key == "port" else (key,)
            vals = ", ".join(str(x) for x in _ints(key, v))
            clauses.append("(" + " OR ".join(f"{c} IN ({vals})" for c in cols) + ")")
        elif key in ("proto", "vlan"):
            clauses.append(f"{key} IN ({', '.join(str(x) for x in _ints(key, v))})")
        elif key == "host":
            if obs_side:
                continue  # observers are a property of the merged flow, not of the key
            clauses.append(f"hasAny(observers, [{_lit(str(x) for x in _values(key, v))}])")
    return " AND ".join(clauses) or "1"


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in str(text).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


class ClickHouseStore:
    """Batches from agents in ClickHouse tables; merged flow queries over them (like store.Store)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, database: str = "capfan",
                 user: str = "default", password: str = "", cluster: str = "", retention_days: int = 0,
                 collector_id: str | None = None, merge_window_s: float = 60.0, read_only: bool = False,
                 connect_timeout: float = 5.0, retention_interval_s: float = 3600.0):
        """Connect, create the schema if missing (unless read_only), remove this collector's
        unmarked rows and read its checkpoint."""
        if merge_window_s < 0:
            raise StoreError(f"merge_window_s must be >= 0, got {merge_window_s}")
        try:
            chschema.check_name(database, "[clickhouse] database")
            if cluster:
                chschema.check_name(cluster, "[clickhouse] cluster")
        except ValueError as e:
            raise StoreError(str(e)) from None
        if retention_days < 0:
            raise StoreError(f"[clickhouse] retention_days must be >= 0, got {retention_days}")
        self.host, self.port, self.database = host, int(port), database
        self.user, self._password = user, password
        self.cluster = cluster
        self.retention_days = int(retention_days)
        self.collector_id = collector_id or socket.gethostname().split(".")[0] or "collector"
        self.merge_window_ns = int(merge_window_s * 1e9)
        self.read_only = read_only
        self.connect_timeout = connect_timeout
        self.path = f"clickhouse://{host}:{self.port}/{database}"  # what messages call the store
        self.local, self.dist = chschema.table_names(cluster)
        self._local = threading.local()
        self._clients = []
        self._clients_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._retention_thread = None
        try:
            self.server_version = self._q("SELECT version()")[0][0]
            self.ttl_supported = _version_tuple(self.server_version)[:2] >= TTL_SINCE
            self._check_schema()
            self._next_load = 1
            if not read_only:
                self._next_load = self._cleanup_unmarked() + 1
            self.drops_partitions = bool(self.retention_days) and not self._tables_have_ttl()
            if self.drops_partitions and not read_only:
                self.drop_expired()
                self._retention_thread = threading.Thread(target=self._retention_loop, args=(retention_interval_s,),
                                                          name="capfan-ch-retention", daemon=True)
                self._retention_thread.start()
        except BaseException:
            self.close()
            raise

    # -- connections ---------------------------------------------------------------------------

    def _where(self) -> str:
        return f"ClickHouse at {self.host}:{self.port} ([clickhouse] host / port)"

    def _client(self, numpy: bool = False):
        """This thread's clickhouse_driver Client (one per thread: a client is not shareable)."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        attr = "np" if numpy else "plain"
        c = getattr(self._local, attr, None)
        if c is None:
            try:
                from clickhouse_driver import Client
            except ImportError:
                raise StoreError("[collector] engine = \"clickhouse\" needs the clickhouse-driver package "
                                 "(pip install 'capfan[clickhouse]')") from None
            c = Client(host=self.host, port=self.port, user=self.user, password=self._password,
                       connect_timeout=self.connect_timeout, send_receive_timeout=300,
                       settings={"use_numpy": True} if numpy else {})
            setattr(self._local, attr, c)
            with self._clients_lock:
                self._clients.append(c)
        return c

    def _q(self, sql: str, params=None, numpy: bool = False, **kw):
        """Run one statement; connection and server errors become StoreUnavailable (a StoreError)
        naming the server: the loader retries those instead of setting batches aside."""
        errors = _client_errors()
        try:
            return self._client(numpy).execute(sql, params, **kw)
        except (errors.NetworkError, errors.SocketTimeoutError, OSError, EOFError) as e:
            self._drop_client(numpy)
            raise StoreUnavailable(f"cannot reach {self._where()}: {e}") from None
        except errors.ServerException as e:
            if e.code in (192, 193, 516):  # unknown user, wrong password, authentication failed
                raise StoreUnavailable(f"{self._where()} refused the login: {e.message.splitlines()[0]} "
                                       "(check [clickhouse] user and password_file)") from None
            raise StoreUnavailable(f"{self._where()}: {e.message.splitlines()[0]} (code {e.code})") from None

    def _drop_client(self, numpy: bool) -> None:
        """Forget a broken connection (the next call reconnects)."""
        attr = "np" if numpy else "plain"
        c = getattr(self._local, attr, None)
        if c is not None:
            setattr(self._local, attr, None)
            try:
                c.disconnect()
            except Exception:  # noqa: BLE001 - already broken
                pass

    # -- schema --------------------------------------------------------------------------------

    def _tables(self) -> dict[str, str]:
        """{table name: engine} of the database."""
        return dict(self._q("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": self.database}))

    def _check_schema(self) -> None:
        """Create the schema where it is missing; refuse another schema version or layout."""
        tables = self._tables()
        want = set(self.local.values()) | set(self.dist.values()) | {"meta"}
        if self.cluster:
            found = self._q("SELECT count() FROM system.clusters WHERE cluster = %(c)s", {"c": self.cluster})[0][0]
            if not found:
                raise StoreError(f"cluster {self.cluster!r} ([clickhouse] cluster) is not in remote_servers of "
                                 f"{self.host}:{self.port}; add it to the server config (see deploy/clickhouse/"
                                 "capfan2.xml) or set cluster = \"\"")
        obs_engine = tables.get("obs")
        if obs_engine is not None:
            if self.cluster and obs_engine != "Distributed":
                raise StoreError(f"database {self.database} on {self.host}:{self.port} has the single-server "
                                 f"layout but [clickhouse] cluster = {self.cluster!r}; use another database or "
                                 "set cluster = \"\"")
            if not self.cluster and obs_engine == "Distributed":
                raise StoreError(f"database {self.database} on {self.host}:{self.port} has a cluster layout "
                                 "(Distributed tables); set [clickhouse] cluster to its cluster name")
        if not want <= set(tables):
            if self.read_only:
                raise StoreError(f"store {self.path} does not exist: database {self.database} has no (complete) "
                                 "capfan store schema (read-only open does not create it)")
            drop_parts = self.ttl_supported and bool(self._q(
                "SELECT 1 FROM system.merge_tree_settings WHERE name = 'ttl_only_drop_parts'"))
            for stmt in chschema.render(self.database, self.cluster, self.retention_days,
                                        ttl=self.ttl_supported, ttl_only_drop_parts=drop_parts):
                self._q(stmt)
        rows = self._q(f"SELECT value FROM {self.database}.meta WHERE key = 'schema_version'")
        if not rows and not self.read_only:
            self._q(f"INSERT INTO {self.database}.meta (key, value) VALUES", chschema.meta_rows())
            rows = [(str(chschema.SCHEMA_VERSION),)]
        versions = {r[0] for r in rows}
        if versions != {str(chschema.SCHEMA_VERSION)}:
            got = ", ".join(sorted(versions)) or "none"
            raise StoreError(f"database {self.database} on {self.host}:{self.port} has schema version {got}; "
                             f"this capfan uses ClickHouse schema version {chschema.SCHEMA_VERSION} and does "
                             "not migrate: use another [clickhouse] database (or drop this one)")

    def _tables_have_ttl(self) -> bool:
        """Whether the partitioned local tables were created with a TTL."""
        names = [self.local[t] for t in ("obs", "batches", "records", "dups")]
        rows = self._q("SELECT name, engine_full FROM system.tables WHERE database = %(d)s AND name IN %(n)s",
                       {"d": self.database, "n": tuple(names)})
        return bool(rows) and all(" TTL " in f" {full} " for _, full in rows)

    def _marked(self) -> str:
        """Predicate: the row belongs to a load with a marker (on each shard: its own markers)."""
        return f"(collector, load) IN (SELECT collector, load FROM {self.database}.{self.local['loads']})"

    def _cleanup_unmarked(self) -> int:
        """Delete this collector's rows of loads without a marker (a crash between data and marker);
        the highest load id of this collector seen anywhere (new loads get higher ids)."""
        db, c = self.database, {"c": self.collector_id}
        loads = f"{db}.{self.local['loads']}"
        top = self._q(f"SELECT max(load) FROM {loads} WHERE collector = %(c)s", c)[0][0] or 0
        for t in ("obs", "batches", "records", "dups"):
            name = f"{db}.{self.local[t]}"
            rows = self._q(f"SELECT DISTINCT load FROM {name} WHERE collector = %(c)s AND load NOT IN "
                           f"(SELECT load FROM {loads} WHERE collector = %(c)s)", c)
            stale = sorted(r[0] for r in rows)
            if stale:
                top = max(top, stale[-1])
                # a mutation (asynchronous on old servers): the rows are invisible to queries already
                self._q(f"ALTER TABLE {name} DELETE WHERE collector = %(c)s AND load IN %(l)s",
                        {"c": self.collector_id, "l": tuple(stale)})
        return top

    # -- retention -----------------------------------------------------------------------------

    def drop_expired(self, now_ns: int | None = None) -> list[tuple[str, str]]:
        """Drop the day partitions (of this server's tables) older than retention_days; the
        (table, partition id) pairs dropped."""
        if not self.retention_days or self.read_only:
            return []
        now = dt.datetime.fromtimestamp((now_ns or time.time_ns()) / 1e9, dt.timezone.utc).date()
        cutoff = (now - dt.timedelta(days=self.retention_days)).strftime("%Y%m%d")
        dropped = []
        for t in ("obs", "batches", "records", "dups"):
            name = self.local[t]
            for (pid,) in self._q("SELECT DISTINCT partition_id FROM system.parts WHERE database = %(d)s AND "
                                  "table = %(t)s AND active AND partition_id < %(c)s ORDER BY partition_id",
                                  {"d": self.database, "t": name, "c": cutoff}):
                self._q(f"ALTER TABLE {self.database}.{name} DROP PARTITION ID %(p)s", {"p": pid})
                dropped.append((name, pid))
        return dropped

    def _retention_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.drop_expired()
            except StoreError:
                pass  # the server is away: the next round retries

    # -- writing -------------------------------------------------------------------------------

    def ingest(self, host: str, seq: int, stream: str, source: str, records: np.ndarray) -> bool:
        """Store one batch (one load); False if (host, seq) was already stored."""
        return self.ingest_many([(host, seq, stream, source, records)])[0]

    def ingest_many(self, batches: list[tuple[str, int, str, str, np.ndarray]],
                    checkpoint: tuple[int, int] | None = None) -> list[bool]:
        """Store several batches (host, seq, stream, source, records) as ONE load: visible all
        together once its marker is written, or not at all; for each, False if (host, seq) was
        already stored by this collector (also earlier in the same list). `checkpoint`, when
        given, is saved in the marker."""
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")
        checkpoint = check_checkpoint(checkpoint)
        prepared = prepare_batches(batches)
        db, local = self.database, self.local
        with self._write_lock:
            fresh = [False] * len(prepared)
            first, dups = {}, {}
            for i, (host, seq, *_rest) in enumerate(prepared):
                if (host, seq) in first:
                    dups[host] = dups.get(host, 0) + 1
                else:
                    first[(host, seq)] = i
            stored = set()
            if first:
                stored = set(self._q(
                    f"SELECT host, seq FROM {db}.{local['batches']} WHERE collector = %(c)s AND (host, seq) IN %(k)s "
                    f"AND load IN (SELECT load FROM {db}.{local['loads']} WHERE collector = %(c)s)",
                    {"c": self.collector_id, "k": tuple(first)}))
            new = []
            for key, i in first.items():
                if key in stored:
                    dups[key[0]] = dups.get(key[0], 0) + 1
                else:
                    fresh[i] = True
                    new.append(prepared[i])
            if not new and not dups and checkpoint is None:
                return fresh
            load = self._next_load
            self._next_load += 1  # never reused, also when this load fails half-way
            now = time.time_ns()
            flows = [p for p in new if p[2] == FLOWS]
            texts = [p for p in new if p[2] != FLOWS and p[4]]
            if flows:
                self._insert("obs", self._obs_columns(flows, load))
            if texts:
                self._insert("records", self._record_columns(texts, load, now))
            if new:
                self._insert("batches", [
                    np.array([self.collector_id] * len(new), object), np.full(len(new), load, np.uint64),
                    np.array([p[0] for p in new], object), np.array([p[1] for p in new], np.uint64),
                    np.array([p[2] for p in new], object), np.array([p[3] for p in new], object),
                    np.array([p[4] for p in new], np.uint64), np.full(len(new), now, np.uint64)])
            if dups:
                self._insert("dups", [
                    np.array([self.collector_id] * len(dups), object), np.full(len(dups), load, np.uint64),
                    np.array(list(dups), object), np.array(list(dups.values()), np.uint64),
                    np.full(len(dups), now, np.uint64)])
            # the marker last: until it is in, the load's rows do not count anywhere
            a, b = checkpoint if checkpoint is not None else (0, 0)
            self._insert("loads", [np.array([self.collector_id], object), np.array([load], np.uint64),
                                   np.array([a], np.int64), np.array([b], np.int64),
                                   np.array([checkpoint is not None], np.uint8), np.array([now], np.uint64)])
        return fresh

    def _insert(self, table: str, columns: list) -> None:
        """Insert numpy columns (in chschema.COLUMNS order) into this server's local table."""
        cols = chschema.COLUMNS[table]
        self._q(f"INSERT INTO {self.database}.{self.local[table]} ({', '.join(cols)}) VALUES", columns,
                numpy=True, columnar=True)

    def _obs_columns(self, flows: list, load: int) -> list:
        """The obs columns of several prepared flow batches (one load)."""
        ns = [p[4] for p in flows]
        total = sum(ns)

        def cat(k):
            parts = [p[5][k] for p in flows]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        return [np.array([self.collector_id] * total, object), np.full(total, load, np.uint64),
                np.repeat(np.array([p[0] for p in flows], object), ns),
                np.repeat(np.array([p[1] for p in flows], np.uint64), ns),
                np.repeat(np.array([p[3] for p in flows], object), ns),
                np.concatenate([np.arange(n, dtype=np.uint32) for n in ns]) if ns else np.zeros(0, np.uint32),
                cat("start_ns"), cat("end_ns"), cat("src_hi"), cat("src_lo"), cat("dst_hi"), cat("dst_lo"),
                cat("sport"), cat("dport"), cat("vlan"), cat("proto"), cat("packets"), cat("rpackets"),
                cat("bytes"), cat("rbytes")]

    def _record_columns(self, texts: list, load: int, now: int) -> list:
        """The records columns of several prepared non-flow batches (one load)."""
        ns = [p[4] for p in texts]
        total = sum(ns)
        return [np.array([self.collector_id] * total, object), np.full(total, load, np.uint64),
                np.repeat(np.array([p[0] for p in texts], object), ns),
                np.repeat(np.array([p[1] for p in texts], np.uint64), ns),
                np.repeat(np.array([p[2] for p in texts], object), ns),
                np.repeat(np.array([p[3] for p in texts], object), ns),
                np.concatenate([np.arange(n, dtype=np.uint64) for n in ns]),
                np.full(total, now, np.uint64),
                np.array([t for p in texts for t in p[5]], object)]

    def checkpoint(self) -> tuple[int, int] | None:
        """The checkpoint of this collector's latest load that had one (None if never)."""
        rows = self._q(f"SELECT pos_a, pos_b FROM {self.database}.{self.local['loads']} WHERE collector = %(c)s "
                       "AND has_checkpoint ORDER BY load DESC LIMIT 1", {"c": self.collector_id})
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    # -- queries -------------------------------------------------------------------------------

    def _flows_sql(self, where, start_ns, end_ns, sources=True) -> str:
        """SELECT of the merged flows matching a filter and time range (columns: src_hi, src_lo,
        dst_hi, dst_lo, sport, dport, proto, vlan, packets, reverse_packets, bytes, reverse_bytes,
        start_ns, end_ns, observers[, sources], n_observations)."""
        obs_where = _filter_sql(where, obs_side=True)
        flow_pred = _filter_sql(where, obs_side=False)
        in_range = having = ""
        if start_ns is not None or end_ns is not None:
            lo = 0 if start_ns is None else int(start_ns)
            hi = (1 << 64) - 1 if end_ns is None else int(end_ns)
            # keys with an observation in the range; their whole history is merged
            in_range = f",\n       max(end_ns >= {lo} AND start_ns < {hi}) AS in_range"
            having = "\nHAVING in_range"
            flow_pred += f" AND end_ns >= {lo} AND start_ns < {hi}"
        win = int(self.merge_window_ns)
        db = self.database
        key = (f"vlan, proto, if({_FW} AS fw, src_hi, dst_hi) AS a_hi, if(fw, src_lo, dst_lo) AS a_lo, "
               "if(fw, sport, dport) AS ap,\n       if(fw, dst_hi, src_hi) AS b_hi, if(fw, dst_lo, src_lo) AS b_lo, "
               "if(fw, dport, sport) AS bp")
        # per key: observations in (start, end, host, seq, idx) order
        by_key = (f"SELECT {key},\n       arraySort(groupArray((start_ns, end_ns, host, seq, idx, fw, "
                  "if(fw, packets, rpackets), if(fw, rpackets, packets), if(fw, bytes, rbytes), "
                  f"if(fw, rbytes, bytes), source))) AS o{in_range}\n"
                  f"FROM {db}.{self.dist['obs']}\nWHERE {self._marked()} AND {obs_where}\n"
                  f"GROUP BY vlan, proto, a_hi, a_lo, ap, b_hi, b_lo, bp{having}")
        # brk[i]: observation i opens a cluster (no earlier end + window reaches its start)
        clustered = (f"SELECT {_KEY}, o, arrayEnumerate(o) AS r,\n"
                     "       arraySort(arrayConcat(arrayMap((x, i) -> (x.1, toUInt8(0), toUInt32(i)), o, r),\n"
                     f"           arrayMap(x -> (x.2 + toUInt64({win}), toUInt8(1), toUInt32(0)), o))) AS ev,\n"
                     "       arrayFilter((c, e) -> e.2 = 0, arrayCumSum(arrayMap(e -> toUInt64(e.2), ev)), ev) AS below,\n"
                     "       arrayMap((c, i) -> c + 1 >= i, below, r) AS brk, arrayCumSum(brk) AS cid\n"
                     f"FROM ({by_key})")
        src_ph = ",\n       groupUniqArray(concat(ox.3, ':', ox.11)) AS srcs" if sources else ""
        src_m = ",\n       arraySort(groupUniqArrayArray(srcs)) AS sources" if sources else ""
        per_host = (f"SELECT {_KEY}, cid_x AS cl, ox.3 AS h,\n"
                    "       sum(ox.7) AS s_pab, sum(ox.8) AS s_pba, sum(ox.9) AS s_bab, sum(ox.10) AS s_bba,\n"
                    "       min(ox.1) AS t0, max(ox.2) AS t1, count() AS n, maxIf(ox.6, brk_x) AS first_fw"
                    f"{src_ph}\n"
                    f"FROM ({clustered})\nARRAY JOIN o AS ox, brk AS brk_x, cid AS cid_x\n"
                    f"GROUP BY {_KEY}, cl, h")
        merged = (f"SELECT {_KEY}, max(s_pab) AS m_pab, max(s_pba) AS m_pba, max(s_bab) AS m_bab, "
                  "max(s_bba) AS m_bba,\n       min(t0) AS m_t0, max(t1) AS m_t1, sum(n) AS m_n, "
                  f"arraySort(groupArray(h)) AS observers, max(first_fw) AS ff{src_m}\n"
                  f"FROM ({per_host})\nGROUP BY {_KEY}, cl")
        flows = ("SELECT if(ff, a_hi, b_hi) AS src_hi, if(ff, a_lo, b_lo) AS src_lo, if(ff, b_hi, a_hi) AS dst_hi, "
                 "if(ff, b_lo, a_lo) AS dst_lo,\n       if(ff, ap, bp) AS sport, if(ff, bp, ap) AS dport, proto, vlan,\n"
                 "       if(ff, m_pab, m_pba) AS packets, if(ff, m_pba, m_pab) AS reverse_packets,\n"
                 "       if(ff, m_bab, m_bba) AS bytes, if(ff, m_bba, m_bab) AS reverse_bytes,\n"
                 f"       m_t0 AS start_ns, m_t1 AS end_ns, observers{', sources' if sources else ''}, "
                 f"m_n AS n_observations\nFROM ({merged})")
        return f"SELECT * FROM ({flows})\nWHERE {flow_pred}"

    _ORDER = "start_ns, src_hi, src_lo, dst_hi, dst_lo, sport, dport, vlan, proto"

    def flows(self, where: dict | None = None, start_ns=None, end_ns=None, limit: int = 1000) -> list[dict]:
        """Merged flows matching a filter (each with `observers`: list of host ids)."""
        sql = self._flows_sql(where, start_ns, end_ns)
        rows = self._q(f"SELECT * FROM ({sql}) ORDER BY {self._ORDER} LIMIT {int(limit)}", with_column_types=True)
        data, types = rows
        names = [n for n, _ in types]
        out = []
        for r in data:
            d = dict(zip(names, r))
            row = {"src": addr_text((d["src_hi"] << 64) | d["src_lo"]), "dst": addr_text((d["dst_hi"] << 64) | d["dst_lo"])}
            for k in FLOW_ROW[2:]:
                row[k] = d[k]
            row["observers"], row["sources"] = list(row["observers"]), list(row["sources"])
            out.append(row)
        return out

    def top(self, by: str = "bytes", group=("src", "dst"), start_ns=None, end_ns=None,
            limit: int = 10, where: dict | None = None) -> list[dict]:
        """Top-N merged flows grouped by keys (src, dst, sport, dport, proto, vlan, host, ...)."""
        group = top_group(by, group)
        sql = self._flows_sql(where, start_ns, end_ns, sources="source" in group)
        # a flow seen by several observers (sources) counts under each of them
        if "source" in group:
            base = f"(SELECT *, arrayJoin(sources) AS hs FROM ({sql}))"
            exprs = {"host": ["substring(hs, 1, position(hs, ':') - 1)"],
                     "source": ["substring(hs, position(hs, ':') + 1)"]}
        elif "host" in group:
            base = f"(SELECT *, arrayJoin(observers) AS hs FROM ({sql}))"
            exprs = {"host": ["hs"]}
        else:
            base = f"({sql})"
            exprs = {}
        lo_first = "(src_hi < dst_hi OR (src_hi = dst_hi AND src_lo <= dst_lo))"
        exprs.update({"src": ["src_hi", "src_lo"], "dst": ["dst_hi", "dst_lo"],
                      "pair": [f"if({lo_first}, src_hi, dst_hi)", f"if({lo_first}, src_lo, dst_lo)",
                               f"if({lo_first}, dst_hi, src_hi)", f"if({lo_first}, dst_lo, src_lo)"]})
        sel, gcols = [], []
        for g in group:
            for j, e in enumerate(exprs.get(g, [g])):
                sel.append(f"{e} AS g_{g}_{j}")
                gcols.append(f"g_{g}_{j}")
        metrics = ", ".join(f"{e} AS m_{m}" for m, e in METRICS.items())
        q = (f"SELECT {', '.join(gcols)}, {metrics} FROM (SELECT {', '.join(sel)}, packets, reverse_packets, "
             f"bytes, reverse_bytes FROM {base}) GROUP BY {', '.join(gcols)} "
             f"ORDER BY m_{by} DESC, {', '.join(gcols)} LIMIT {int(limit)}")
        out = []
        for r in self._q(q):
            d, i = {}, 0
            for g in group:
                if g in ("src", "dst"):
                    d[g] = addr_text((r[i] << 64) | r[i + 1])
                    i += 2
                elif g == "pair":
                    d[g] = [addr_text((r[i] << 64) | r[i + 1]), addr_text((r[i + 2] << 64) | r[i + 3])]
                    i += 4
                else:
                    d[g] = r[i]
                    i += 1
            for m, v in zip(METRICS, r[i:]):
                d[m] = int(v)
            out.append(d)
        return out

    def totals(self, start_ns=None, end_ns=None, where=None) -> dict:
        """Merged flows, packets and bytes (both directions) matching a filter and time range."""
        sql = self._flows_sql(where, start_ns, end_ns, sources=False)
        f, p, b = self._q(f"SELECT count(), sum(packets + reverse_packets), sum(bytes + reverse_bytes) "
                          f"FROM ({sql})")[0]
        return {"flows": int(f), "packets": int(p), "bytes": int(b)}

    def health(self) -> list[dict]:
        """Per host and per (host, source): last_seen_ns, batches, records, duplicates, plus the
        fields of the latest record of the `health` stream from that source."""
        db, marked = self.database, self._marked()
        dups = dict(self._q(f"SELECT host, sum(duplicates) FROM {db}.{self.dist['dups']} WHERE {marked} "
                            "GROUP BY host"))
        out = []
        for host, last, nb, nr in self._q(f"SELECT host, max(received_ns), count(), sum(n) FROM "
                                          f"{db}.{self.dist['batches']} WHERE {marked} GROUP BY host ORDER BY host"):
            out.append({"host": host, "source": None, "last_seen_ns": int(last), "batches": int(nb),
                        "records": int(nr), "duplicates": int(dups.get(host, 0))})
        latest = {(h, s): json.loads(d) for h, s, d in self._q(
            f"SELECT host, source, argMax(data, (seq, idx)) FROM {db}.{self.dist['records']} "
            f"WHERE {marked} AND stream = %(s)s GROUP BY host, source", {"s": HEALTH})}
        out += source_health(self._q(
            f"SELECT host, source, max(received_ns), count(), sum(n) FROM {db}.{self.dist['batches']} "
            f"WHERE {marked} GROUP BY host, source ORDER BY host, source"), latest)
        return out

    def export(self, path: str, fmt: str = "csv", where=None, start_ns=None, end_ns=None) -> int:
        """Write the merged flows matching a filter to a CSV or Parquet file; rows written."""
        if fmt not in ("csv", "parquet"):
            raise StoreError(f"export format {fmt!r}: use csv or parquet")
        sql = self._flows_sql(where, start_ns, end_ns)
        cols = self._q(f"SELECT * FROM ({sql}) ORDER BY {self._ORDER}", columnar=True, with_column_types=True)
        data, types = cols
        names = [n for n, _ in types]
        c = dict(zip(names, data)) if data else {n: [] for n in names}

        def addrs(hi, lo):
            return pa.array([addr_text((h << 64) | l_) for h, l_ in zip(hi, lo)], pa.string())

        arrow = {"src": addrs(c["src_hi"], c["src_lo"]), "dst": addrs(c["dst_hi"], c["dst_lo"])}
        kinds = {"sport": pa.uint16(), "dport": pa.uint16(), "proto": pa.uint8(), "vlan": pa.uint16()}
        for k in FLOW_ROW[2:]:
            if k in ("observers", "sources"):
                vals = [list(x) for x in c[k]]
                arrow[k] = (pa.array([" ".join(x) for x in vals], pa.string()) if fmt == "csv"
                            else pa.array(vals, pa.list_(pa.string())))
            else:
                arrow[k] = pa.array(list(c[k]), kinds.get(k, pa.uint64()))
        table = pa.table(arrow)
        try:
            if fmt == "csv":
                import pyarrow.csv as pcsv
                pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="needed"))
            else:
                import pyarrow.parquet as pq
                pq.write_table(table, path)
        except OSError as e:
            raise StoreError(f"cannot write export {path}: {e}") from None
        return table.num_rows

    def close(self) -> None:
        """Stop the retention thread and close the connections."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._retention_thread is not None:
            self._retention_thread.join(timeout=5)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.disconnect()
            except Exception:  # noqa: BLE001 - closing anyway
                pass

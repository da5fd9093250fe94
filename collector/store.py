"""STAND-IN, replaced at merge: a small sqlite Store with exactly the contract API (issue 6), so
intake and API can be built and tested before the real embedded store lands. No cross-host
merge: each observation is its own flow; (host, seq) dedup and commit-before-return are real."""
from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time

import numpy as np

from capfan import records as R

_COLS = {"src": "src", "dst": "dst", "sport": "sport", "dport": "dport", "proto": "proto", "vlan": "vlan",
         "host": "host"}
_BY = {"bytes": "SUM(bytes + rbytes)", "packets": "SUM(packets + rpackets)", "flows": "COUNT(*)"}


class Store:
    """Stand-in store: sqlite file (or ':memory:')."""

    def __init__(self, path: str, merge_window_s: float = 60.0, read_only: bool = False):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS batches(host TEXT, seq INTEGER, stream TEXT, source TEXT, n INTEGER,"
            " at INTEGER, PRIMARY KEY(host, seq));"
            "CREATE TABLE IF NOT EXISTS obs(host TEXT, source TEXT, start INTEGER, end INTEGER, src TEXT, dst TEXT,"
            " sport INTEGER, dport INTEGER, proto INTEGER, vlan INTEGER, packets INTEGER, bytes INTEGER,"
            " rpackets INTEGER, rbytes INTEGER);"
            "CREATE TABLE IF NOT EXISTS other(host TEXT, source TEXT, stream TEXT, at INTEGER, body TEXT);")
        self.dups = {}

    def ingest(self, host, seq, stream, source, records) -> bool:
        """Durably store one batch (committed on return); False if (host, seq) was already stored."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN")
            try:
                cur.execute("INSERT INTO batches VALUES (?,?,?,?,?,?)",
                            (host, seq, stream, source, len(records), time.time_ns()))
            except sqlite3.IntegrityError:
                cur.execute("ROLLBACK")
                self.dups[host] = self.dups.get(host, 0) + 1
                return False
            if stream == "flows" and records.dtype.names and "sourceIPAddress" in records.dtype.names:
                cur.executemany("INSERT INTO obs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", [
                    (host, source, int(r["flowStartNanoseconds"]), int(r["flowEndNanoseconds"]),
                     R.address(r["sourceIPAddress"].tobytes(), int(r["ipVersion"])),
                     R.address(r["destinationIPAddress"].tobytes(), int(r["ipVersion"])),
                     int(r["sourceTransportPort"]), int(r["destinationTransportPort"]),
                     int(r["protocolIdentifier"]), int(r["vlanId"]), int(r["packetDeltaCount"]),
                     int(r["octetDeltaCount"]), int(r["reversePacketDeltaCount"]), int(r["reverseOctetDeltaCount"]))
                    for r in records])
            else:
                cur.execute("INSERT INTO other VALUES (?,?,?,?,?)", (host, source, stream, time.time_ns(), json.dumps(
                    [{k: (v.item() if isinstance(v, np.generic) else repr(v)) for k, v in zip(records.dtype.names, r)}
                     for r in records[:100]] if records.dtype.names else [])))
            cur.execute("COMMIT")
            return True

    def _where(self, where, start_ns, end_ns):
        sql, args = [], []
        for k, v in (where or {}).items():
            if k not in _COLS:
                raise ValueError(f"unknown filter key {k!r}")
            sql.append(f"{_COLS[k]} = ?")
            args.append(v)
        if start_ns is not None:
            sql.append("end >= ?")
            args.append(start_ns)
        if end_ns is not None:
            sql.append("start <= ?")
            args.append(end_ns)
        return (" WHERE " + " AND ".join(sql)) if sql else "", args

    def _query(self, sql, args):
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def top(self, by="bytes", group=("src", "dst"), start_ns=None, end_ns=None, limit=10, where=None):
        """Top-N flows grouped by keys."""
        if by not in _BY:
            raise ValueError(f"unknown 'by' {by!r}")
        for g in group:
            if g not in _COLS:
                raise ValueError(f"unknown group key {g!r}")
        w, args = self._where(where, start_ns, end_ns)
        keys = ", ".join(_COLS[g] for g in group)
        return self._query(f"SELECT {keys}, COUNT(*) AS flows, SUM(packets + rpackets) AS packets,"
                           f" SUM(bytes + rbytes) AS bytes FROM obs{w} GROUP BY {keys}"
                           f" ORDER BY {_BY[by]} DESC LIMIT ?", args + [limit])

    def flows(self, where=None, start_ns=None, end_ns=None, limit=1000):
        """Flows matching a filter (each with `observers`)."""
        w, args = self._where(where, start_ns, end_ns)
        rows = self._query(f"SELECT * FROM obs{w} ORDER BY start LIMIT ?", args + [limit])
        for r in rows:
            r["observers"] = [r.pop("host")]
        return rows

    def totals(self, start_ns=None, end_ns=None, where=None) -> dict:
        """flows, packets, bytes."""
        w, args = self._where(where, start_ns, end_ns)
        r = self._query(f"SELECT COUNT(*) AS flows, COALESCE(SUM(packets + rpackets), 0) AS packets,"
                        f" COALESCE(SUM(bytes + rbytes), 0) AS bytes FROM obs{w}", args)[0]
        return r

    def health(self) -> list[dict]:
        """Per host: last_seen_ns, batches, records, duplicates."""
        rows = self._query("SELECT host, MAX(at) AS last_seen_ns, COUNT(*) AS batches, SUM(n) AS records"
                           " FROM batches GROUP BY host ORDER BY host", [])
        for r in rows:
            r["duplicates"] = self.dups.get(r["host"], 0)
        return rows

    def export(self, path, fmt="csv", where=None, start_ns=None, end_ns=None) -> int:
        """Write matching flows to a CSV or Parquet file; the row count."""
        rows = self.flows(where, start_ns, end_ns, limit=1 << 62)
        for r in rows:
            r["observers"] = ",".join(r["observers"])
        cols = ["start", "end", "src", "dst", "sport", "dport", "proto", "vlan", "packets", "bytes", "rpackets",
                "rbytes", "source", "observers"]
        if fmt == "csv":
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, cols)
                w.writeheader()
                w.writerows(rows)
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({c: [r[c] for r in rows] for c in cols}), path)
        else:
            raise ValueError(f"unknown export format {fmt!r}")
        return len(rows)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

"""The ClickHouse schema of the collector's scale-out store (collector/chstore.py), rendered as SQL.

One renderer serves the store (which creates what is missing when it opens) and the files shipped
in deploy/clickhouse/ (``python -m capfan.collector.chschema --deploy deploy/clickhouse`` rewrites
them; a test checks they equal the rendered text).

Tables (every one is a MergeTree; rows carry the writing collector's id and its load id):

    obs       flow observations as the sensors sent them (addresses as big-endian UInt64 halves)
    batches   one row per stored batch: dedup of resent batches by (collector, host, seq), health
    records   other streams (health, stats): one JSON text per record
    dups      duplicate counters per host and load
    loads     the markers: a load's rows count only once its marker row exists (inserted after
              the data); the marker holds the collector's journal checkpoint
    meta      the schema version

``obs`` is partitioned by the day of the observation's start, ``batches`` / ``records`` / ``dups``
by the day they were received: retention drops whole days. With ``ttl`` (ClickHouse >= 19.6) and
retention_days > 0 the tables carry a TTL; older servers (Debian's 18.16) have no TTL and the
collector drops partitions older than retention_days itself.

With a cluster name, each table is ``<name>_local`` on every shard plus a Distributed table
``<name>`` over the cluster (remote_servers in the server config); a collector writes the local
tables of the server it connects to and queries through the Distributed ones. ``meta`` is always
local. Without a cluster the tables have their plain names.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SCHEMA_VERSION = 1
TABLES = ("obs", "batches", "records", "dups", "loads")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _day(col: str) -> str:
    # toDate(UInt) means "day number" on old servers and "unix time" on new ones: go via DateTime
    return f"toDate(toDateTime(intDiv({col}, 1000000000)))"


# name -> (columns, partition column (ns) or None, ORDER BY)
_LAYOUT = {
    "obs": ([("collector", "String"), ("load", "UInt64"), ("host", "String"), ("seq", "UInt64"),
             ("source", "String"), ("idx", "UInt32"), ("start_ns", "UInt64"), ("end_ns", "UInt64"),
             ("src_hi", "UInt64"), ("src_lo", "UInt64"), ("dst_hi", "UInt64"), ("dst_lo", "UInt64"),
             ("sport", "UInt16"), ("dport", "UInt16"), ("vlan", "UInt16"), ("proto", "UInt8"),
             ("packets", "UInt64"), ("rpackets", "UInt64"), ("bytes", "UInt64"), ("rbytes", "UInt64")],
            "start_ns", "start_ns"),
    "batches": ([("collector", "String"), ("load", "UInt64"), ("host", "String"), ("seq", "UInt64"),
                 ("stream", "String"), ("source", "String"), ("n", "UInt64"), ("received_ns", "UInt64")],
                "received_ns", "(collector, host, seq)"),
    "records": ([("collector", "String"), ("load", "UInt64"), ("host", "String"), ("seq", "UInt64"),
                 ("stream", "String"), ("source", "String"), ("idx", "UInt64"), ("received_ns", "UInt64"),
                 ("data", "String")],
                "received_ns", "(collector, stream, host, source, seq, idx)"),
    "dups": ([("collector", "String"), ("load", "UInt64"), ("host", "String"), ("duplicates", "UInt64"),
              ("received_ns", "UInt64")],
             "received_ns", "(collector, host)"),
    # markers are small and must outlive the data they mark: no partitions, no retention
    "loads": ([("collector", "String"), ("load", "UInt64"), ("pos_a", "Int64"), ("pos_b", "Int64"),
               ("has_checkpoint", "UInt8"), ("created_ns", "UInt64")],
              None, "(collector, load)"),
}

#: columns of each table, in order (the store inserts by these names)
COLUMNS = {t: [c for c, _ in cols] for t, (cols, _, _) in _LAYOUT.items()}


def check_name(value: str, what: str) -> str:
    """A database or cluster name usable unquoted in SQL, else ValueError naming `what`."""
    if not _IDENT.match(value or ""):
        raise ValueError(f"{what} {value!r} is not a plain identifier (letters, digits, '_'; not starting "
                         "with a digit)")
    return value


def table_names(cluster: str = "") -> tuple[dict, dict]:
    """({table: name to write (local)}, {table: name to query}) for a layout."""
    if cluster:
        return {t: f"{t}_local" for t in TABLES}, {t: t for t in TABLES}
    return {t: t for t in TABLES}, {t: t for t in TABLES}


def render(database: str = "capfan", cluster: str = "", retention_days: int = 0, ttl: bool = False,
           ttl_only_drop_parts: bool = True) -> list[str]:
    """The schema's statements (each idempotent: IF NOT EXISTS) for one server of the layout;
    ttl_only_drop_parts=False leaves out that setting (servers with TTL but before the setting)."""
    check_name(database, "database")
    if cluster:
        check_name(cluster, "cluster")
    if retention_days < 0:
        raise ValueError(f"retention_days must be >= 0, got {retention_days}")
    local, _ = table_names(cluster)
    out = [f"CREATE DATABASE IF NOT EXISTS {database}",
           f"CREATE TABLE IF NOT EXISTS {database}.meta (key String, value String) "
           "ENGINE = MergeTree() ORDER BY key"]
    for t in TABLES:
        cols, part, order = _LAYOUT[t]
        body = ",\n    ".join(f"{c} {ty}" for c, ty in cols)
        stmt = f"CREATE TABLE IF NOT EXISTS {database}.{local[t]} (\n    {body}\n) ENGINE = MergeTree()"
        if part:
            stmt += f"\nPARTITION BY {_day(part)}"
        stmt += f"\nORDER BY {order}"
        if part and ttl and retention_days:
            stmt += f"\nTTL {_day(part)} + INTERVAL {int(retention_days)} DAY"
            if ttl_only_drop_parts:
                # expired days go as whole parts (partitions are days), never by rewriting parts
                stmt += "\nSETTINGS ttl_only_drop_parts = 1"
        out.append(stmt)
        if cluster:
            out.append(f"CREATE TABLE IF NOT EXISTS {database}.{t} AS {database}.{local[t]}\n"
                       f"ENGINE = Distributed({cluster}, {database}, {local[t]})")
    return out


def meta_rows() -> list[tuple[str, str]]:
    """The rows of meta in a new schema."""
    return [("schema_version", str(SCHEMA_VERSION))]


def render_text(database: str = "capfan", cluster: str = "", retention_days: int = 0, ttl: bool = False) -> str:
    """The schema as one SQL file: a header saying how to apply it, the statements, the meta row."""
    if cluster:
        where = (f"every server of cluster '{cluster}' (remote_servers in its config, see capfan2.xml);\n"
                 "-- collectors write the *_local tables of their own server and query the Distributed ones.")
    else:
        where = "one server."
    if retention_days and ttl:
        keep = f"-- Retention: TTL {retention_days} days (needs ClickHouse >= 19.6)."
    elif retention_days:
        keep = (f"-- Retention {retention_days} days: this server has no TTL; the collector drops older day "
                "partitions itself.")
    else:
        keep = ("-- Retention: none in the tables (set [clickhouse] retention_days: the collector adds a TTL on "
                "servers >= 19.6, or drops old day partitions on older ones).")
    args = [f"--database {database}"] + ([f"--cluster {cluster}"] if cluster else []) + \
        ([f"--retention-days {retention_days}"] if retention_days else []) + (["--ttl"] if ttl else [])
    head = (f"-- capfan collector schema version {SCHEMA_VERSION} for {where}\n"
            f"-- Apply: clickhouse-client --multiquery < THIS_FILE (the collector also creates what is missing\n"
            f"-- when it starts). Generated by: python -m capfan.collector.chschema {' '.join(args)}\n"
            f"{keep}\n")
    stmts = render(database, cluster, retention_days, ttl)
    # the collector inserts the meta row only into an empty meta; the file does the same
    stmts += [f"INSERT INTO {database}.meta SELECT '{k}', '{v}' WHERE (SELECT count() FROM {database}.meta) = 0"
              for k, v in meta_rows()]
    return head + "\n" + ";\n\n".join(stmts) + ";\n"


def remote_servers_xml(cluster: str, shards: list[tuple[str, int]]) -> str:
    """A config.d file declaring `cluster` with one shard (one replica) per (host, port)."""
    check_name(cluster, "cluster")
    body = "\n".join(f"            <shard><replica><host>{h}</host><port>{int(p)}</port></replica></shard>"
                     for h, p in shards)
    return ("<?xml version=\"1.0\"?>\n<!-- capfan two-shard layout: put in /etc/clickhouse-server/config.d/ on every\n"
            "     server of the cluster (hosts as the servers reach each other). -->\n"
            f"<yandex>\n    <remote_servers>\n        <{cluster}>\n{body}\n        </{cluster}>\n"
            "    </remote_servers>\n</yandex>\n")


#: the files shipped in deploy/clickhouse/: name -> text
def deploy_files() -> dict[str, str]:
    """The shipped schema files (deploy/clickhouse/) as {file name: text}."""
    return {
        "schema.sql": render_text(),
        "schema-cluster.sql": render_text(cluster="capfan2"),
        "schema-ttl.sql": render_text(retention_days=30, ttl=True),
        "capfan2.xml": remote_servers_xml("capfan2", [("clickhouse-1", 9000), ("clickhouse-2", 9000)]),
    }


def main(argv=None) -> int:
    """Print a rendered schema, or (--deploy DIR) rewrite the shipped files."""
    p = argparse.ArgumentParser(prog="python -m capfan.collector.chschema", description=__doc__.split("\n")[0])
    p.add_argument("--database", default="capfan")
    p.add_argument("--cluster", default="")
    p.add_argument("--retention-days", type=int, default=0)
    p.add_argument("--ttl", action="store_true", help="TTL clauses (ClickHouse >= 19.6)")
    p.add_argument("--deploy", metavar="DIR", help="write the shipped files (schema*.sql, capfan2.xml) into DIR")
    a = p.parse_args(argv)
    try:
        if a.deploy:
            d = Path(a.deploy)
            d.mkdir(parents=True, exist_ok=True)
            for name, text in deploy_files().items():
                (d / name).write_text(text)
                print(d / name)
            return 0
        sys.stdout.write(render_text(a.database, a.cluster, a.retention_days, a.ttl))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

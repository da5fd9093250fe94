"""The `capfan collect` process: open the store, start the intake and the API, print a status
line now and then, and on stop close them in the order that keeps every acked batch stored."""
from __future__ import annotations

import sys
import threading
import time

from . import api as api_mod
from . import intake as intake_mod
from . import journal as journal_mod
from . import loader as loader_mod
from . import store as store_mod


def journal_dir(store_path: str) -> str:
    """The journal directory beside a store file."""
    return f"{store_path}.journal"


def open_store(cfg: dict, read_only: bool = False):
    """The store a checked config selects: [collector] engine = "duckdb" (the file `store`) or
    "clickhouse" (the server of [clickhouse])."""
    col = cfg["collector"]
    if col["engine"] == "clickhouse":
        from .chstore import ClickHouseStore
        ch = cfg["clickhouse"]
        return ClickHouseStore(host=ch["host"], port=ch["port"], database=ch["database"], user=ch["user"],
                               password=ch["password"], cluster=ch["cluster"], retention_days=ch["retention_days"],
                               collector_id=ch["collector_id"], merge_window_s=col["merge_window"],
                               read_only=read_only)
    return store_mod.Store(col["store"], merge_window_s=col["merge_window"], read_only=read_only)


class Collector:
    """Store + intake + API of one checked config (collector.config.load)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.store = None
        self.journal = None
        self.loader = None
        self.intake = None
        self.api = None
        self.started_ns = 0

    def start(self) -> None:
        """Open the store, bind the intake, then serve the API; on failure whatever started is closed."""
        col, sec, api = self.cfg["collector"], self.cfg["security"], self.cfg["api"]
        try:
            self.store = open_store(self.cfg)
            # acked = journaled and synced; the loader moves batches into the store in groups
            self.journal = journal_mod.Journal(journal_dir(col["store"]))
            self.loader = loader_mod.Loader(self.store, self.journal, col["max_message_bytes"])
            self.loader.start()
            self.intake = intake_mod.Intake(self.store, col["listen"], mode=sec["mode"],
                                            secret_key=sec["secret_key"], authorized=sec["authorized"],
                                            max_message_bytes=col["max_message_bytes"], journal=self.journal)
            self.intake.start()
            if api["enabled"]:
                self.api = api_mod.Api(self.store, api["listen"], intake=self.intake, loader=self.loader,
                                       info={"collector": col["name"], "listen": self.intake.endpoint,
                                             "security": sec["mode"], "public_key": sec["public_key"]})
                self.api.start()
        except BaseException:
            self.stop()
            raise
        self.started_ns = time.time_ns()

    def stop(self) -> None:
        """Stop the intake first (what it acked is journaled), load the rest of the journal, stop the
        API, close the store and the journal."""
        if self.intake is not None:
            self.intake.stop()
            self.intake = None
        if self.loader is not None:
            self.loader.stop()
            self.loader = None
        if self.api is not None and self.api._server is not None:
            self.api.stop()
        self.api = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def banner(self) -> list[str]:
        """Lines saying where it listens and with which key."""
        sec = self.cfg["security"]
        lines = [(f"capfan collect {self.cfg['collector']['name']}: intake on {self.intake.endpoint} "
                  f"({sec['mode']}), store {self.store_text()}")]
        if sec["mode"] == "curve":
            lines.append(f"  server public key (agents' collector key): {sec['public_key']}")
            lines.append(f"  authorized agent keys: {len(sec['authorized'])}")
        else:
            lines.append("  security = plain: anyone who can connect may send flows, unencrypted")
        lines.append(f"  API on {self.api.url}" if self.api else "  API disabled")
        return lines

    def store_text(self) -> str:
        """Where the flows go, for the banner."""
        col = self.cfg["collector"]
        if col["engine"] == "clickhouse":
            ch = self.cfg["clickhouse"]
            where = f"clickhouse://{ch['host']}:{ch['port']}/{ch['database']}"
            return where + (f" (cluster {ch['cluster']})" if ch["cluster"] else "")
        return col["store"]

    def status_line(self) -> str:
        """One line of intake counters for stderr."""
        c = self.intake.counters()
        ld = self.loader.counters()
        return (f"capfan collect: recv {c['received']} acked {c['journaled']} stored {ld['loaded_batches']} "
                f"({ld['loaded_records']} records) dup {ld['duplicates']} rejected malformed/oversized/version "
                f"{c['rejected_malformed']}/{c['rejected_oversized']}/{c['rejected_version']} "
                f"denied {c['denied_unauthenticated']} store_errors {c['store_errors']} hosts {len(c['hosts'])}")

    def run(self, stop: threading.Event, out=None) -> None:
        """Serve until `stop` is set, a status line every [collector] status_interval seconds; then stop()."""
        out = out or sys.stderr
        interval = self.cfg["collector"]["status_interval"]
        try:
            while not stop.wait(interval or None):
                print(self.status_line(), file=out, flush=True)
        finally:
            if self.intake is not None:
                print(self.status_line(), file=out, flush=True)
            self.stop()

"""`capfan collect -c collector.toml [--check]`: the collector process (ZeroMQ intake, store, API)."""
from __future__ import annotations

import signal
import threading

import click

from capfan.errors import CapfanError

DEFAULT_CONFIG = "/etc/capfan/collector.toml"


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG,
              show_default=True, help="The collector's TOML config (example: collector/examples/collector.toml).")
@click.option("--check", is_flag=True, help="Check the config and key files, print what would run, exit.")
def collect(config_path, check):
    """Receive flow batches from agents, merge and store them, serve the query API.

    Runs until SIGTERM or Ctrl-C; a status line goes to stderr every [collector] status_interval
    seconds.
    """
    from capfan.collector import config as ccfg
    cfg = ccfg.load(config_path)
    if check:
        click.echo(check_report(cfg))
        return
    from capfan.collector.service import Collector
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    col = Collector(cfg)
    try:
        col.start()
    except CapfanError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. the store's own error types: one line, not a traceback
        raise CapfanError(f"cannot start the collector: {e}") from None
    for line in col.banner():
        click.echo(line, err=True)
    col.run(stop)


def check_report(cfg: dict) -> str:
    """What `--check` prints: the resolved settings of a valid config."""
    col, sec, api = cfg["collector"], cfg["security"], cfg["api"]
    lines = [f"config OK: collector {col['name']}",
             f"  intake      {col['listen']}  (max message {col['max_message_bytes']} bytes)",
             _store_line(cfg),
             f"  security    {sec['mode']}"]
    if sec["mode"] == "curve":
        lines += [f"  server key  {sec['server_key']}  (public {sec['public_key']})",
                  f"  authorized  {len(sec['authorized'])} agent key(s)"]
    lines.append(f"  api         {'http://' + api['listen'] if api['enabled'] else 'disabled'}")
    return "\n".join(lines)


def _store_line(cfg: dict) -> str:
    """The store line of --check: the DuckDB file or the ClickHouse server (and cluster)."""
    col = cfg["collector"]
    win = f"merge window {col['merge_window']:g} s"
    if col["engine"] == "clickhouse":
        ch = cfg["clickhouse"]
        extra = [f"cluster {ch['cluster']}"] if ch["cluster"] else []
        extra.append(f"retention {ch['retention_days']} days" if ch["retention_days"] else "kept forever")
        return (f"  store       clickhouse://{ch['host']}:{ch['port']}/{ch['database']}  ({win}; "
                f"collector id {ch['collector_id']}; {'; '.join(extra)}; journal {col['store']}.journal)")
    return f"  store       {col['store']}  ({win})"

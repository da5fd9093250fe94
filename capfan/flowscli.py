"""`capfan flows top|query|export`: clients of the collector's HTTP JSON API."""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

import click
from rich import box
from rich.console import Console
from rich.table import Table

from capfan.errors import CapfanError

DEFAULT_API = "http://127.0.0.1:8477"
TIMEOUT_S = 60.0
_COUNTS = ("bytes", "packets", "flows")


class FlowsClient:
    """Talks to one collector API base URL."""

    def __init__(self, base: str, timeout: float = TIMEOUT_S):
        self.base = base.rstrip("/")
        self.timeout = timeout

    def _open(self, path: str, params: dict):
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        try:
            return urllib.request.urlopen(url, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error") or e.reason
            except (ValueError, AttributeError, OSError):
                msg = e.reason
            raise CapfanError(f"collector API: {msg} (HTTP {e.code})") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CapfanError(f"the collector is not reachable at {self.base} ({_reason(reason)}); is `capfan "
                              f"collect` running with [api] enabled? (--api URL or $CAPFAN_API)") from None

    def get(self, path: str, **params) -> dict:
        """JSON of GET path?params; CapfanError for HTTP errors and unreachable collectors."""
        with self._open(path, params) as r:
            try:
                return json.loads(r.read())
            except ValueError:
                raise CapfanError(f"{self.base}{path} did not answer JSON: is that a capfan collector?") from None

    def download(self, path: str, out: str, **params) -> tuple[int, int | None]:
        """Save GET path?params into `out` (atomically); (bytes written, rows or None)."""
        tmp = f"{out}.part"
        with self._open(path, params) as r:
            rows = r.headers.get("X-Capfan-Rows")
            n = 0
            try:
                with open(tmp, "wb") as f:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        n += len(chunk)
                os.replace(tmp, out)
            except OSError as e:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise CapfanError(f"cannot write {out}: {e.strerror or e}") from None
        return n, int(rows) if rows and rows.isdigit() else None


def _reason(reason) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return getattr(reason, "strerror", None) or str(reason)


def api_base(api: str | None, config: str | None) -> str:
    """The API URL: --api, else [api] listen of -c CONFIG, else $CAPFAN_API, else the default."""
    if api:
        return api if "://" in api else f"http://{api}"
    if config:
        from capfan.collector import config as ccfg
        data = ccfg.C.load_file(config)
        api_table = ccfg.C.validate({"api": data.get("api", {})}, {"api": ccfg.SCHEMA["api"]})["api"]
        if not api_table["enabled"]:
            raise CapfanError(f"{config} has [api] enabled = false: the collector serves no API")
        return ccfg.api_url(api_table["listen"])
    return os.environ.get("CAPFAN_API") or DEFAULT_API


def filter_options(f):
    """--start/--end and the flow filters shared by every subcommand."""
    opts = [
        click.option("--host", default=None, help="Only flows observed by this agent host id."),
        click.option("--vlan", type=int, default=None, help="VLAN id."),
        click.option("--proto", type=int, default=None, help="IP protocol number (6 TCP, 17 UDP)."),
        click.option("--dport", type=int, default=None, help="Responder port."),
        click.option("--sport", type=int, default=None, help="Initiator port."),
        click.option("--dst", default=None, help="Responder address."),
        click.option("--src", default=None, help="Initiator address."),
        click.option("--end", default=None, help="Until: ns, ISO-8601, 'now' or relative like -5m."),
        click.option("--start", default=None, help="From: ns, ISO-8601 or relative like -15m, -2h (default: all)."),
        click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table."),
    ]
    for o in opts:
        f = o(f)
    return f


def _filters(kw: dict) -> dict:
    return {k: kw.pop(k) for k in ("start", "end", "src", "dst", "sport", "dport", "proto", "vlan", "host")}


@click.group()
@click.option("--api", default=None, metavar="URL",
              help=f"Collector API (default: [api] listen of -c CONFIG, else $CAPFAN_API, else {DEFAULT_API}).")
@click.option("-c", "--config", type=click.Path(dir_okay=False), default=None,
              help="The collector's TOML config: its [api] listen says where the API is.")
@click.pass_context
def flows(ctx, api, config):
    """Query the collector: top talkers, matching flows, export to CSV/Parquet."""
    ctx.obj = FlowsClient(api_base(api, config))


@flows.command()
@click.option("--by", type=click.Choice(_COUNTS), default="bytes", show_default=True, help="Rank by.")
@click.option("--group", default="src,dst", show_default=True,
              help="Comma-separated keys: src, dst, sport, dport, proto, vlan, host.")
@click.option("-n", "--limit", type=click.IntRange(1), default=10, show_default=True, help="Rows.")
@filter_options
@click.pass_obj
def top(client, by, group, limit, as_json, **kw):
    """Top-N flows by bytes, packets or flow count, grouped by any keys."""
    data = client.get("/api/top", by=by, group=group, limit=limit, **_filters(kw))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data["rows"]:
        click.echo("no flows match (check --start/--end and the filters)")
        return
    title = f"top {len(data['rows'])} by {data['by']}, grouped by {', '.join(data['group'])}"
    _print_table(data["rows"], data["group"] + [c for c in _COUNTS if any(c in r for r in data["rows"])], title)


@flows.command()
@click.option("-n", "--limit", type=click.IntRange(1), default=100, show_default=True, help="Most flows shown.")
@filter_options
@click.pass_obj
def query(client, limit, as_json, **kw):
    """Merged flows matching the filters (with the sensors that observed each)."""
    data = client.get("/api/flows", limit=limit, **_filters(kw))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = data["flows"]
    if not rows:
        click.echo("no flows match (check --start/--end and the filters)")
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    _print_table(rows, columns, f"{len(rows)} flow(s)" + (" (limit reached)" if len(rows) >= limit else ""))


@flows.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="File to write (.csv or .parquet).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Default: from the output file name (.parquet/.pq: parquet, else csv).")
@filter_options
@click.pass_obj
def export(client, output, fmt, as_json, **kw):
    """Write the matching flows to a CSV or Parquet file."""
    fmt = fmt or ("parquet" if output.lower().endswith((".parquet", ".pq")) else "csv")
    size, rows = client.download("/api/export", output, format=fmt, **_filters(kw))
    result = {"output": output, "format": fmt, "bytes": size, "rows": rows}
    click.echo(json.dumps(result) if as_json else
               f"wrote {output}: {'?' if rows is None else rows} flow(s), {size} bytes ({fmt})")


def _cell(name: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, int) and (name.endswith("_ns") or name in ("start", "end")) and value > 10**17:
        t = dt.datetime.fromtimestamp(value / 1e9, dt.UTC)
        return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return str(value)


def _print_table(rows: list[dict], columns: list[str], title: str) -> None:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*(_cell(c, r.get(c)) for c in columns))
    # a pipe or file gets a wide fixed layout: addresses are never cut short
    console = Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=250)
    for c in table.columns:
        c.no_wrap = True
    console.print(table)

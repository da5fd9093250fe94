"""`capfan status` and `capfan top`: show what a running agent reports in its status snapshot
(<run_dir>/agents/<name>/status.json, rewritten by the agent every second)."""
from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from capfan.capturecli import _rate as rate
from capfan.errors import CapfanError, ConfigError
from capfan.ringcli import PIPE_WIDTH, human_bytes

DEFAULT_RUN_DIR = "/run/capfan"
STATUS_VERSION = 1        # the snapshot schema this module reads
STALE_AFTER_S = 5.0       # the agent rewrites status.json every second: older means it is stuck
STATE_STYLES = {"running": "green", "active": "green", "starting": "cyan", "stopping": "yellow",
                "backoff": "yellow", "failed": "bold red", "done": "dim", "stopped": "dim"}


# ------------------------------------------------------------------ finding the agent

def agent_options(f):
    """The options that say which agent to show: -c/--config, --run-dir, --name."""
    f = click.option("--name", default=None, help="Agent name (default: from -c CONFIG, else the only agent "
                                                   "under the run directory).")(f)
    f = click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                     help=f"The agent's run directory (default: [agent] run_dir of -c CONFIG, else "
                          f"$CAPFAN_RUN_DIR, else {DEFAULT_RUN_DIR}).")(f)
    f = click.option("-c", "--config", type=click.Path(dir_okay=False), default=None,
                     help="The agent's TOML config: its [agent] run_dir and name say where to look.")(f)
    return f


def locate(config: str | None, run_dir: str | None, name: str | None) -> tuple[str, str]:
    """(agent name, path of its status.json) from the options, the config and the run directory."""
    cfg_run_dir = cfg_name = None
    if config:
        cfg_run_dir, cfg_name = read_agent_config(config)
    run_dir = run_dir or cfg_run_dir or os.environ.get("CAPFAN_RUN_DIR") or DEFAULT_RUN_DIR
    name = name or cfg_name or only_agent(run_dir)
    return name, os.path.join(run_dir, "agents", name, "status.json")


def read_agent_config(path: str) -> tuple[str | None, str]:
    """(run_dir or None, name) from the [agent] table of a TOML config; the name defaults to the host name."""
    try:
        import tomllib  # here, not at the top: Python 3.10 (no tomllib) can still use --run-dir/--name
    except ModuleNotFoundError:
        raise CapfanError("reading -c CONFIG needs Python 3.11 or later; pass --run-dir and --name instead") from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise CapfanError(f"cannot read config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise CapfanError(f"config {path} is not valid TOML: {e}") from None
    agent = data.get("agent", {})
    if not isinstance(agent, dict):
        raise ConfigError("agent", f"must be a table ([agent]) in {path}")
    for key in ("run_dir", "name"):
        if key in agent and not (isinstance(agent[key], str) and agent[key]):
            raise ConfigError(f"agent.{key}", f"must be a non-empty string in {path}")
    return agent.get("run_dir"), agent.get("name") or socket.gethostname()


def only_agent(run_dir: str) -> str:
    """The name of the one agent with a directory under RUN_DIR/agents; CapfanError for none or several."""
    base = os.path.join(run_dir, "agents")
    try:
        names = sorted(e.name for e in os.scandir(base) if e.is_dir())
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise CapfanError(f"cannot list agents in {base}: {e.strerror or e}") from None
    if not names:
        raise CapfanError(f"no capfan agent status under {run_dir} (is `capfan agent` running? "
                          f"its run_dir may differ: pass --run-dir or -c CONFIG)")
    if len(names) > 1:
        raise CapfanError(f"several capfan agents under {run_dir}: {', '.join(names)}; pick one with --name NAME")
    return names[0]


def read_status(path: str, name: str) -> tuple[str, dict]:
    """(file text, snapshot) of a status.json; CapfanError if it is missing or not a snapshot."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CapfanError(f"no status of agent {name} at {path} (is `capfan agent` running? "
                          f"its run_dir may differ: pass --run-dir or -c CONFIG)") from None
    except OSError as e:
        raise CapfanError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        snap = json.loads(text)
    except ValueError as e:
        raise CapfanError(f"{path} is not a status snapshot (invalid JSON: {e})") from None
    if not isinstance(snap, dict):
        raise CapfanError(f"{path} is not a status snapshot (a JSON object was expected)")
    return text, snap


def pid_alive(pid) -> bool:
    """False only if process PID certainly does not exist."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True  # unknown: do not call a running agent dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # PermissionError: it exists under another user
    return True


def stopped_line(snap: dict, name: str, now: float) -> str | None:
    """The line saying the agent finished or is gone, or None while it runs."""
    agent = _dict(snap.get("agent"))
    name = agent.get("name") or name
    age = _ago(agent.get("time"), now)
    if agent.get("state") == "done":
        return f"agent {name} has finished (status from {age} ago)"
    pid = agent.get("pid")
    if not pid_alive(pid):
        return f"agent {name} is not running (pid {pid} gone; status from {age} ago)"
    return None


# ------------------------------------------------------------------ formatting

def duration(seconds) -> str:
    """12.3 -> '12.3 s', 754 -> '12 min 34 s', 7500 -> '2 h 5 min', 200000 -> '2 d 7 h'."""
    if not _is_number(seconds):
        return "-"
    s = max(float(seconds), 0.0)
    if s < 60:
        return f"{s:.1f} s"
    s = int(s)
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ago(when, now: float) -> str:
    return duration(now - when) if _is_number(when) else "an unknown time"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _records(v) -> list[dict]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _cell(v) -> str:
    """A table cell: '-' for null."""
    return "-" if v is None else str(v)


def _rate_cell(v, unit: str) -> str:
    return rate(float(v), unit) if _is_number(v) else "-"


def _state(state) -> Text:
    return Text(_cell(state), style=STATE_STYLES.get(state, ""))


def _console() -> Console:
    """A rich console on the current sys.stdout (CliRunner swaps it); wide lines when piped."""
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    # no markup: names, warnings and error texts may contain [brackets]
    return Console(highlight=False, markup=False, width=width)


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


# ------------------------------------------------------------------ the view

QUEUE_COLUMNS = ("ring", "source", "rx pps", "rx bps", "rx packets", "kernel drops", "ring drops",
                 "NIC drops", "ring fill")
CONSUMER_COLUMNS = ("ring", "consumer", "analyzer", "group", "policy", "state", "delivered", "dropped",
                    "filtered", "demotions", "lag", "rate")
WORKER_COLUMNS = ("worker", "state", "pid", "cpu", "CPU %", "RSS", "restarts", "last exit")


def render_status(snap: dict, name: str, now: float | None = None) -> Group:
    """Rich renderable of a snapshot: stopped notice, header, queues, consumers, workers, warnings."""
    now = time.time() if now is None else now
    parts = []
    stopped = stopped_line(snap, name, now)
    if stopped:
        parts.append(Text(stopped, style="bold red"))
    parts.append(_header(snap, name, now, stopped is None))
    parts += [_queue_table(snap), _consumer_table(snap), _worker_table(snap)]
    parts += [Text(line) for line in export_lines(snap)]
    parts += [Text(f"warning: {w}", style="yellow") for w in (snap.get("warnings") or []) if isinstance(w, str)]
    return Group(*parts)


def export_lines(snap: dict) -> list[str]:
    """The exporter's delivery state, one line per collector after a summary (none without one)."""
    w = next((w for w in snap.get("workers") or [] if w.get("kind") == "exporter"), None)
    st = (w or {}).get("stats") or {}
    if not st:
        return []
    route = " (flows routed by flow hash)" if st.get("route") == "flow-hash" else ""
    out = [f"export{route}: sent {st.get('sent', 0)} batches, acked {st.get('acked', 0)}, pending {st.get('pending', 0)}, "
           f"resent {st.get('resent', 0)}, rejected {st.get('rejected', 0)}; spool {human_bytes(st.get('spool_bytes', 0))}, "
           f"dropped {st.get('spool_dropped_batches', 0)} batches ({st.get('spool_dropped_records', 0)} records)"]
    for c in st.get("collectors") or []:
        state = "connected" if c.get("connected") else "DISCONNECTED"
        err = f", last error: {c['last_error']}" if c.get("last_error") else ""
        out.append(f"  {c.get('endpoint')}: {state}, in flight {c.get('inflight', 0)}, sent {c.get('sent', 0)}, "
                   f"acked {c.get('acked', 0)} ({c.get('records_acked', 0)} records){err}")
    return out


def _header(snap: dict, name: str, now: float, running: bool) -> Text:
    """agent NAME  pid N  up T  state S  metrics ADDR  updated T ago (plus notes)."""
    agent = _dict(snap.get("agent"))
    metrics = agent.get("metrics")
    text = Text(f"agent {agent.get('name') or name}  pid {_cell(agent.get('pid'))}  "
                f"up {duration(agent.get('uptime'))}  state ")
    text.append_text(_state(agent.get("state")))
    text.append(f"  metrics {f'http://{metrics}/metrics' if metrics else 'off'}  "
                f"updated {_ago(agent.get('time'), now)} ago")
    if running and _is_number(agent.get("time")) and now - agent["time"] > STALE_AFTER_S:
        text.append(f"\nthe status is {duration(now - agent['time'])} old although the agent's process "
                    f"exists: it may be stuck", style="yellow")
    version = snap.get("version")
    if version != STATUS_VERSION:
        text.append(f"\nstatus version {version}, this capfan reads version {STATUS_VERSION}: "
                    f"some fields may be missing", style="yellow")
    return text


def _queue_table(snap: dict):
    queues = _records(snap.get("queues"))
    if not queues:
        return Text("no capture queues")
    interfaces = _dict(snap.get("interfaces"))
    table = _table("capture queues", QUEUE_COLUMNS, left=("ring", "source"))
    for q in queues:
        iface = q.get("interface")
        source = f"{q.get('source') or '?'}/{iface}" if iface else _cell(q.get("source"))
        fill = q.get("ring_fill")
        table.add_row(_cell(q.get("ring")), source,
                      _rate_cell(q.get("rx_pps"), "pps"), _rate_cell(q.get("rx_bps"), "b/s"),
                      _cell(q.get("rx_packets")), _cell(q.get("kernel_drops")), _cell(q.get("ring_drops")),
                      _cell(_dict(interfaces.get(iface)).get("nic_drops")),
                      f"{100.0 * fill:.1f}%" if _is_number(fill) else "-")
    return table


def _consumer_table(snap: dict):
    rows = [(q, c) for q in _records(snap.get("queues")) for c in _records(q.get("consumers"))]
    if not rows:
        return Text("no consumers")
    table = _table("consumers", CONSUMER_COLUMNS, left=("ring", "consumer", "analyzer", "group", "policy", "state"))
    for q, c in rows:
        group = f"{c['group']} {c.get('member')}/{c.get('group_size')}" if c.get("group") else "-"
        table.add_row(_cell(q.get("ring")), _cell(c.get("consumer")), _cell(c.get("analyzer")), group,
                      _cell(c.get("policy")), _state(c.get("state")),
                      *(_cell(c.get(k)) for k in ("delivered", "dropped", "filtered", "demotions", "lag")),
                      _rate_cell(c.get("rate_pps"), "pps"))
    return table


def _worker_table(snap: dict):
    workers = _records(snap.get("workers"))
    if not workers:
        return Text("no workers")
    table = _table("workers", WORKER_COLUMNS, left=("worker", "state", "last exit"))
    for w in workers:
        cpu_pct, rss = w.get("cpu_percent"), w.get("rss_bytes")
        table.add_row(_cell(w.get("id")), _state(w.get("state")), _cell(w.get("pid")), _cell(w.get("cpu")),
                      f"{cpu_pct:.1f}" if _is_number(cpu_pct) else "-",
                      human_bytes(int(rss)) if _is_number(rss) else "-",
                      _cell(w.get("restarts")), _cell(w.get("last_exit")))
    return table


# ------------------------------------------------------------------ commands

@click.command()
@agent_options
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot exactly as the agent wrote it.")
def status(config, run_dir, name, as_json):
    """Show the agent's capture queues, consumers, workers and warnings.

    Exits 1 when the agent is no longer running (the last status is still shown)."""
    name, path = locate(config, run_dir, name)
    text, snap = read_status(path, name)
    if as_json:
        click.echo(text.rstrip("\n"))
        stopped = stopped_line(snap, name, time.time())
        if stopped:
            click.echo(stopped, err=True)  # stdout stays pure JSON
    else:
        now = time.time()
        _console().print(render_status(snap, name, now))
        stopped = stopped_line(snap, name, now)
    if stopped:
        sys.exit(1)


@click.command()
@agent_options
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="SECONDS", help="Re-read the status this often.")
@click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N refreshes (for scripts).")
def top(config, run_dir, name, interval, count):
    """Show the agent's status like `capfan status`, refreshed in place until Ctrl-C.

    Keeps going when the agent stops or its status file goes away, and shows that."""
    name, path = locate(config, run_dir, name)
    console = _console()
    view = functools.partial(_top_view, path, name, interval)
    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, screen=False) as live:
                _refresh(lambda: live.update(view(), refresh=True), interval, count)
        else:
            # a pipe cannot be redrawn: print one view after the other, like `watch` into a file
            _refresh(lambda: console.print(view(), Text()), interval, count)
    except KeyboardInterrupt:
        pass


def _refresh(show, interval: float, count: int | None) -> None:
    """Call show() every `interval` seconds, `count` times (None: until Ctrl-C)."""
    shown = 0
    while True:
        show()
        shown += 1
        if count is not None and shown >= count:
            return
        time.sleep(interval)


def _top_view(path: str, name: str, interval: float):
    """The status view, or why there is none right now (top keeps trying)."""
    try:
        _text, snap = read_status(path, name)
    except CapfanError as e:
        return Group(Text(str(e), style="bold red"),
                     Text(f"retrying every {duration(interval)}; Ctrl-C quits"))
    return render_status(snap, name)

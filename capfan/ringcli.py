"""`capfan ring ...`: create, list, inspect, dump and remove shared-memory rings."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from capfan import errors
from capfan import ring as ringlib
from capfan.summary import summarize

LINKTYPE_NAMES = {v: k for k, v in ringlib.LINKTYPES.items()}
FULL_NAMES = {v: k for k, v in ringlib.FULL_POLICIES.items()}
DUMP_DEFAULT_COUNT = 20   # packets `dump` shows without --follow when -c is not given
FOLLOW_POLL_S = 0.5       # how long a --follow read waits before checking for Ctrl-C again
EVENTS_SHOWN = 10
PIPE_WIDTH = 200          # console width when stdout is not a terminal


class RingGroup(click.Group):
    """Click group printing capfan errors as one line without a traceback (also when the group
    is used on its own, e.g. in tests, not only under the `capfan` main group)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except errors.CapfanError as e:
            click.echo(f"capfan: error: {e}", err=True)
            ctx.exit(2)


class SizeType(click.ParamType):
    """A byte or item count with an optional K/M/G suffix (binary multiples): 4096, 64K, 64M."""

    name = "size"

    def convert(self, value, param, ctx):
        try:
            return ringlib.parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class LinktypeType(click.ParamType):
    """A pcap link type by name (ethernet, raw, linux_sll...) or by number."""

    name = "linktype"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text in ringlib.LINKTYPES:
            return ringlib.LINKTYPES[text]
        if text.isdigit() and int(text) in LINKTYPE_NAMES:
            return int(text)
        self.fail(f"unknown link type {value!r}; one of {', '.join(ringlib.LINKTYPES)} "
                  f"(or their numbers)", param, ctx)


class ModeType(click.ParamType):
    """File permission bits in octal, e.g. 0600 or 660."""

    name = "mode"

    def convert(self, value, param, ctx):
        try:
            mode = int(str(value), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode like 0600", param, ctx)
        if not 0 <= mode <= 0o777:
            self.fail(f"mode {value!r} is out of range (0000-0777)", param, ctx)
        return mode


@click.group(cls=RingGroup)
def ring():
    """Shared-memory packet rings: create, list, inspect, dump and remove them.

    Rings are files named capfan.NAME in $CAPFAN_RING_DIR (default /dev/shm)."""


# ------------------------------------------------------------------ formatting helpers

def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{n} B"
    value, units = n / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


def linktype_name(lt: int) -> str:
    """'ethernet' for 1, the number as text for link types capfan has no name for."""
    return LINKTYPE_NAMES.get(lt, str(lt))


def _console() -> Console:
    """A rich console on the current sys.stdout (built per command: CliRunner swaps stdout)."""
    # piped output (grep, scripts) gets wide lines instead of rich's 80-column default
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    # no markup: names, paths and error texts may contain [brackets]
    return Console(highlight=False, markup=False, width=width)


def _yes(flag) -> str:
    return "yes" if flag else "no"


# ------------------------------------------------------------------ create

@ring.command()
@click.argument("name")
@click.option("--ndesc", type=SizeType(), default="65536", show_default=True,
              help="Descriptors (packets in flight); a power of two, e.g. 65536 or 64K.")
@click.option("--arena", type=SizeType(), default="64M", show_default=True,
              help="Packet arena size, e.g. 64M or 1G.")
@click.option("--max-consumers", type=click.IntRange(1), default=256, show_default=True,
              help="Consumer table slots (at least 256).")
@click.option("--linktype", type=LinktypeType(), default="ethernet", show_default=True,
              help="pcap link type of the packets: " + ", ".join(ringlib.LINKTYPES) + ".")
@click.option("--snaplen", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Longest packet stored, longer ones are truncated; 0 = min(65535, arena/4).")
@click.option("--full", "full_policy", type=click.Choice(list(ringlib.FULL_POLICIES)), default="block",
              show_default=True, help="When the ring is full: hold the producer (block) or drop new packets (drop).")
@click.option("--mode", type=ModeType(), default="0600", show_default=True,
              help="Permissions of the ring file (it holds raw traffic: keep it private).")
@click.option("--group", default=None, help="Group owning the ring file, so its members can attach.")
def create(name, ndesc, arena, max_consumers, linktype, snaplen, full_policy, mode, group):
    """Create ring NAME and print its path and geometry."""
    path = ringlib.create(name, ndesc=ndesc, arena_bytes=arena, max_consumers=max_consumers,
                          linktype=linktype, snaplen=snaplen, full_policy=full_policy,
                          mode=mode, group=group)
    with ringlib.Ring(name) as r:
        st = r.stats()
    click.echo(f"created ring {name} at {path}")
    click.echo(f"  {describe_geometry(st)}, mode {mode:04o}")


def describe_geometry(st: dict) -> str:
    """One line of ring geometry from Ring.stats()."""
    return (f"ndesc {st['ndesc']}, arena {human_bytes(st['arena_bytes'])}, "
            f"{st['max_consumers']} consumer slots, linktype {linktype_name(st['linktype'])}, "
            f"snaplen {st['snaplen']}, when full: {FULL_NAMES.get(st['full_policy'], st['full_policy'])}, "
            f"file {human_bytes(st['file_bytes'])}" + (", hugepages" if st["hugepages"] else ""))


# ------------------------------------------------------------------ ls

@ring.command(name="ls")
def ls():
    """List the rings in the ring directory with producer, consumers and counters."""
    paths = ringlib.list_rings()
    console = _console()
    if not paths:
        console.print(f"no rings in {ringlib.ring_dir()} (create one with: capfan ring create NAME)")
        return
    table = Table(title=f"rings in {ringlib.ring_dir()}", title_justify="left")
    for col in ("name", "size", "ndesc", "producer", "consumers", "head", "dropped_full"):
        table.add_column(col, justify="left" if col in ("name", "producer") else "right",
                         no_wrap=col == "name", overflow="fold")
    for path in paths:
        table.add_row(*_ls_row(path))
    console.print(table)


def _ls_row(path: str) -> list[str]:
    """Cells of one `ls` row; a file that cannot be opened shows why instead of failing the list."""
    name = ringlib.ring_name(path)
    try:
        with ringlib.Ring(path) as r:
            st = r.stats()
    except errors.CapfanError as e:
        return [name, human_bytes(_file_size(path)), "", f"[unreadable: {e}]", "", "", ""]
    producer = f"{st['producer_pid']} ({'alive' if st['producer_alive'] else 'dead'})" if st["producer_pid"] else "none"
    return [name, human_bytes(st["file_bytes"]), str(st["ndesc"]), producer, str(st["nconsumers"]),
            str(st["head"]), str(st["dropped_full"])]


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# ------------------------------------------------------------------ stat

@ring.command()
@click.argument("name")
@click.option("--watch", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (with --watch: one per refresh, one per line).")
def stat(name, watch, as_json):
    """Show ring NAME: head/tail/window, arena use, producer, per-consumer lag and counters, events."""
    with ringlib.Ring(name) as r:
        if watch is None:
            _print_stat(r, as_json)
        elif as_json:
            _watch_json(r, watch)
        else:
            _watch_live(r, watch)


def ring_snapshot(r: ringlib.Ring, nevents: int = EVENTS_SHOWN) -> dict:
    """Everything `stat` shows, as plain data (the --json output)."""
    st = r.stats()
    ring_info = dict(st)
    ring_info.update(
        window=st["head"] - st["tail"],
        arena_used_pct=round(100.0 * st["arena_used"] / st["arena_bytes"], 2) if st["arena_bytes"] else 0.0,
        linktype_name=linktype_name(st["linktype"]),
        full_policy_name=FULL_NAMES.get(st["full_policy"], str(st["full_policy"])),
        producer_alive=bool(st["producer_alive"]),
    )
    consumers = []
    for c in r.consumers():
        c = dict(c)
        c["lag"] = max(st["head"] - c["cursor"], 0)
        consumers.append(c)
    by_slot = {c["slot"]: c["name"] for c in consumers}
    events = [{"ts_ns": e.ts_ns, "kind": e.kind, "slot": e.slot, "arg": e.arg, "name": e.name,
               "consumer": _event_consumer(e, by_slot)} for e in r.events(nevents)]
    return {"name": r.name, "path": r.path, "ring": ring_info, "consumers": consumers, "events": events}


def _event_consumer(e: ringlib.Event, by_slot: dict) -> str:
    """Full consumer name of an event: the log keeps only 8 bytes, the slot table has it all."""
    full = by_slot.get(e.slot, "")
    return full if e.name and full.startswith(e.name) else e.name


def _print_stat(r: ringlib.Ring, as_json: bool) -> None:
    snap = ring_snapshot(r)
    if as_json:
        click.echo(json.dumps(snap))
    else:
        _console().print(render_snapshot(snap))


def _watch_json(r: ringlib.Ring, interval: float) -> None:
    """One JSON snapshot per line every `interval` seconds until Ctrl-C."""
    try:
        while True:
            click.echo(json.dumps(ring_snapshot(r)))
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _watch_live(r: ringlib.Ring, interval: float) -> None:
    """Redraw the stat view in place every `interval` seconds until Ctrl-C."""
    console = _console()
    try:
        with Live(render_snapshot(ring_snapshot(r)), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render_snapshot(ring_snapshot(r)), refresh=True)
    except KeyboardInterrupt:
        pass


def render_snapshot(snap: dict) -> Group:
    """Rich renderable of a ring_snapshot(): summary lines, consumer table, recent events."""
    return Group(_summary_text(snap), _consumer_table(snap), _events_table(snap))


def _summary_text(snap: dict) -> Text:
    """Ring-level lines: geometry, head/tail/window, arena use, producer, ring counters."""
    ri = snap["ring"]
    producer = "none"
    if ri["producer_pid"]:
        producer = (f"pid {ri['producer_pid']} alive {_yes(ri['producer_alive'])} "
                    f"generation {ri['generation']}")
    geometry = describe_geometry(ri).split(", ")
    lines = [
        f"ring {snap['name']}  ({snap['path']})",
        "  " + ", ".join(geometry[:3]),
        "  " + ", ".join(geometry[3:]),
        f"  head {ri['head']} (published)  tail {ri['tail']}  window {ri['window']}",
        f"  arena used {ri['arena_used_pct']:.1f}% ({human_bytes(ri['arena_used'])})  bytes {ri['bytes']}",
        f"  producer {producer}",
        f"  dropped_full {ri['dropped_full']}  blocked {ri['blocked_ns'] / 1e6:.1f} ms  demotions {ri['demotions']}",
    ]
    return Text("\n".join(lines))


CONSUMER_COLUMNS = ("name", "state", "alive", "policy", "group", "lag", "delivered", "dropped",
                    "filtered", "torn", "demotions", "resumes", "pid")


def _consumer_table(snap: dict):
    """One row per used consumer slot (CONSUMER_COLUMNS)."""
    if not snap["consumers"]:
        return Text("  no consumers attached")
    table = Table(title="consumers", title_justify="left", box=box.SIMPLE_HEAD)
    for col in CONSUMER_COLUMNS:
        table.add_column(col, justify="left" if col in ("name", "state", "policy", "group") else "right")
    for c in snap["consumers"]:
        group = f"{c['group']} {c['group_member']}/{c['group_size']}" if c["group"] else "-"
        cells = dict(c, alive=_yes(c["alive"]), group=group)
        table.add_row(*(str(cells[col]) for col in CONSUMER_COLUMNS))
    return table


def _events_table(snap: dict):
    """The ring's last events, oldest first."""
    if not snap["events"]:
        return Text("  no events")
    table = Table(title="last events", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("time (UTC)", "event", "consumer", "slot", "arg"):
        table.add_column(col)
    for e in snap["events"]:
        slot = "-" if e["slot"] == 0xFFFFFFFF else str(e["slot"])  # producer events have no slot
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts_ns"] // 10**9))
        table.add_row(when, e["kind"], e["consumer"] or "-", slot, str(e["arg"]))
    return table


# ------------------------------------------------------------------ dump

@ring.command()
@click.argument("name")
@click.option("-c", "--count", type=click.IntRange(min=1), default=None,
              help=f"Packets to show (default: the last {DUMP_DEFAULT_COUNT}; with --follow: no limit).")
@click.option("--follow", "-f", is_flag=True,
              help="Attach as a lossy consumer dump-PID and print packets as they arrive until Ctrl-C.")
@click.option("--hex", "hexdump", is_flag=True, help="Also print each packet in hex, like tcpdump -xx.")
def dump(name, count, follow, hexdump):
    """Print one tcpdump-style line per packet of ring NAME (the most recent ones, or live)."""
    try:
        if follow:
            _follow(name, count, hexdump)
        else:
            _recent(name, count or DUMP_DEFAULT_COUNT, hexdump)
    except BrokenPipeError:
        # `capfan ring dump X | head`: the reader left; stop quietly (the consumer is detached)
        _silence_stdout()


def _recent(name: str, count: int, hexdump: bool) -> None:
    """Print the last `count` intact packets without taking a consumer slot."""
    with ringlib.Ring(name) as r:
        pkts = r.recent_packets(count)
        linktypes = PortLinktypes(r)
        for _seq, ts_ns, wirelen, port, data in pkts:
            _print_packet(data, linktypes[port], ts_ns, wirelen, hexdump)
    if not pkts:
        click.echo(f"ring {name} holds no packets", err=True)


class PortLinktypes(dict):
    """port -> pcap link type of a ring, looked up once per port (ports may differ: pcapng
    interfaces with different link types replayed into one ring)."""

    def __init__(self, r: ringlib.Ring):
        super().__init__()
        self.ring = r

    def __missing__(self, port: int) -> int:
        self[port] = lt = self.ring.port_linktype(port)
        return lt


def _follow(name: str, count: int | None, hexdump: bool) -> None:
    """Attach a lossy consumer, print packets as they come, always detach on the way out."""
    consumer = ringlib.Consumer(name, f"dump-{os.getpid()}", policy="lossy")
    shown, old_term = 0, None
    try:
        old_term = _sigterm_exits()
        linktypes = PortLinktypes(consumer.ring)
        while count is None or shown < count:
            # never take more than is left to show, so 'delivered' counts what was printed
            want = consumer.batch_max if count is None else min(consumer.batch_max, count - shown)
            batch = consumer.next(timeout=FOLLOW_POLL_S, max_packets=want)
            if batch is None:
                continue
            for ts_ns, wirelen, port, data in intact_packets(batch):
                _print_packet(data, linktypes[port], ts_ns, wirelen, hexdump)
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        _restore_sigterm(old_term)
        st = consumer.stats()
        consumer.close()
        click.echo(f"{shown} packets shown, {st['dropped']} dropped (lapped or overwritten)", err=True)


def intact_packets(batch: ringlib.Batch):
    """Yield (ts_ns, wirelen, port, bytes) of a lossy batch, leaving out packets overwritten
    while they were copied."""
    desc = batch.desc
    wirelens = batch.wirelens().tolist()  # also lengths above 64 KiB (kept after the bytes)
    ts, ports = desc["ts_ns"].tolist(), desc["port"].tolist()
    for i in range(len(batch)):
        data = bytes(batch.packet(i))
        if batch.torn() > i:  # seqlock: the producer reused this slot meanwhile; the ring counts it
            continue
        yield ts[i], wirelens[i], ports[i], data


def _print_packet(data: bytes, linktype: int, ts_ns: int, wirelen: int, hexdump: bool) -> None:
    """The summary line of one packet, plus its hex dump with --hex."""
    click.echo(summarize(data, linktype, ts_ns, wirelen))
    if hexdump:
        click.echo(hex_lines(data))


def hex_lines(data: bytes) -> str:
    """tcpdump -xx style hex: `\\t0x0000:  4500 0054 ...`, 16 bytes a line."""
    out = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16].hex()
        words = " ".join(chunk[i:i + 4] for i in range(0, len(chunk), 4))
        out.append(f"\t0x{off:04x}:  {words}")
    return "\n".join(out)


def _sigterm_exits():
    """Make SIGTERM unwind like Ctrl-C (so `finally` detaches); returns the previous handler."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _restore_sigterm(old) -> None:
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def _silence_stdout() -> None:
    # point stdout at /dev/null so the interpreter's final flush does not complain again
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# ------------------------------------------------------------------ rm

@ring.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME [NAME...]")
@click.option("--force", is_flag=True,
              help="Remove even with a live producer or live consumers (they keep their mapping until they exit).")
def rm(names, force):
    """Remove rings; refuses while a live producer or consumer is attached unless --force."""
    # check every ring before removing any, so a refusal leaves everything as it was
    users = {name: _check_removable(name, force) for name in names}
    for name in names:
        ringlib.remove(name)
        note = f" ({users[name]} keep their mapping until they exit)" if users[name] else ""
        click.echo(f"removed ring {name}{note}")


def _check_removable(name: str, force: bool) -> str:
    """Raise unless ring `name` may be removed; returns who still uses it (for --force)."""
    path = ringlib.ring_path(name)
    if not os.path.exists(path):
        raise errors.RingNotFound(f"no ring {name!r} at {path}")
    try:
        with ringlib.Ring(name) as r:
            users = live_users(r)
    except errors.RingFormatError:
        if force:
            return ""
        raise
    if users and not force:
        raise errors.RingBusy(f"ring {name!r} is in use by {users}; stop them first or use --force")
    return users


def live_users(r: ringlib.Ring) -> str:
    """'producer pid 12 and 2 consumers (a, b)' for the live processes attached to a ring, or ''."""
    st = r.stats()
    parts = []
    if st["producer_pid"] and st["producer_alive"]:
        parts.append(f"producer pid {st['producer_pid']}")
    live = [c["name"] for c in r.consumers() if c["state"] == "active" and c["alive"]]
    if live:
        parts.append(f"{len(live)} consumer{'s' if len(live) > 1 else ''} ({', '.join(live)})")
    return " and ".join(parts)

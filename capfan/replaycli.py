"""`capfan replay FILE --ring NAME`: replay a pcap/pcapng file into a shared-memory ring.

Registered in the CLI by capfan/cli.py (`main.add_command(replay)`).
"""
from __future__ import annotations

import json
import os
import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from capfan import errors
from capfan import ring as ringlib
from capfan.ringcli import SizeType, human_bytes
from capfan.sources.pcap import PcapSource, parse_speed

RUN_SLICE_S = 0.1   # longest stretch spent in C before the progress bar and Ctrl-C are looked at
PIPE_WIDTH = 200


class SpeedType(click.ParamType):
    """Replay speed: max, 1x, 10x, 0.5x or a plain factor."""

    name = "speed"

    def convert(self, value, param, ctx):
        try:
            return parse_speed(value)
        except errors.SourceError as e:
            self.fail(str(e), param, ctx)


def _rate(value: float, unit: str) -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def ensure_ring(name: str, create: bool, linktype: int, ndesc: int, arena: int, snaplen: int,
                full_policy: str) -> bool:
    """Create the ring if it is missing (and allowed); True if it was created."""
    return ringlib.ensure(name, create, ndesc=ndesc, arena_bytes=arena, linktype=linktype,
                          snaplen=snaplen, full_policy=full_policy)


def summary(src: PcapSource, ring: str, seconds: float, error: str | None, interrupted: bool) -> dict:
    """Final numbers of a replay, as data (the --json output)."""
    st = src.stats()
    out = {"file": src.path, "ring": ring, "speed": "max" if src.speed == 0 else f"{src.speed:g}x",
           "loops": src.loops, "loops_done": st["loops_done"], "seconds": round(seconds, 6)}
    for key in ("packets", "bytes", "published", "ring_drops", "truncated", "malformed", "file_bytes", "eof"):
        out[key] = st[key]
    out["pps"] = round(st["packets"] / seconds, 1) if seconds > 0 else 0.0
    out["bps"] = round(8 * st["bytes"] / seconds, 1) if seconds > 0 else 0.0
    out["complete"] = bool(st["eof"]) and error is None and not interrupted
    out["interrupted"] = interrupted
    out["error"] = error
    return out


def print_summary(s: dict) -> None:
    """Human summary on stdout."""
    click.echo(f"replayed {s['packets']} packets ({human_bytes(s['bytes'])} on the wire) from {s['file']} "
               f"into ring {s['ring']} in {s['seconds']:.3f} s: {_rate(s['pps'], 'pps')}, "
               f"{_rate(s['bps'], 'b/s')} (speed {s['speed']}, {s['loops_done']} of {s['loops']} passes)")
    click.echo(f"  published {s['published']}, ring drops {s['ring_drops']}, truncated {s['truncated']}, "
               f"malformed {s['malformed']}")


def _linktype_note(ring_name: str, src: PcapSource, port_base: int) -> None:
    """Warn when an existing ring's default link type is not the file's: per-port link types
    are set for the file's interfaces, but tools reading only the ring's default misdecode."""
    with ringlib.Ring(ring_name) as r:
        ring_lt = r.linktype
    if ring_lt != src.linktype():
        click.echo(f"note: ring {ring_name} was created with link type {ring_lt} but {src.path} has "
                   f"{src.linktype()}; its packets carry port {port_base}+ whose per-port link type is set "
                   f"accordingly", err=True)


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TextColumn("{task.fields[packets]} pkts  {task.fields[mpps]:.3f} Mpps"), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=False)


def replay_loop(src: PcapSource, producer, on_tick) -> str | None:
    """Run the source to its end; returns the corrupt-file message if the file is corrupt."""
    while True:
        try:
            n = src.run(producer, duration=RUN_SLICE_S)
        except errors.CorruptCapture as e:
            on_tick()
            return str(e)
        on_tick()
        if n < 0:
            return None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--ring", "ring_name", required=True, help="Ring to publish into (e.g. replay.q0).")
@click.option("--speed", type=SpeedType(), default="max", show_default=True,
              help="max = as fast as possible, 1x = as recorded, 10x = ten times faster (any factor, e.g. 0.5x).")
@click.option("--loop", "loops", type=click.IntRange(1, 2**32 - 1), default=1, show_default=True,
              help="Passes over the file; timestamps keep increasing from one pass to the next.")
@click.option("--create/--no-create", default=True, show_default=True,
              help="Create the ring (with the file's link type) if it does not exist.")
@click.option("--ndesc", type=SizeType(), default="65536", show_default=True,
              help="Descriptors of a ring created here (power of two, e.g. 64K).")
@click.option("--arena", type=SizeType(), default="64M", show_default=True,
              help="Packet arena of a ring created here, e.g. 64M.")
@click.option("--snaplen", type=click.IntRange(1, 65535), default=65535, show_default=True,
              help="Longest packet a ring created here stores; longer ones are truncated (counted).")
@click.option("--full", "full_policy", type=click.Choice(list(ringlib.FULL_POLICIES)), default="block",
              show_default=True, help="A ring created here, when full: wait for reliable consumers or drop (counted).")
@click.option("--port-base", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="pcapng interface i is published as descriptor port PORT_BASE + i.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stdout is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def replay(ctx, file, ring_name, speed, loops, create, ndesc, arena, snaplen, full_policy, port_base,
           progress, as_json):
    """Replay capture FILE (pcap or pcapng) into ring NAME, then print a summary.

    Interface i of a pcapng file is published as port PORT_BASE+i with its own link type.
    A corrupt or truncated file is replayed up to the bad record; the error (naming the byte
    offset) is printed after the summary and the exit status is 2.

    \b
    Examples:
      capfan replay trace.pcapng --ring test.q0                 # as fast as possible
      capfan replay trace.pcap --ring test.q0 --speed 1x        # as recorded
      capfan replay trace.pcap --ring test.q0 --speed 10x --loop 5
    """
    try:
        _replay(file, ring_name, speed, loops, create, ndesc, arena, snaplen, full_policy, port_base,
                progress, as_json)
    except errors.CapfanError as e:
        click.echo(f"capfan: error: {e}", err=True)
        ctx.exit(2)


def _replay(file, ring_name, speed, loops, create, ndesc, arena, snaplen, full_policy, port_base,
            progress, as_json):
    src = PcapSource(file, speed=speed, loops=loops, port_base=port_base)
    with src:
        created = ensure_ring(ring_name, create, src.linktype(), ndesc, arena, snaplen, full_policy)
        if created and not as_json:
            click.echo(f"created ring {ring_name} ({ringlib.ring_path(ring_name)}), link type {src.linktype()}")
        elif not created:
            _linktype_note(ring_name, src, port_base)
        console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
        show = console.is_terminal if progress is None else progress
        with ringlib.Producer(ring_name) as producer:
            src.prepare(producer)
            error, interrupted = None, False
            t0 = time.monotonic()
            with _progress(console, show and not as_json) as bar:
                task = bar.add_task(os.path.basename(file), total=max(src.total_bytes, 1), packets=0, mpps=0.0)

                def tick():
                    st = src.stats()
                    dt = time.monotonic() - t0
                    bar.update(task, completed=src.bytes_done, packets=st["packets"],
                               mpps=st["packets"] / dt / 1e6 if dt > 0 else 0.0)

                try:
                    error = replay_loop(src, producer, tick)
                except KeyboardInterrupt:
                    interrupted = True
            seconds = time.monotonic() - t0
        s = summary(src, ring_name, seconds, error, interrupted)
    if as_json:
        click.echo(json.dumps(s))
    else:
        print_summary(s)
        if interrupted:
            click.echo("interrupted: the replay stopped before the end of the file", err=True)
    if error:
        click.echo(f"capfan: error: {error}", err=True)
        sys.exit(2)
    if interrupted:
        sys.exit(130)

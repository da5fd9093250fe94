"""`capfan analyze`: run one analyzer as its own process on a ring."""
from __future__ import annotations

import json
import sys

import click

from capfan import errors
from capfan.analyzers import available, load
from capfan.analyzers.runner import Runner, RunSpec
from capfan.recordsink import FileSink


def parse_options(pairs) -> dict:
    """-o key=value pairs as a dict (values stay text; the analyzer's options type them)."""
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise errors.ConfigError("-o", f"expected key=value, got {p!r}")
        out[k.strip()] = v.strip()
    return out


def list_analyzers() -> str:
    """Installed analyzers with their options, as text."""
    lines = []
    for name, ep in sorted(available().items()):
        try:
            cls = load(name)
        except errors.ConfigError as e:
            lines.append(f"{name}  ({ep.value})  BROKEN: {e}")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name}  ({ep.value}, default policy {getattr(cls, 'policy', 'reliable')})")
        if doc:
            lines.append(f"    {doc[0]}")
        for k, o in getattr(cls, "options", {}).items():
            lines.append(f"    -o {k}=...  (default {o.default!r})  {o.help}")
    return "\n".join(lines)


@click.command()
@click.option("--ring", "ring_name", help="Ring to read (e.g. eth0.q0).")
@click.option("--analyzer", "analyzer", help="Analyzer name (see --list).")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE", help="Analyzer option (repeatable).")
@click.option("--name", default=None, help="Consumer name (default: the analyzer's name, "
                                           "plus -GROUP-MEMBER in a group). Reusing a name resumes.")
@click.option("--policy", type=click.Choice(["reliable", "lossy"]), default=None,
              help="reliable holds the producer (within the stall budget); lossy never does. "
                   "Default: the analyzer's own (flowmeter reliable, recorder lossy).")
@click.option("--group", default=None, help="Load-balanced group: members split flows by hash.")
@click.option("--member", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="This process's index in the group.")
@click.option("--group-size", type=click.IntRange(1, 65535), default=1, show_default=True,
              help="Members in the group.")
@click.option("--cpu", type=click.IntRange(0, None), default=None, help="Pin the process to this CPU.")
@click.option("--spin-us", type=click.IntRange(0, 1_000_000), default=0, show_default=True,
              help="Busy-poll this long before sleeping (0 = adaptive). Spinning costs a core.")
@click.option("--stall-budget-us", type=click.IntRange(1, None), default=1_000_000, show_default=True,
              help="A reliable consumer this far behind is demoted to lossy.")
@click.option("--start", type=click.Choice(["head", "oldest"]), default="head", show_default=True,
              help="A new consumer starts at new packets (head) or the oldest kept (oldest).")
@click.option("--out", default="capfan-out", show_default=True,
              help="Directory for emitted records (<stream>.jsonl), or - for stdout.")
@click.option("--tick", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True,
              help="Seconds between the analyzer's on_tick calls.")
@click.option("--exit-on-eof", is_flag=True,
              help="Stop (flushing) once the ring's producer has gone and every packet is read, "
                   "e.g. after a replay.")
@click.option("--keep", is_flag=True, help="Keep the consumer slot at exit so the next run resumes.")
@click.option("--status", "status_every", type=click.FloatRange(0, 3600), default=None,
              help="Print a status line every N seconds on stderr (default: 2 on a terminal, else off).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.option("--list", "list_only", is_flag=True, help="List installed analyzers and their options.")
def analyze(ring_name, analyzer, options, name, policy, group, member, group_size, cpu, spin_us,
            stall_budget_us, start, out, tick, exit_on_eof, keep, status_every, as_json, list_only):
    """Run one analyzer on ring RING as this process, until SIGTERM/SIGINT (or --exit-on-eof).

    The analyzer's stop() runs on shutdown, so a flow meter flushes its open flows.

    \b
    Examples:
      capfan analyze --ring eth0.q0 --analyzer flowmeter -o idle_timeout=30 --cpu 3
      capfan analyze --ring eth0.q0 --analyzer recorder -o dir=/var/capture -o rotate_size=1G
      capfan analyze --ring eth0.q0 --analyzer ids --group ids --member 1 --group-size 4
    """
    if list_only:
        click.echo(list_analyzers())
        return
    if not ring_name or not analyzer:
        raise errors.ConfigError("--ring" if not ring_name else "--analyzer",
                                 "capfan analyze needs --ring and --analyzer (see --list)")
    if member >= group_size and group:
        raise errors.ConfigError("--member", f"must be below --group-size ({group_size})")
    if status_every is None:
        status_every = 2.0 if sys.stderr.isatty() else 0.0
    sink = FileSink(out)
    spec = RunSpec(ring=ring_name, analyzer=analyzer, options=parse_options(options), name=name, policy=policy,
                   group=group, member=member, group_size=group_size if group else 0, cpu=cpu,
                   spin_us=spin_us, stall_budget_us=stall_budget_us, start=start, tick=tick,
                   exit_on_eof=exit_on_eof, keep=keep, status_every=status_every)
    try:
        summary = Runner(spec, emit=sink).run()
    finally:
        sink.close()
    summary["out"] = {s: sink.path(s) for s in sink.counts}
    err = out == "-"  # records own stdout then
    if as_json:
        click.echo(json.dumps(summary), err=err)
        return
    click.echo(f"{summary['analyzer']} on {summary['ring']} as {summary['consumer']} ({summary['policy']}): "
               f"{summary['delivered']} packets delivered, {summary['dropped']} dropped, "
               f"{summary['cpu_seconds']} CPU s", err=err)
    for stream, n in summary["records"].items():
        click.echo(f"  {stream}: {n} records -> {summary['out'].get(stream, '-')}", err=err)
    for k, v in summary["analyzer_stats"].items():
        click.echo(f"  {k}: {v}", err=err)

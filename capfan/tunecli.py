"""`capfan tune [IFACE...] [--apply]` and `capfan doctor`: host settings for capture."""
from __future__ import annotations

import json
import sys

import click

from capfan import hosttune as T
from capfan import tuneplan

_LABELS = {T.OK: "ok", T.CHANGE: "CHANGE", T.MANUAL: "MANUAL", T.UNSUPPORTED: "n/a", T.INFO: "-"}


def _value(a: T.Action) -> str:
    """"current -> wanted" where they differ, else the current value."""
    if a.status in T.OFF and a.wanted:
        return f"{a.current or '?'} -> {a.wanted}"
    return a.current


def format_actions(actions: list[T.Action], label=None) -> list[str]:
    """One line per action (status, scope, item, value), then its command or note indented."""
    label = label or (lambda a: _LABELS[a.status])
    w_scope = max([len(a.scope) for a in actions] + [4])
    w_item = max([len(a.item) for a in actions] + [4])
    lines = []
    for a in actions:
        lines.append(f"  {label(a):<7} {a.scope:<{w_scope}}  {a.item:<{w_item}}  {_value(a)}".rstrip())
        pad = " " * 12
        for c in a.commands if a.status in T.OFF else []:
            lines.append(f"{pad}fix: {c.text}")
        if a.note and a.status != T.OK:
            lines.append(f"{pad}{a.note}")
    return lines


@click.command()
@click.argument("ifaces", metavar="[IFACE]...", nargs=-1)
@click.option("-c", "--config", "config", default=None,
              help="Agent config (TOML): its interfaces, queue lists, CPU pinning and rings.")
@click.option("--queues", type=click.IntRange(min=1), default=None,
              help="Receive queues to set (default: what the config's queue lists need; without "
                   "config the count is left alone).")
@click.option("--apply", "do_apply", is_flag=True, help="Change the settings (default: dry run, print only).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and results) as JSON.")
def tune(ifaces, config, queues, do_apply, as_json):
    """Print (or --apply) the host settings capture needs on IFACE.

    Per interface: receive queue count (ethtool -L), a symmetric RSS key so both directions of
    a flow land on one queue (ethtool -X hkey 6d:5a:...), an even RSS table over the captured
    queues, GRO/LRO/TSO/GSO off (ethtool -K), the queue IRQs moved off the capture cores
    (/proc/irq/N/smp_affinity_list, from the agent's CPU placement with --config), AF_XDP
    busy-poll NAPI settings. Host-wide: busy-poll/backlog/BPF JIT sysctls and huge pages for
    rings on a hugetlbfs ring_dir. Each line shows current -> wanted and the exact command.
    Settings the driver lacks are reported as n/a. With --apply the exit status is 1 when
    something could not be set. Without IFACE: every interface of --config.
    """
    config = tuneplan.check_config_path(config)
    tg = tuneplan.target(list(ifaces), config, queues)
    if not do_apply:
        plan = tuneplan.tune_plan(tg)
        if as_json:
            click.echo(json.dumps({"apply": False, "config": config, "actions": [a.to_json() for a in plan]},
                                  indent=2))
            return
        head = ", ".join(tg.ifaces) or "host-wide settings"
        click.echo(f"capfan tune {head}{f' (config {config})' if config else ''}: dry run, "
                   "nothing changed (--apply to change)")
        click.echo("\n".join(format_actions(plan)))
        n = sum(a.status == T.CHANGE for a in plan)
        click.echo(f"{n} setting(s) to change" + (": run again with --apply" if n else ""))
        return
    out = tuneplan.apply(lambda: tuneplan.tune_plan(tg))
    if as_json:
        click.echo(json.dumps({
            "apply": True, "config": config,
            "applied": [a.to_json() for a in out.applied],
            "failed": [dict(a.to_json(), error=err) for a, err in out.failed],
            "actions": [a.to_json() for a in out.after]}, indent=2))
    else:
        done = {a.key for a in out.applied}
        lines = format_actions(out.after, label=lambda a: "set" if a.key in done else _LABELS[a.status])
        click.echo(f"capfan tune {', '.join(tg.ifaces) or 'host-wide settings'}: applied")
        click.echo("\n".join(lines))
        for a, err in out.failed:
            click.echo(f"capfan tune: could not set {a.scope} {a.item}: {err}", err=True)
        click.echo(f"{len(out.applied)} setting(s) changed, {len(out.failed)} failed")
    if out.failed:
        names = ", ".join(f"{a.scope} {a.item}" for a, _ in out.failed)
        if as_json:
            click.echo(f"capfan tune: failed: {names}", err=True)
        sys.exit(1)


@click.command()
@click.option("-c", "--config", "config", default=None,
              help="Agent config (TOML); default /etc/capfan/agent.toml when it exists.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also list the settings that are fine.")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def doctor(config, show_all, as_json):
    """Report what is off on this host for capture, each with the command that fixes it.

    The checks of `capfan tune` for every interface of the agent config, plus the agent's
    capabilities and memlock limit, the kernel version for AF_XDP, the libxdp build and the SNF
    library. Exit status 0 when nothing is off, 1 otherwise.
    """
    config = tuneplan.check_config_path(config)
    tg = tuneplan.target([], config)
    plan = tuneplan.doctor_plan(tg)
    off = [a for a in plan if a.status in T.OFF]
    if as_json:
        click.echo(json.dumps({"config": config, "ok": not off, "off": len(off),
                               "findings": [a.to_json() for a in plan]}, indent=2))
    else:
        where = f"config {config}" if config else "no agent config (host-wide checks only; pass -c FILE)"
        click.echo(f"capfan doctor: {where}")
        shown = [a for a in plan if show_all or a.status in (*T.OFF, T.UNSUPPORTED)]
        if shown:
            click.echo("\n".join(format_actions(shown, label=lambda a: "OFF" if a.status in T.OFF
                                                else _LABELS[a.status])))
        click.echo(f"{len(off)} thing(s) off" + (": fix them with the commands above (`capfan tune --apply "
                                                   "-c FILE` does the CHANGE ones)" if off else ", all good"))
    sys.exit(1 if off else 0)

"""`capfan agent -c sensor.toml`: run a sensor host's captures and analyzers from one config."""
from __future__ import annotations

import sys
import time

import click

from capfan.agents import config as agentconfig


def _say(msg: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} capfan agent: {msg}", err=True)


def plan_lines(cfg, warnings: list[str]) -> list[str]:
    """What the agent would start, one line per worker, then the warnings."""
    lines = [f"agent {cfg.name}: rings in {cfg.ring_dir}, status in {cfg.state_dir}, records in {cfg.out}",
             f"metrics: {'http://%s:%d/metrics' % cfg.metrics if cfg.metrics else 'off'}"]
    e = cfg.exporter
    if e is None:
        lines.append(f"export: off (records stay in {cfg.out} as JSON lines)")
    else:
        route = ", flows routed by flow hash" if e.route == "flow-hash" else ""
        lines.append(f"export: to {', '.join(c['endpoint'] for c in e.collectors)} "
                     f"({'curve' if e.curve else 'plain'}{route}), spool {e.spool_dir} (max {e.spool_max >> 20} MiB, "
                     f"{e.spool_policy})")
    for w in cfg.captures:
        what = w.file if w.source == "pcap" else f"{w.interface} queue {w.queue}"
        lines.append(f"  capture  {w.ring:<20} {w.source:<8} {what}  cpu {_cpu(w.cpu)}")
    for w in cfg.analyzers:
        grp = f" group {w.group} member {w.member} of {w.group_size}" if w.group else ""
        lines.append(f"  analyzer {w.ring:<20} {w.consumer:<16} {w.analyzer}{grp}  cpu {_cpu(w.cpu)}"
                     f"  spin_us {w.spin_us}")
    lines += [f"warning: {w}" for w in warnings]
    return lines


def _cpu(cpu) -> str:
    return "-" if cpu is None else str(cpu)


@click.command()
@click.option("-c", "--config", "path", default=agentconfig.DEFAULT_CONFIG, show_default=True,
              help="Agent config (TOML); examples in agents/examples/.")
@click.option("--check", is_flag=True, help="Validate the config against this host, print the plan "
                                           "(workers, rings, CPUs, warnings) and exit.")
@click.option("--exit-when-done", is_flag=True, help="Exit once every replay ended and the analyzers "
                                                    "drained (same as agent.exit_when_done).")
def agent(path, check, exit_when_done):
    """Run the captures and analyzers of config FILE until SIGTERM/SIGINT.

    One capture worker per NIC queue writes each packet once into its ring; the configured
    analyzers read every ring in place (fan-out) or split it (groups). Crashed workers are
    restarted with backoff. Live view: `capfan status -c FILE` / `capfan top -c FILE`.
    """
    from capfan.agents.supervisor import Supervisor  # noqa: PLC0415

    cfg = agentconfig.load(path)
    if exit_when_done:
        cfg.exit_when_done = True
    sup = Supervisor(cfg, on_event=_say)
    if check:
        sup.place()
        click.echo("\n".join(plan_lines(cfg, sup.warnings)))
        return
    sys.exit(sup.run())

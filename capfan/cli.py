"""The `capfan` command line (click). Each command group lives in its own module."""
import logging
import sys

import click

from capfan import __version__
from capfan.errors import CapfanError


class CapfanGroup(click.Group):
    """Click group that prints capfan errors as one line, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CapfanError as e:
            click.echo(f"capfan: error: {e}", err=True)
            sys.exit(2)


@click.group(cls=CapfanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capfan")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose):
    """capfan: distributed packet capture with a zero-copy shared-memory fan-out ring."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register():
    from capfan.ringcli import ring
    from capfan.bench.cli import bench
    from capfan.capturecli import capture
    from capfan.replaycli import replay
    from capfan.analyzecli import analyze
    from capfan.statuscli import status, top
    from capfan.agentcli import agent
    from capfan.collectcli import collect
    from capfan.flowscli import flows
    from capfan.keyscli import keys
    from capfan.tunecli import doctor, tune

    main.add_command(ring)
    main.add_command(bench)
    main.add_command(replay)
    main.add_command(capture)
    main.add_command(analyze)
    main.add_command(agent)
    main.add_command(status)
    main.add_command(top)
    main.add_command(collect)
    main.add_command(flows)
    main.add_command(keys)
    main.add_command(tune)
    main.add_command(doctor)


_register()

"""`capfan keys`: make and show CURVE key pairs for agents and collectors."""
import click

from capfan import keys as keymod


@click.group("keys")
def keys():
    """CURVE key pairs (agent <-> collector encryption and authentication)."""


@keys.command("gen")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, help="Directory for NAME.key and NAME.key_secret.")
def gen(name, directory):
    """Write NAME.key (public) and NAME.key_secret (0600); print the public key."""
    pub, sec = keymod.generate(name, directory)
    click.echo(keymod.load_public(pub))
    click.echo(f"wrote {pub} (give to collectors) and {sec} (keep secret)", err=True)


@keys.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
def show(file):
    """Print the public key of a certificate file."""
    click.echo(keymod.load_public(file))

"""``bastion keygen``: create the keys bastion needs."""

from __future__ import annotations

from pathlib import Path

import click

from bastion.credentials.hostkeys import generate_host_key


@click.group()
def keygen() -> None:
    """Generate host, vault or signing keys."""


@keygen.command("host")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (the .pub goes beside it).")
def keygen_host(out: str) -> None:
    """Write a new Ed25519 SSH host key for the bastion listener."""
    public = generate_host_key(Path(out))
    click.echo(public)

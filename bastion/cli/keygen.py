"""``bastion keygen``: create the keys bastion needs."""

from __future__ import annotations

from pathlib import Path

import click

from bastion.credentials.hostkeys import generate_host_key
from bastion.credentials.vault import generate_vault_key, key_id, write_vault_key


@click.group()
def keygen() -> None:
    """Generate host, vault, signing or user CA keys."""


@keygen.command("host")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (the .pub goes beside it).")
def keygen_host(out: str) -> None:
    """Write a new Ed25519 SSH host key for the bastion listener."""
    public = generate_host_key(Path(out))
    click.echo(public)


@keygen.command("vault")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Key file to write (mode 0600; never overwritten).")
def keygen_vault(out: str) -> None:
    """Write a new random 32-byte vault key, base64 on one line."""
    key = generate_vault_key()
    write_vault_key(Path(out), key)
    click.echo(f"wrote vault key {out} (key id {key_id(key)})")


def _add_signing() -> None:
    # Imported late: the evidence commands import the CLI group module.
    from bastion.cli.ca import keygen_ca
    from bastion.cli.evidence import keygen_signing

    keygen.add_command(keygen_signing)
    keygen.add_command(keygen_ca)


_add_signing()

"""``bastion keygen ca`` and ``bastion ca show``: the user CA that certificate targets trust."""

from __future__ import annotations

from pathlib import Path

import click

from bastion.cli.options import config_option
from bastion.config import load_config
from bastion.credentials.ca import generate_ca_key, trusted_ca_lines
from bastion.errors import ConfigError


@click.command("ca")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="CA private key file to write (mode 0600; never overwritten; "
                   "the .pub goes beside it).")
def keygen_ca(out: str) -> None:
    """Write a new Ed25519 user CA key for certificate targets."""
    line = generate_ca_key(Path(out))
    click.echo(f"wrote user CA key {out}; targets trust it with this TrustedUserCAKeys line:")
    click.echo(line)


@click.group("ca")
def ca() -> None:
    """The user certificate authority that certificate targets trust."""


@ca.command("show")
@config_option
def ca_show(config_path: str) -> None:
    """Print the TrustedUserCAKeys line of every configured CA (current, and next if set)."""
    config = load_config(config_path)
    if config.ca is None:
        raise ConfigError(f"{config.source}: no [ca] section; make a CA with "
                          "`bastion keygen ca --out FILE` and set [ca] key_file")
    for role, line in trusted_ca_lines(config.ca):
        signing = (role == "next") == config.ca.sign_with_next
        click.echo(f"# {role} CA{' (signs certificates now)' if signing else ''}")
        click.echo(line)

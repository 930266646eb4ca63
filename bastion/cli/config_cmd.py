"""``bastion check-config``: validate a configuration file."""

from __future__ import annotations

import click

from bastion.cli.display import printable
from bastion.config import load_config
from bastion.errors import ConfigError
from bastion.server.preflight import preflight


@click.command("check-config")
@click.argument("config_file", metavar="FILE")
def check_config(config_file: str) -> None:
    """Validate FILE and what `bastion serve` needs from the machine (listen address, keys,
    directories, vault); print what it defines, or the first error with its line."""
    config = load_config(config_file)
    problems = preflight(config)
    if problems:
        raise ConfigError(problems[0])
    click.echo(f"{printable(config_file)}: OK ({len(config.targets)} targets, "
               f"{len(config.users)} users, {len(config.access)} access rules)")

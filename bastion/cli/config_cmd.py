"""``bastion check-config``: validate a configuration file."""

from __future__ import annotations

import click

from bastion.config import check_files, load_config
from bastion.errors import ConfigError


@click.command("check-config")
@click.argument("config_file", metavar="FILE", type=click.Path(dir_okay=False))
def check_config(config_file: str) -> None:
    """Validate FILE; print what it defines, or the first error with its line."""
    config = load_config(config_file)
    problems = check_files(config)
    if problems:
        raise ConfigError(problems[0])
    click.echo(f"{config_file}: OK ({len(config.targets)} targets, {len(config.users)} users, "
               f"{len(config.access)} access rules)")

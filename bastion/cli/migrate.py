"""``bastion migrate``: bring the state database's schema up to this bastion's."""

from __future__ import annotations

import click

from bastion.cli.options import config_option
from bastion.config import load_config
from bastion.state.backends import open_state


@click.command("migrate")
@config_option
@click.option("--check", is_flag=True,
              help="Change nothing; exit 1 unless the schema is this bastion's.")
def migrate(config_path: str, check: bool) -> None:
    """Apply the state database's pending schema migrations.

    Run once per upgrade, from any one node, before starting upgraded servers: they refuse a
    PostgreSQL database that is not at their schema. (SQLite, for one host, migrates itself.)
    """
    config = load_config(config_path)
    db = open_state(config, migrate=False)
    try:
        if check:
            db.check_schema()  # StateError: one line, exit 1
            click.echo(f"{db.where}: schema {db.schema_version}, up to date")
            return
        applied = db.migrate()
        version = db.schema_version
    finally:
        db.close()
    if applied:
        click.echo(f"{db.where}: applied migration{'s' if len(applied) > 1 else ''} "
                   f"{', '.join(map(str, applied))}; schema {version}")
    else:
        click.echo(f"{db.where}: schema {version}, up to date")

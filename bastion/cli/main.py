"""The ``bastion`` command: one click group; each concern adds its commands from its own module."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from bastion.cli.display import printable
from bastion.errors import EXIT_INTERNAL, BastionError

# Shared options live in options.py: a command module importing them from here would make an
# import cycle (main imports the command modules), which `lint-imports` refuses.


class BastionGroup(click.Group):
    """A click group that turns every bastion error into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BastionError as exc:
            click.echo(f"bastion: {printable(exc)}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("bastion: interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit):
            raise
        except Exception as exc:  # a bug: one line by default, the traceback on request
            if os.environ.get("BASTION_DEBUG"):
                raise
            click.echo(f"bastion: internal error: {type(exc).__name__}: {printable(exc)} "
                       "(set BASTION_DEBUG=1 for a traceback)", err=True)
            sys.exit(EXIT_INTERNAL)


@click.group(cls=BastionGroup)
@click.version_option(package_name="bastion")
def cli() -> None:
    """bastion: an SSH bastion that signs people in and records every session."""


def _register() -> None:
    # Each module adds its own commands; imported here so `bastion --help` lists them all.
    from bastion.cli import config_cmd, keygen

    cli.add_command(config_cmd.check_config)
    cli.add_command(keygen.keygen)
    from bastion.cli import serve as serve_cmd
    cli.add_command(serve_cmd.serve_cmd)
    from bastion.cli import demo as demo_cmd
    cli.add_command(demo_cmd.demo)
    from bastion.cli import vault as vault_cmd
    cli.add_command(vault_cmd.vault)
    from bastion.cli import evidence as evidence_cmd
    evidence_cmd.register(cli)
    from bastion.cli import identity as identity_cmd
    cli.add_command(identity_cmd.keys)
    cli.add_command(identity_cmd.totp)
    from bastion.cli import approvals as approvals_cmd
    cli.add_command(approvals_cmd.approvals)
    from bastion.cli import replay as replay_cmd
    cli.add_command(replay_cmd.replay)
    from bastion.cli import sessions as sessions_cmd
    cli.add_command(sessions_cmd.sessions)
    from bastion.cli import commands as commands_cmd
    cli.add_command(commands_cmd.check_command)
    from bastion.cli import ca as ca_cmd
    cli.add_command(ca_cmd.ca)
    from bastion.cli import migrate as migrate_cmd
    cli.add_command(migrate_cmd.migrate)


def main() -> None:
    """Console-script entry point.

    Click's own errors (an unknown option, a missing argument) are printed as the README's one
    line ``bastion: ...`` with exit status 2 instead of click's usage block.
    """
    _register()
    try:
        cli.main(prog_name="bastion", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path + ": " if exc.ctx is not None else ""
        click.echo(f"bastion: {where}{exc.format_message()} (see --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:  # e.g. a file argument that cannot be opened
        click.echo(f"bastion: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else 1)
    except click.exceptions.Abort:
        click.echo("bastion: interrupted", err=True)
        sys.exit(130)

"""The ``bastion`` command: one click group; each concern adds its commands from its own module."""

from __future__ import annotations

import importlib
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


# Every command by name, and where it lives. A command's module is imported only when that
# command runs (or --help lists them): `bastion serve` then does not carry boto3 (upload,
# verify, replay from S3: about 12 MB resident) or the other commands' libraries.
_COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("bastion.cli.config_cmd", "check_config"),
    "keygen": ("bastion.cli.keygen", "keygen"),
    "serve": ("bastion.cli.serve", "serve_cmd"),
    "demo": ("bastion.cli.demo", "demo"),
    "vault": ("bastion.cli.vault", "vault"),
    "upload": ("bastion.cli.evidence", "upload"),
    "verify": ("bastion.cli.evidence", "verify"),
    "keys": ("bastion.cli.identity", "keys"),
    "totp": ("bastion.cli.identity", "totp"),
    "approvals": ("bastion.cli.approvals", "approvals"),
    "replay": ("bastion.cli.replay", "replay"),
    "sessions": ("bastion.cli.sessions", "sessions"),
    "check-command": ("bastion.cli.commands", "check_command"),
    "ca": ("bastion.cli.ca", "ca"),
    "migrate": ("bastion.cli.migrate", "migrate"),
}


class _LazyCommands(BastionGroup):
    """The top-level group: lists every command, imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _COMMANDS:
            module, attribute = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return command


@click.group(cls=_LazyCommands)
@click.version_option(package_name="bastion")
def cli() -> None:
    """bastion: an SSH bastion that signs people in and records every session."""


def _register() -> None:
    """Import every command now (tests that drive ``cli`` directly; main() needs not)."""
    for name in _COMMANDS:
        cli.get_command(click.Context(cli), name)


def main() -> None:
    """Console-script entry point.

    Click's own errors (an unknown option, a missing argument) are printed as the README's one
    line ``bastion: ...`` with exit status 2 instead of click's usage block.
    """
    try:
        cli.main(prog_name="bastion", standalone_mode=False)
    except click.UsageError as exc:
        # A subcommand's error names it ("bastion: keys revoke: ..."), without repeating
        # "bastion"; the group's own error names nothing more.
        path = exc.ctx.command_path.split(" ", 1)[1:] if exc.ctx is not None else []
        where = f"{path[0]}: " if path else ""
        click.echo(f"bastion: {where}{exc.format_message()} (see --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:  # e.g. a file argument that cannot be opened
        click.echo(f"bastion: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else 1)
    except click.exceptions.Abort:
        click.echo("bastion: interrupted", err=True)
        sys.exit(130)

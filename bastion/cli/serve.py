"""``bastion serve``: run the SSH listener until stopped."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

import click

from bastion.audit import AuditLog
from bastion.cli.options import config_option
from bastion.config import load_config
from bastion.errors import ConfigError
from bastion.server.app import serve
from bastion.server.preflight import preflight


@click.command("serve")
@config_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve_cmd(config_path: str, log_level: str) -> None:
    """Run the bastion SSH server (foreground; systemd runs it like this)."""
    config = load_config(config_path)
    problems = preflight(config)  # the checks check-config runs: the same one line, exit 2
    if problems:
        raise ConfigError(problems[0])
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    # asyncssh logs every packet-level event at INFO; keep its noise out of the journal.
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.getLogger().level))
    audit = AuditLog(config.paths.audit_log, config.server.node_id)

    def ready(port: int) -> None:
        click.echo(f"bastion: listening on {config.server.listen}:{port}", err=True)

    try:
        import uvloop  # faster event loop for the relay; optional

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config, audit, ready))
    finally:
        audit.close()

"""``bastion serve``: run the SSH listener (a supervisor and its worker processes) until
stopped."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from bastion.audit import AuditLog
from bastion.cli.options import config_option
from bastion.config import load_config
from bastion.errors import ConfigError
from bastion.server.preflight import preflight
from bastion.server.workers import Supervisor


@click.command("serve")
@config_option
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes (default: server.workers, 0 there: one per CPU).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve_cmd(config_path: str, workers: int | None, log_level: str) -> None:
    """Run the bastion SSH server (foreground; systemd runs it like this). SIGHUP rereads the
    config; SIGTERM ends every session with a notice and stops."""
    config = load_config(config_path)
    problems = preflight(config)  # the checks check-config runs: the same one line, exit 2
    if problems:
        raise ConfigError(problems[0])
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    # asyncssh logs every packet-level event at INFO; keep its noise out of the journal.
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.getLogger().level))
    audit = AuditLog(config.paths.audit_log, config.server.node_id)

    def announce(port: int, count: int) -> None:
        click.echo(f"bastion: listening on {config.server.listen}:{port} "
                   f"({count} worker{'s' if count > 1 else ''})", err=True)

    try:
        code = Supervisor(Path(config_path), config, audit, workers, announce).run()
    finally:
        audit.close()
    sys.exit(code)

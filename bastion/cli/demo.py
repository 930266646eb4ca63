"""``bastion demo``: a working bastion with two OpenSSH targets on loopback, until Ctrl-C."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType

import click

from bastion.demo.procs import port_open
from bastion.demo.stack import DemoStack
from bastion.errors import BastionError, UsageError


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="New or empty directory for keys, config and recordings (default: a new "
                   "temporary directory, kept afterwards).")
@click.option("--port", type=click.IntRange(0, 65535), default=2222, show_default=True,
              help="Port for the bastion on 127.0.0.1 (0: any free port).")
def demo(workdir: str | None, port: int) -> None:
    """Run a bastion with targets web01 and db01 on 127.0.0.1 and print how to use it."""
    if port and port_open("127.0.0.1", port):
        raise UsageError(f"port {port} on 127.0.0.1 is in use; choose another with --port "
                         "(0 picks a free one)")
    directory = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bastion-demo-"))
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    click.echo(f"bastion demo: starting in {directory} ...", err=True)
    stack = DemoStack(directory, port or None)
    try:
        stack.start()
        _print_usage(stack)
        # Waiting on the event (not sleeping) returns as soon as a signal arrives.
        while not stop_requested.wait(0.5):
            dead = stack.dead_processes()
            if dead:
                raise BastionError(f"{dead[0].name} exited unexpectedly:\n{dead[0].log_tail()}")
    finally:
        click.echo("bastion demo: stopping ...", err=True)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        click.echo(f"bastion demo: stopped; files and recordings kept in {directory}", err=True)


def _print_usage(stack: DemoStack) -> None:
    commands = stack.example_commands()
    click.echo(f"""
bastion demo is running: bastion on {stack.bastion_host}:{stack.bastion_port}, \
targets {", ".join(stack.target_names)} (login {stack.login}).

Open a shell on {stack.target_names[0]} through the bastion:
    {commands[0]}
Run one command:
    {commands[1]}

{stack.device_login_usage()}
{stack.command_control_usage()}
Recordings: {stack.spool_dir}
Audit log:  {stack.state_dir / "audit.jsonl"}
Logs:       {stack.logs_dir} (bastion, sshd, IdP and S3 output)
Settings for scripts: . {stack.env_path}

Press Ctrl-C to stop.
""")

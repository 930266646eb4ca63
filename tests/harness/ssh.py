"""OpenSSH client command lines for tests, through the bastion or straight to a target."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from bastion.demo.stack import DemoStack

# Options every non-interactive test connection uses: never prompt, fail fast, stay quiet.
BATCH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR")


def ssh_base_argv(stack: DemoStack, *, batch: bool = True) -> list[str]:
    """``ssh`` with the demo's ssh_config (pinned bastion key, demo key) and port; no host yet."""
    argv = ["ssh", "-F", str(stack.ssh_config_path), "-p", str(stack.bastion_port)]
    return [*argv, *BATCH_OPTIONS] if batch else argv


def bastion_destination(stack: DemoStack, target: str, login: str | None = None) -> str:
    """The SSH destination ``login@target@127.0.0.1`` for the bastion."""
    return f"{login or stack.login}@{target}@{stack.bastion_host}"


def run_ssh(argv: Sequence[str], *, input_text: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a non-interactive ssh command line and return its result (never raises on status)."""
    return subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          stdin=None if input_text is not None else subprocess.DEVNULL)

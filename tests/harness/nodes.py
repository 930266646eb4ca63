"""Several bastion nodes sharing one PostgreSQL state database (the demo stack, plus nodes).

``SharedStateStack`` is the demo stack with ``[state] url`` set and ``bastion migrate`` run
before its server starts; ``add_node`` starts another ``bastion serve`` with its own node id,
port, spool, state dir and audit log, and the same database, vault, host key and IdP: what a
second machine behind a load balancer runs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from bastion.demo.procs import ManagedProcess, free_port
from bastion.demo.stack import DemoStack, wait_until_serving


@dataclass
class Node:
    """One more bastion node of a stack."""

    node_id: str
    port: int
    config_path: Path
    audit_log: Path
    spool_dir: Path
    process: ManagedProcess


class SharedStateStack(DemoStack):
    """The demo stack on PostgreSQL; ``add_node()`` starts further nodes on the same state."""

    def __init__(self, workdir: Path, state_url: str, *,
                 server_options: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(workdir, **options)
        self.state_url = state_url
        self.server_options = dict(server_options or {})  # merged into every node's [server]
        self.nodes: list[Node] = []

    def write_config(self) -> None:
        """The demo config plus ``[state] url`` (and the extra [server] options)."""
        self.merge_config({"state": {"url": self.state_url}, "server": self.server_options})
        super().write_config()

    def start_bastion(self, timeout: float = 30.0) -> None:
        """``bastion migrate`` (the server refuses an unmigrated database), then serve."""
        subprocess.run([sys.executable, "-m", "bastion", "migrate", "--config",
                        str(self.config_path)], check=True, capture_output=True, timeout=120)
        super().start_bastion(timeout)

    def add_node(self, node_id: str, timeout: float = 60.0) -> Node:
        """Start another node: own id, port, spool, state dir, audit log; shared database."""
        port = free_port()
        home = self.workdir / f"node-{node_id}"
        for sub in ("state", "spool"):
            (home / sub).mkdir(parents=True, mode=0o700)
        document = copy.deepcopy(self.config)
        document["server"].update(port=port, node_id=node_id)
        document["paths"] = {"state_dir": str(home / "state"), "spool_dir": str(home / "spool"),
                             "audit_log": str(home / "state" / "audit.jsonl")}
        config_path = home / "bastion.toml"
        config_path.write_text(tomli_w.dumps(document), encoding="utf-8")
        config_path.chmod(0o600)
        # The nodes share the host key: clients pin one key for the service, whichever node.
        with self.known_hosts_path.open("a", encoding="utf-8") as known:
            known.write(f"[{self.bastion_host}]:{port} {self.host_key_line}\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.bastion_env}
        process = self.start_process(
            f"bastion-{node_id}", [sys.executable, "-m", "bastion", "serve", "--config",
                                   str(config_path)], env=env, timeout=timeout)
        wait_until_serving(process, self.bastion_host, timeout)
        node = Node(node_id, port, config_path, home / "state" / "audit.jsonl", home / "spool",
                    process)
        self.nodes.append(node)
        return node

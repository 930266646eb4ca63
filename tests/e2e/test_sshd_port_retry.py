"""sshd cannot bind port 0 and report it, so the harness picks a free port first; when another
process takes that port in between, the target starts on a new one instead of failing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bastion.demo import sshd as sshd_module
from bastion.demo.procs import free_port, port_open
from bastion.demo.sshd import SshdTarget

pytestmark = pytest.mark.e2e


def test_a_port_taken_before_sshd_binds_it_is_replaced(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        taken = thief.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(sshd_module, "free_port", lambda: next(ports))
        target = SshdTarget("web01", tmp_path / "web01")
        assert target.port == taken
        target.start()
        try:
            assert target.port != taken and port_open("127.0.0.1", target.port)
            assert target.process is not None and target.process.alive()
        finally:
            target.stop()

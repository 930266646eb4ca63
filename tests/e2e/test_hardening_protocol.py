"""What the listener offers, checked with a real OpenSSH client forced to weaker choices."""

from __future__ import annotations

import stat

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


def _ssh(stack: DemoStack, *options: str) -> tuple[int, str, str]:
    # Not ssh_base_argv's LogLevel=ERROR: it hides "Unable to negotiate".
    result = run_ssh([*ssh_base_argv(stack, batch=False), "-o", "BatchMode=yes", *options,
                      bastion_destination(stack, "web01"), "--", "echo", "in"])
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(("options", "refusal"), [
    (("-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256"), "no matching MAC found"),
    (("-c", "aes128-ctr", "-o", "MACs=hmac-sha1"), "no matching MAC found"),
    (("-o", "KexAlgorithms=diffie-hellman-group14-sha1"), "no matching key exchange method"),
    (("-o", "KexAlgorithms=diffie-hellman-group1-sha1"), "no matching key exchange method"),
    (("-o", "Ciphers=aes128-cbc"), "no matching cipher found"),
    # Not offered by default (config/model.py DEFAULT_CIPHERS: asyncssh's cost per packet).
    (("-o", "Ciphers=chacha20-poly1305@openssh.com"), "no matching cipher found"),
])
def test_weak_algorithms_are_refused(demo_stack: DemoStack, options: tuple[str, ...],
                                     refusal: str) -> None:
    code, out, err = _ssh(demo_stack, *options)
    assert code == 255 and out == ""
    assert refusal in err


def test_etm_mac_and_no_compression_are_negotiated(demo_stack: DemoStack) -> None:
    code, out, err = _ssh(demo_stack, "-v", "-C", "-c", "aes128-ctr")
    assert code == 0 and out == "in\n", err
    assert "MAC: hmac-sha2-256-etm@openssh.com" in err or "MAC: umac-128-etm" in err
    assert "compression: none" in err
    assert "compression: zlib" not in err


def test_stock_client_negotiates_aes(demo_stack: DemoStack) -> None:
    # OpenSSH's own cipher order (chacha20-poly1305 first) against the bastion's offer.
    code, out, err = _ssh(demo_stack, "-v")
    assert code == 0 and out == "in\n", err
    negotiated = [line for line in err.splitlines() if "kex: client->server cipher:" in line]
    assert negotiated and all(" cipher: aes" in line for line in negotiated), negotiated


def test_demo_env_and_logs_are_private(demo_stack: DemoStack) -> None:
    assert stat.S_IMODE(demo_stack.env_path.stat().st_mode) == 0o600
    logs = list(demo_stack.logs_dir.glob("*.log"))
    assert logs
    for log in logs:
        # No write for the group, nothing for others.
        assert stat.S_IMODE(log.stat().st_mode) & 0o037 == 0, log

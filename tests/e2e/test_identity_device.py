"""RFC 8628 polling against the real IdP: slow_down honoured, an expired code refused clearly."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator

import pytest
from harness.device_login import SshClient

from bastion.demo.idp import complete_device_login
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

INTERVAL = 1
CODE_TTL = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    # The IdP answers the first poll of every code with slow_down, and codes live 10 s.
    with DemoStack(tmp_path_factory.mktemp("identity-device"),
                   idp_options={"device_interval": INTERVAL, "slow_down_polls": 1,
                                "device_code_ttl": CODE_TTL}) as st:
        yield st


def test_slow_down_adds_five_seconds(stack: DemoStack) -> None:
    assert stack.idp is not None
    client = SshClient(stack.sso_ssh_argv("web01", "echo", "in"))
    url = client.verification_url()
    client.wait_for_stderr("Waiting for the sign-in")
    complete_device_login(url, "alice", "alice-password")
    assert client.finish() == 0 and client.stdout == "in\n"
    polls = [p for p in stack.idp.polls() if p["answer"] in ("slow_down", "token")]
    code = polls[-1]["device_code"]
    mine = [p for p in stack.idp.polls() if p["device_code"] == code]
    assert mine[0]["answer"] == "slow_down"
    assert mine[-1]["answer"] == "token"
    # After slow_down the bastion waits interval + 5 s before polling again, and never polls
    # faster (the IdP would answer slow_down again).
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(mine)]
    assert gaps and all(gap >= INTERVAL + 5 - 0.2 for gap in gaps)
    assert [p["answer"] for p in mine].count("slow_down") == 1


def test_expired_code_refused_with_clear_message(stack: DemoStack) -> None:
    # A fresh key: the one above is bound now.
    config = stack.workdir / "ssh_config_expire"
    key = stack.workdir / "keys" / "expire_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config.write_text(stack.sso_ssh_config_path.read_text().replace(
        str(stack.sso_key_path), str(key)))
    client = SshClient(["ssh", "-F", str(config), "-p", str(stack.bastion_port),
                        f"{stack.login}@web01@{stack.bastion_host}", "--", "echo", "in"])
    client.verification_url()  # nobody signs in
    assert client.finish(timeout=CODE_TTL + 20) == 255
    assert ("bastion: the sign-in code expired before the sign-in was finished; connect again "
            "for a new code") in client.stderr
    assert client.stdout == ""

"""[[transfers]] and [[forwarding]]: parsed strictly, errors name file, line and key."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from bastion.config import load_config
from bastion.config.model import Config, ForwardRule
from bastion.errors import ConfigError
from bastion.policy.transfers import TransferPolicy, forward_grant

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
BASE = f"""\
[vault]
key_file = "vault.key"

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"

[[targets]]
name = "db01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"

[[access]]
groups = ["ops"]
targets = ["web01"]
logins = ["deploy"]
"""


def _load(tmp_path: Path, extra: str) -> Config:
    path = tmp_path / "bastion.toml"
    path.write_text(BASE + extra, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, extra)
    return str(info.value)


def test_rules_load_with_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, '[[transfers]]\ngroups = ["ops"]\nupload = false\n'
                   '[[forwarding]]\nusers = ["alice"]\nlocal = ["db:5432", "[::1]:*"]\n')
    [rule] = config.transfers
    assert (rule.upload, rule.download, rule.targets) == (False, True, ("*",))
    assert config.forwarding == (ForwardRule(users=("alice",), local=("db:5432", "[::1]:*")),)


@pytest.mark.parametrize(("extra", "message"), [
    ('[[transfers]]\nupload = false\n', "transfers[0].groups: expected groups or users"),
    ('[[transfers]]\ngroups = ["ops"]\ntargets = ["nope"]\n', "no target is called 'nope'"),
    ('[[transfers]]\ngroups = ["ops"]\ndeny_paths = ["etc/*"]\n', 'starting with "/" or "**"'),
    ('[[transfers]]\ngroups = ["ops"]\nuplod = false\n', "transfers[0].uplod: expected no such"),
    ('[[forwarding]]\ngroups = ["ops"]\nlocal = ["db"]\n', 'expected a list of "host:port"'),
    ('[[forwarding]]\ngroups = ["ops"]\nlocal = ["db:70000"]\n', "ports from 1 to 65535"),
    ('[[forwarding]]\ngroups = ["ops"]\nopen_from = "client"\n', '"target" or "bastion"'),
])
def test_bad_rules_are_one_line_errors(tmp_path: Path, extra: str, message: str) -> None:
    error = _error(tmp_path, extra)
    assert message in error and "\n" not in error
    assert error.startswith(f"{tmp_path / 'bastion.toml'}:")


def test_forward_grants_need_a_matching_rule(tmp_path: Path) -> None:
    config = _load(tmp_path, '[[forwarding]]\ngroups = ["ops"]\ntargets = ["web01"]\n'
                   'local = ["DB.internal:5432", "127.0.0.1:*"]\nopen_from = "bastion"\n')
    grant = forward_grant(config, ("bob",), ("ops",), "web01", "db.internal", 5432)
    assert grant is not None and (grant.rule, grant.open_from) == ("forwarding[0]", "bastion")
    assert forward_grant(config, ("bob",), ("ops",), "web01", "127.0.0.1", 22) is not None
    assert forward_grant(config, ("bob",), ("ops",), "web01", "db.internal", 22) is None
    assert forward_grant(config, ("bob",), ("dev",), "web01", "db.internal", 5432) is None
    assert forward_grant(config, ("bob",), ("ops",), "db01", "db.internal", 5432) is None


def test_transfer_rules_apply_by_user_group_and_target(tmp_path: Path) -> None:
    config = _load(tmp_path, '[[transfers]]\nusers = ["alice"]\ntargets = ["web01"]\n'
                   'download = false\n')
    assert TransferPolicy.for_session(config, ("alice",), (), "web01").restricted
    assert not TransferPolicy.for_session(config, ("bob",), ("ops",), "web01").restricted


def test_rules_naming_an_email_apply_to_that_identity(tmp_path: Path) -> None:
    config = _load(tmp_path, '[[transfers]]\nusers = ["alice@example.com"]\nupload = false\n')
    policy = TransferPolicy.for_session(config, ("Alice", "alice@example.com"), (), "web01")
    assert not policy.check("/x", write=True).allowed

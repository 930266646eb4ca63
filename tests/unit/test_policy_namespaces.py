"""Local users and identity-provider accounts are different namespaces in rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config import load_config
from bastion.errors import ConfigError
from bastion.identity.model import LOCAL_ISSUER, Identity
from bastion.identity.tokens import identity_from_claims
from bastion.policy.access import TargetRequest, authorize

BASE = """
[paths]
state_dir = "{d}/state"
spool_dir = "{d}/spool"
[vault]
key_file = "{d}/k"
[[users]]
name = "bob"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLXeBKzN3NKbMbi8DW8B4JeSSGWejnGw5Ko7cn2VHPT"]
[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLXeBKzN3NKbMbi8DW8B4JeSSGWejnGw5Ko7cn2VHPT"
[[access]]
users = {users}
targets = ["web01"]
logins = ["root"]
"""


def _config(tmp_path: Path, users: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "bastion.toml"
    path.write_text(BASE.format(d=tmp_path, users=users))
    return load_config(path)


def test_a_rule_naming_a_local_user_does_not_match_an_idp_account_of_that_name(
        tmp_path: Path) -> None:
    config = _config(tmp_path, '["bob"]')
    request = TargetRequest(target="web01", login="root", username="root@web01")
    local_bob = Identity(issuer=LOCAL_ISSUER, subject="bob", name="bob")
    assert authorize(config, local_bob, request).login == "root"
    idp_bob = Identity(issuer="https://idp", subject="x1", name="bob")
    with pytest.raises(Exception, match="not available to you"):
        authorize(config, idp_bob, request)


def test_idp_accounts_are_named_by_issuer_and_subject_or_verified_email(tmp_path: Path) -> None:
    config = _config(tmp_path, '["https://idp|x1", "carol@example.com"]')
    request = TargetRequest(target="web01", login="root", username="root@web01")
    assert authorize(config, Identity(issuer="https://idp", subject="x1", name="z"), request)
    verified = identity_from_claims({"iss": "https://idp", "sub": "c", "name": "c",
                                     "email": "carol@example.com", "email_verified": True},
                                    "groups")
    assert authorize(config, verified, request)
    unverified = identity_from_claims({"iss": "https://idp", "sub": "c", "name": "c",
                                       "email": "carol@example.com"}, "groups")
    assert unverified.email is None
    with pytest.raises(Exception, match="not available to you"):
        authorize(config, unverified, request)


def test_check_config_flags_a_bare_name_that_is_no_local_user(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="users: expected names of \\[\\[users\\]\\]"):
        _config(tmp_path, '["alice"]')

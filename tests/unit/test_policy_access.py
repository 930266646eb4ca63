"""The SSH user name is parsed strictly and policy denies by default."""

from __future__ import annotations

import dataclasses

import pytest

from bastion.config.model import AccessRule, Config, PathsConfig, ServerConfig, Target, VaultConfig
from bastion.errors import AccessDenied, TargetNameError
from bastion.identity.model import Identity
from bastion.policy.access import (
    Authorization,
    authorize,
    parse_username,
    reachable_targets,
)


def _config(*rules: AccessRule) -> Config:
    from pathlib import Path

    return Config(
        source=Path("bastion.toml"), server=ServerConfig(),
        paths=PathsConfig(state_dir=Path("s"), spool_dir=Path("r"), audit_log=None),
        vault=VaultConfig(path=Path("v"), key_file=Path("k")),
        targets=(Target(name="web01", host="10.0.0.5", host_keys=("x",), default_login="deploy"),
                 Target(name="db01", host="10.0.0.6", host_keys=("x",))),
        access=rules)


OPS = Identity(issuer="local", subject="ann", name="ann", groups=("ops",))
DEV = Identity(issuer="local", subject="bob", name="bob", groups=("dev",))


@pytest.mark.parametrize("username, target, login", [
    ("deploy@web01", "web01", "deploy"),
    ("web01", "web01", None),
    ("a@b@web01", None, None),
    ("ann", None, None),
])
def test_parse_username(username: str, target: str | None, login: str | None) -> None:
    config = _config()
    if username == "a@b@web01":
        with pytest.raises(TargetNameError, match="not a valid login name"):
            parse_username(username, config)
        return
    request = parse_username(username, config)
    assert (request.target, request.login) == (target, login)


@pytest.mark.parametrize("username", [
    "deploy@10.0.0.5", "deploy@127.1", "deploy@web01:22", "deploy@WEB01.example",
    "10.0.0.5", "evil.example.com", "x" * 300, "deploy@web\x1b01", "deploy@nosuch",
])
def test_anything_but_a_configured_target_is_refused(username: str) -> None:
    with pytest.raises(TargetNameError):
        parse_username(username, _config())


def test_no_rules_allow_nothing() -> None:
    config = _config()
    with pytest.raises(AccessDenied, match="not available to you"):
        authorize(config, OPS, parse_username("deploy@web01", config))
    assert reachable_targets(config, OPS) == []


def test_rule_allows_its_group_targets_and_logins_only() -> None:
    config = _config(AccessRule(groups=("ops",), targets=("web01",), logins=("deploy",)))
    auth = authorize(config, OPS, parse_username("web01", config))
    assert (auth.target.name, auth.login) == ("web01", "deploy")
    with pytest.raises(AccessDenied, match="login 'root' on target web01 is not allowed"):
        authorize(config, OPS, parse_username("root@web01", config))
    with pytest.raises(AccessDenied, match="target 'db01' is not available to you"):
        authorize(config, OPS, parse_username("deploy@db01", config))
    with pytest.raises(AccessDenied, match="target 'web01' is not available to you"):
        authorize(config, DEV, parse_username("deploy@web01", config))


def test_refusal_for_unknown_and_forbidden_targets_reads_the_same() -> None:
    config = _config(AccessRule(groups=("ops",), targets=("web01",), logins=("deploy",)))
    with pytest.raises(TargetNameError) as unknown:
        parse_username("deploy@nosuch", config)
    with pytest.raises(AccessDenied) as forbidden:
        authorize(config, OPS, parse_username("deploy@db01", config))
    assert str(unknown.value).replace("nosuch", "X") == str(forbidden.value).replace("db01", "X")


def test_target_without_default_login_needs_one() -> None:
    config = _config(AccessRule(groups=("ops",), targets=("*",), logins=("*",)))
    with pytest.raises(AccessDenied, match="no default login; connect as LOGIN@db01"):
        authorize(config, OPS, parse_username("db01", config))
    single = _config(AccessRule(groups=("ops",), targets=("db01",), logins=("pg",)))
    assert authorize(single, OPS, parse_username("db01", single)).login == "pg"


def test_users_rule_matches_by_name() -> None:
    config = _config(AccessRule(users=("bob",), targets=("db01",), logins=("pg",)))
    assert authorize(config, DEV, parse_username("pg@db01", config)).login == "pg"
    assert [t.name for t in reachable_targets(config, DEV)] == ["db01"]


def test_authorization_cannot_be_forged() -> None:
    config = _config()
    with pytest.raises(TypeError, match="issued only by"):
        Authorization(identity=OPS, target=config.targets[0], login="root", rule=0)
    real = authorize(_config(AccessRule(groups=("ops",), targets=("*",), logins=("*",))), OPS,
                     parse_username("root@web01", config))
    with pytest.raises(TypeError):
        dataclasses.replace(real, login="other")


def test_dial_refuses_anything_policy_did_not_issue() -> None:
    import asyncio

    from bastion.credentials.vault import Credential
    from bastion.relay.upstream import dial
    from bastion.secret import Secret

    config = _config()
    forged = object.__new__(Authorization)
    for name, value in (("identity", OPS), ("target", config.targets[0]), ("login", "root"),
                        ("rule", 0)):
        object.__setattr__(forged, name, value)
    credential = Credential("password", Secret("pw"))
    with pytest.raises(TypeError, match="issued by policy"):
        asyncio.run(dial(forged, credential))

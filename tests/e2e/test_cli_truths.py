"""What the README says about commands, as an operator runs them: exit codes and error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

pytestmark = pytest.mark.e2e

# The console script installed beside this interpreter (the venv), as an operator runs it.
BASTION = str(Path(sys.executable).with_name("bastion"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bastion: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    user_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    path = tmp_path / "bastion.toml"
    path.write_text(f"""
[paths]
state_dir = "state"
spool_dir = "spool"
audit_log = "state/audit.jsonl"

[vault]
key_file = "vault.key"

[[users]]
name = "carol"
keys = ["{user_key}"]

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{host_key}"

[storage]
bucket = "evidence"
endpoint_url = "http://127.0.0.1:9"
""", encoding="utf-8")
    made = run("keygen", "vault", "--out", str(tmp_path / "vault.key"))
    assert made.returncode == 0, made.stderr
    return path


def test_upload_without_signing_key_has_nothing_to_do(config: Path) -> None:
    result = run("upload", "-c", str(config), "--no-json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nothing sealed to upload: [evidence] signing_key is not set\n"
    as_json = json.loads(run("upload", "-c", str(config), "--json").stdout)
    assert as_json["status"] == "ok" and "signing_key is not set" in as_json["note"]


def test_totp_enroll_only_for_someone_who_can_log_in(config: Path) -> None:
    one_line(run("totp", "enroll", "nosuchuser", "-c", str(config)), 2,
             "'nosuchuser' is not a user in")
    one_line(run("totp", "enroll", "https://idp.example|nobody", "-c", str(config)), 2,
             "has never signed in")
    enrolled = run("totp", "enroll", "carol", "-c", str(config))
    assert enrolled.returncode == 0, enrolled.stderr
    assert "otpauth://totp/" in enrolled.stdout
    # The audit event goes to the file and to stderr (the journal), as the server's do.
    event = json.loads(next(line.removeprefix("audit ") for line in enrolled.stderr.splitlines()
                            if line.startswith("audit {")))
    assert event["event"] == "totp.enrolled" and event["subject"] == "carol"
    audit = (config.parent / "state" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in audit] == ["totp.enrolled"]
    reset = run("totp", "reset", "carol", "-c", str(config))
    assert reset.returncode == 0 and "totp.reset" in reset.stderr
    one_line(run("totp", "reset", "carol", "-c", str(config)), 2, "has no TOTP secret")


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o660])
def test_vault_key_readable_by_others_is_refused(config: Path, mode: int) -> None:
    (config.parent / "vault.key").chmod(mode)
    for args in (("vault", "list"), ("totp", "enroll", "carol")):
        one_line(run(*args, "-c", str(config)), 2, f"(mode 0{mode:o})", "chmod 600")


@pytest.mark.parametrize("args", [
    ("vault", "list", "--no-such-option"),
    ("vault", "set"),  # missing arguments
    ("no-such-command",),
    ("upload", "--wait", "extra-argument"),
    ("verify",),
])
def test_usage_errors_are_one_line_with_status_2(args: tuple[str, ...]) -> None:
    line = one_line(run(*args), 2, "(see --help)")
    assert "Usage:" not in line and "Try " not in line


@pytest.mark.parametrize("args", [
    ("check-config",), ("vault", "list"), ("totp", "enroll", "carol"), ("keys", "list"),
    ("upload",), ("sessions", "list"), ("serve",),
])
def test_the_same_refusal_gives_the_same_status_everywhere(tmp_path: Path,
                                                          args: tuple[str, ...]) -> None:
    missing = tmp_path / "missing.toml"
    # check-config takes the file as an argument, the others through --config.
    argv = (*args, str(missing)) if args == ("check-config",) else (*args, "-c", str(missing))
    one_line(run(*argv), 2, str(missing), "no such file")


def test_help_and_version_exit_0() -> None:
    assert run("--help").returncode == 0
    assert run("vault", "--help").returncode == 0
    version = run("--version")
    assert version.returncode == 0 and "version" in version.stdout


def _bind(config: Path, subject: str, fingerprint: str, ttl: float) -> None:
    """A key binding as a device login leaves it (ttl < 0: already expired)."""
    from bastion.identity.bindings import KeyBindings
    from bastion.identity.model import Identity
    from bastion.state.db import StateDB

    db = StateDB.in_state_dir(config.parent / "state")
    KeyBindings(db).bind(fingerprint, "ssh-ed25519 AAAA", Identity(
        "https://idp.example", subject, subject.title(), ("ops",)), ttl, "127.0.0.1:5")


def _listed(config: Path, *extra: str) -> list[tuple[str, str]]:
    result = run("keys", "list", "-c", str(config), "--json", *extra)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return sorted((r["key"], r["identity"]) for r in rows)


def test_keys_list_all_and_revoke_by_identity_and_all(config: Path) -> None:
    _bind(config, "alice", "SHA256:aaa", 3600)
    _bind(config, "alice", "SHA256:aa2", 3600)
    _bind(config, "bob", "SHA256:bbb", 3600)
    _bind(config, "carl", "SHA256:ccc", -10)  # expired
    live = [("SHA256:aa2", "https://idp.example|alice"), ("SHA256:aaa", "https://idp.example|alice"),
            ("SHA256:bbb", "https://idp.example|bob")]
    assert _listed(config) == live
    assert _listed(config, "--all") == sorted([*live, ("SHA256:ccc", "https://idp.example|carl")])

    revoked = run("keys", "revoke", "-c", str(config), "--identity", "https://idp.example|alice")
    assert revoked.returncode == 0 and revoked.stdout.startswith("revoked 2 bindings")
    assert len([e for e in revoked.stderr.splitlines() if "\"binding.revoked\"" in e]) == 2
    assert _listed(config) == [("SHA256:bbb", "https://idp.example|bob")]

    one_line(run("keys", "revoke", "-c", str(config), "--identity", "https://idp.example|alice"),
             2, "no binding matched")
    one_line(run("keys", "revoke", "-c", str(config), "--all", "SHA256:bbb"), 2, "exactly one")

    everything = run("keys", "revoke", "-c", str(config), "--all")
    assert everything.returncode == 0 and everything.stdout.startswith("revoked 2 bindings")
    assert _listed(config, "--all") == []

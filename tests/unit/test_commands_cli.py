"""``bastion check-command`` as an operator runs it: real process, demo rules, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest
import tomli_w

from bastion.demo.command_rules import demo_command_sections

KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("check-command") / "bastion.toml"
    document = {
        "vault": {"key_file": "vault.key"},
        "targets": [{"name": "web01", "host": "127.0.0.1", "host_key": KEY}],
        "users": [{"name": "demo", "keys": [KEY], "groups": ["ops"]}],
        **demo_command_sections(),
    }
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    return path


def _run(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", "check-command", "--config", str(config),
         "--target", "web01", "--login", "root", "--user", "demo", *args],
        capture_output=True, text=True, timeout=120, input=stdin)


def test_denied_line_shows_commands_rule_and_verdict(config_file: Path) -> None:
    result = _run(config_file, "sudo -u root env X=1 nice rm -fr /")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "4. rm -fr /" in out
    assert "options -f -r" in out
    assert "via sudo > env > nice" in out
    assert "warn-sudo (warn) on sudo -u root env X=1 nice rm -fr /" in out
    assert "no-recursive-force-rm (deny) on rm -fr /" in out
    assert out.rstrip().splitlines()[-1] == (
        "verdict: deny (rule no-recursive-force-rm): denied by rule no-recursive-force-rm: "
        "rm with both -r and -f is not allowed through this bastion")
    assert "groups ops" in out  # the [[users]] entry's groups are used


@pytest.mark.parametrize(("line", "status", "verdict"), [
    ("ls -la", 0, "allow"),
    ("sudo ls", 0, "warn"),
    ("systemctl restart nginx", 3, "approve"),
    ("$(echo rm) -rf /", 3, "approve"),
    ("reboot", 1, "deny"),
    ("echo 'unterminated", 1, "deny"),
])
def test_exit_status_follows_verdict(config_file: Path, line: str, status: int,
                                     verdict: str) -> None:
    result = _run(config_file, "--json", line)
    assert result.returncode == status, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == verdict


def test_json_report(config_file: Path) -> None:
    result = _run(config_file, "--json", "--group", "dba", "bash -c 'reboot'")
    report = json.loads(result.stdout)
    assert report["rule"] == "no-power-off"
    assert report["scope"] == {"target": "web01", "login": "root", "user": "demo",
                               "groups": ["dba", "ops"]}
    assert [c["name"] for c in report["commands"]] == ["bash", "reboot"]
    assert report["commands"][1]["via"] == ["bash -c"]
    assert report["matched"][0]["action"] == "deny"


def test_exec_mode_flags_interpreter_on_stdin(config_file: Path) -> None:
    result = _run(config_file, "--exec", "--json", "bash -s")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["unresolved"] and report["exec"]
    assert "SSH channel" in report["commands"][0]["reason"]
    assert _run(config_file, "bash -s").returncode == 0  # typed in a shell: line by line


def test_line_from_stdin(config_file: Path) -> None:
    result = _run(config_file, "-", stdin="ls\nrm -r \\\n -f /\n")
    assert result.returncode == 1
    assert "rm -r -f /" in result.stdout


def test_control_characters_are_escaped(config_file: Path) -> None:
    result = _run(config_file, "echo $'\\e[31mred'")
    assert result.returncode == 0
    assert "\x1b" not in result.stdout
    assert "\\x1b[31mred" in result.stdout


def test_bad_config_is_one_line_and_status_2(tmp_path: Path, config_file: Path) -> None:
    broken = tmp_path / "bastion.toml"
    broken.write_text(config_file.read_text().replace('action = "warn"', 'action = "log"'),
                      encoding="utf-8")
    result = _run(broken, "ls")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"bastion: {broken.resolve()}:")
    assert "commands[5].action" in lines[0] and lines[0].endswith("(rule warn-sudo)")


def test_missing_scope_is_a_usage_error(config_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "check-command", "--config", str(config_file), "ls"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--target" in result.stderr

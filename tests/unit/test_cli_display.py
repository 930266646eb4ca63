"""Attacker-chosen text (IdP claims, names, bucket keys) reaches the operator's terminal only
escaped: no escape sequence, no control character, no forged line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncssh
from hypothesis import given
from hypothesis import strategies as st

from bastion.cli.display import printable
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import Identity
from bastion.state.db import StateDB

HOSTILE = [
    "Eve\x1b]52;c;cm0gLXJmIH4K\x07",  # OSC 52: write the operator's clipboard
    "Eve\nSHA256:forged  local|root  root  groups=admins",  # a forged row
    "Eve\r\x1b[2K\x1b[1Aadmin",  # erase the line, move up
    "Eve\u202egnp.exe",  # right-to-left override
    "Eve\x9b31m",  # 8-bit CSI
    "Eve\x00\x7f\u2028",
]


def _is_safe(text: str) -> bool:
    return text.isprintable()


def test_printable_escapes_every_hostile_string_visibly() -> None:
    for text in HOSTILE:
        shown = printable(text)
        assert _is_safe(shown), repr(shown)
        assert shown.startswith("Eve")
    assert printable("Eve\nx") == "Eve\\nx"
    assert printable("a\x1bb") == "a\\x1bb"
    assert printable("ünïcödé ok") == "ünïcödé ok"  # printable text is left alone


@given(st.text())
def test_printable_output_never_holds_a_control_character(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


def test_keys_list_shows_a_hostile_idp_name_on_one_escaped_line(tmp_path: Path) -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    state = tmp_path / "state"
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[paths]
state_dir = "{state}"
spool_dir = "{tmp_path / 'spool'}"

[vault]
key_file = "vault.key"

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{host_key}"
""", encoding="utf-8")
    bindings = KeyBindings(StateDB.in_state_dir(state))
    for number, name in enumerate(HOSTILE):
        bindings.bind(f"SHA256:key{number}", "ssh-ed25519 AAAA", Identity(
            "https://idp.example", f"sub{number}\x1b[31m", name, groups=("ops\nx",)),
            ttl=3600, client="ssh\x07")
    result = subprocess.run([sys.executable, "-m", "bastion", "keys", "list", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(HOSTILE)  # no forged row
    for line in lines:
        assert line.isprintable(), repr(line)
        assert line.startswith("SHA256:key")
    assert "Eve\\nSHA256:forged" in result.stdout


def test_an_error_naming_a_hostile_file_name_is_one_escaped_line(tmp_path: Path) -> None:
    name = tmp_path / "x\nbastion: all good\x1b[2K.toml"
    result = subprocess.run([sys.executable, "-m", "bastion", "check-config", str(name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line.startswith("bastion: ") and line.isprintable(), repr(line)
    assert "x\\nbastion: all good\\x1b[2K.toml" in line

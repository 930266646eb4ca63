"""The shipped example config, its reference and the systemd unit stay true to the loader.

The loader reads every key it knows through ``Table`` (with a default when absent), so watching
those reads while it loads the example gives the full list of keys this version accepts. Each
must appear in the example (set, or commented out with its default) and in the configuration
reference, so a key added to ``bastion/config`` without documentation fails here.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.config import check_files, load_config
from bastion.config.reader import Table

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "bastion.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"
UNIT = ROOT / "systemd" / "bastion.service"

_HEADER = re.compile(r"^\s*#?\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?\s*$")
_KEY = re.compile(r"^\s*#?\s*([A-Za-z0-9_]+)\s*=")


def known_keys(monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """(section, key) for every key the loader reads or asks about while loading the example."""
    seen: set[tuple[str, str]] = set()
    original_get, original_has = Table._get, Table.has

    def section(table: Table) -> str:
        return ".".join(str(p) for p in table.path if isinstance(p, str))

    def get(self: Table, key: str, default: Any) -> Any:
        seen.add((section(self), key))
        return original_get(self, key, default)

    def has(self: Table, key: str) -> bool:
        seen.add((section(self), key))
        return original_has(self, key)

    monkeypatch.setattr(Table, "_get", get)
    monkeypatch.setattr(Table, "has", has)
    load_config(EXAMPLE)
    monkeypatch.undo()
    return seen


def example_blocks() -> dict[str, set[str]]:
    """Keys written in each section of the example, set or commented out."""
    blocks: dict[str, set[str]] = {"": set()}
    current = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := _HEADER.match(line):
            current = m.group(1)
            blocks.setdefault(current, set())
            parent, _, name = current.rpartition(".")
            blocks.setdefault(parent, set()).add(name)  # a section is a key of its parent
        elif m := _KEY.match(line):
            blocks[current].add(m.group(1))
    return blocks


def reference_sections() -> Iterator[tuple[str, str]]:
    """(heading, text) of each ``###`` part of the configuration reference."""
    text = REFERENCE.read_text(encoding="utf-8")
    for part in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        yield heading, body


def test_example_loads_and_names_only_existing_files() -> None:
    config = load_config(EXAMPLE)  # unknown keys, wrong types and bad keys would raise here
    assert check_files(config) == []
    assert [t.name for t in config.targets] == ["web01", "db01"]
    assert config.vault.key_credential == "vault-key"
    assert config.identity.enabled
    assert config.evidence is not None and config.storage is not None
    assert config.server.login_timeout == 30


def test_example_shows_every_key_the_loader_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = example_blocks()
    missing = sorted(f"{s}.{k}".lstrip(".") for s, k in known_keys(monkeypatch)
                     if k not in blocks.get(s, set()))
    assert not missing, f"config/bastion.example.toml does not show: {', '.join(missing)}"


def test_reference_documents_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    sections = list(reference_sections())
    missing = []
    for section, key in sorted(known_keys(monkeypatch)):
        if not section:
            continue  # top-level keys are the sections themselves
        bodies = [body for heading, body in sections
                  if re.search(rf"\[\[?{re.escape(section)}\]\]?", heading)]
        if not any(f"`{key}`" in body for body in bodies):
            missing.append(f"{section}.{key}")
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_systemd_unit_matches_the_example() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None,
                                     comment_prefixes=("#",), empty_lines_in_values=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    config = load_config(EXAMPLE)

    assert service["ExecStart"] == \
        "/usr/local/bin/bastion serve --config /etc/bastion/bastion.toml"
    assert service["User"] == "bastion"
    assert service["LoadCredential"].split(":", 1)[0] == config.vault.key_credential
    writable = {Path(p) for p in service["ReadWritePaths"].split()}
    needed = [config.paths.state_dir, config.paths.spool_dir]
    if config.paths.audit_log is not None:
        needed.append(config.paths.audit_log.parent)
    for path in needed:
        assert any(path.is_relative_to(w) for w in writable), f"{path} is not writable"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    if config.server.port >= 1024:
        assert service["CapabilityBoundingSet"] == ""

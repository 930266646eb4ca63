"""deptry and import-linter, as scripts/test runs them, fail on the mistakes they exist to catch.

Each test copies the real package and pyproject.toml into a temporary folder, makes one mistake
there, and runs the real tool on the copy: the check must fail and name the mistake.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _tool(name: str) -> str:
    # The tools installed beside this interpreter (the project's .venv), else on PATH.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found is not None, f"{name} is not installed (scripts/setup installs the test extra)"
    return found


def _copy_project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "bastion", copy / "bastion",
                    ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The copy, not the installed checkout, is the package the tools analyse.
    env = {**os.environ, "PYTHONPATH": str(cwd), "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
                          check=False, stdin=subprocess.DEVNULL)


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """Everything the tool printed, colours removed and whitespace runs made one space."""
    return " ".join(_COLOUR.sub("", result.stdout + result.stderr).split())


def test_deptry_fails_when_an_imported_package_is_not_declared(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    passing = _run([_tool("deptry"), "bastion"], project)
    assert passing.returncode == 0, _said(passing)
    # The mistake this check was added for: uvloop imported but not declared.
    pyproject = project / "pyproject.toml"
    lines = pyproject.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith('"uvloop')]
    assert len(kept) == len(lines) - 1
    pyproject.write_text("".join(kept), encoding="utf-8")
    result = _run([_tool("deptry"), "bastion"], project)
    assert result.returncode != 0
    out = _said(result)
    assert "'uvloop' imported but" in out, out
    assert "bastion/server/workers.py" in out


def test_deptry_fails_when_a_declared_dependency_is_unused(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(text.replace('dependencies = [\n', 'dependencies = [\n    "idna",\n', 1),
                         encoding="utf-8")
    result = _run([_tool("deptry"), "bastion"], project)
    assert result.returncode != 0
    out = _said(result)
    assert "DEP002 'idna' defined as a dependency but not used" in out, out


def test_lint_imports_fails_on_an_upward_import(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    passing = _run([_tool("lint-imports"), "--no-cache"], project)
    assert passing.returncode == 0, _said(passing)
    model = project / "bastion" / "config" / "model.py"
    model.write_text(model.read_text(encoding="utf-8") + "\nfrom bastion.relay import menu\n",
                     encoding="utf-8")
    result = _run([_tool("lint-imports"), "--no-cache"], project)
    assert result.returncode != 0
    out = _said(result)
    assert "bastion's packages import downward only BROKEN" in out, out
    assert "bastion.config.model -> bastion.relay.menu" in out, out


def test_lint_imports_fails_on_an_import_cycle_between_modules(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    connection = project / "bastion" / "server" / "connection.py"
    connection.write_text(connection.read_text(encoding="utf-8")
                          + "\nfrom bastion.server import app\n", encoding="utf-8")
    result = _run([_tool("lint-imports"), "--no-cache"], project)
    assert result.returncode != 0
    out = _said(result)
    assert "no import cycles between sibling modules or packages BROKEN" in out, out
    assert "No cycles are allowed in bastion.server" in out, out

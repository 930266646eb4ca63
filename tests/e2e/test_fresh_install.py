"""The built wheel, installed into an empty venv with only its declared dependencies, works.

A package that bastion imports but pyproject.toml does not declare is missing there, so the
commands below fail: the check that the developer's own environment cannot give.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "bastion.example.toml"
# Every module of the package, imported: an undeclared import anywhere fails.
IMPORT_ALL = """
import importlib, pkgutil, bastion
names = [m.name for m in pkgutil.walk_packages(bastion.__path__, "bastion.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names), "modules")
"""


def _clean_env() -> dict[str, str]:
    # Nothing from the developer's environment may make a module importable.
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                            timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    said = f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{argv} failed:\n{said}"
    return result


def test_wheel_in_an_empty_venv_runs_the_commands(tmp_path: Path) -> None:
    # Build the wheel as pip does for any user (isolated build, setuptools from PyPI's cache).
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          "-w", str(wheels), str(ROOT)], cwd=tmp_path)
    (wheel,) = wheels.glob("bastion-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The wheel and what its metadata declares, nothing else (not the test extra).
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
         cwd=tmp_path)
    installed = _run([str(python), "-m", "pip", "list", "--format=freeze",
                      "--disable-pip-version-check"], cwd=tmp_path).stdout.lower()
    assert "pytest" not in installed and "deptry" not in installed

    # Run outside the checkout, so that only the installed copy can answer.
    bastion = str(venv / "bin" / "bastion")
    help_text = _run([bastion, "--help"], cwd=tmp_path).stdout
    for command in ("serve", "check-config", "keygen", "vault", "upload", "verify", "demo"):
        assert command in help_text
    # check-config runs serve's start-up checks: the example with its paths moved here.
    site = tmp_path / "site"
    (site / "etc").mkdir(parents=True)
    _run([bastion, "keygen", "signing", "--out", str(site / "etc" / "signing.key")], cwd=tmp_path)
    _run([bastion, "keygen", "vault", "--out", str(site / "etc" / "vault.key")], cwd=tmp_path)
    example = site / "bastion.toml"
    example.write_text(EXAMPLE.read_text(encoding="utf-8")
                       .replace("/var/lib/bastion", str(site / "var"))
                       .replace("/etc/bastion", str(site / "etc"))
                       .replace('key_credential = "vault-key"',
                                f'key_file = "{site / "etc" / "vault.key"}"'), encoding="utf-8")
    checked = _run([bastion, "check-config", str(example)], cwd=tmp_path)
    assert checked.stdout.startswith(f"{example}: OK")
    _run([str(python), "-c", "import bastion.cli.serve"], cwd=tmp_path)
    where = _run([str(python), "-c", "import bastion; print(bastion.__file__)"], cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv))
    assert "modules" in _run([str(python), "-c", IMPORT_ALL], cwd=tmp_path).stdout
    # serve runs on uvloop, a declared dependency on this platform.
    _run([str(python), "-c", "import uvloop"], cwd=tmp_path)

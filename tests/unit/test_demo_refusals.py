"""``bastion demo`` refuses clearly when it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import _register, cli
from bastion.demo import sshd


@pytest.fixture
def runner() -> CliRunner:
    _register()  # what main() does before running the group
    return CliRunner()


def test_missing_sshd_is_one_clear_line(runner: CliRunner, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshd, "SSHD_CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(cli, ["demo", "--port", "0", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "bastion: OpenSSH server not found: apt-get install openssh-server")


def test_non_empty_workdir_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    result = runner.invoke(cli, ["demo", "--port", "0", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not empty" in result.output

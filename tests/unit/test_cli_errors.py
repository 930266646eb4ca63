"""The CLI's error rule for bugs: one line and exit status 70, a traceback with BASTION_DEBUG."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from bastion.cli.main import BastionGroup
from bastion.errors import EXIT_INTERNAL, VaultError


@click.group(cls=BastionGroup)
def group() -> None:
    """A group like `bastion`'s."""


@group.command("bug")
def bug() -> None:
    raise KeyError("boom")


@group.command("refused")
def refused() -> None:
    raise VaultError("wrong vault key")


def test_internal_error_is_one_line_and_70(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_DEBUG", raising=False)
    result = CliRunner().invoke(group, ["bug"])
    assert result.exit_code == EXIT_INTERNAL == 70
    assert result.output == ("bastion: internal error: KeyError: 'boom' "
                             "(set BASTION_DEBUG=1 for a traceback)\n")


def test_bastion_debug_lets_the_traceback_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_DEBUG", "1")
    result = CliRunner().invoke(group, ["bug"])
    assert isinstance(result.exception, KeyError)  # not caught: python prints the traceback
    assert "internal error" not in result.output


def test_refusal_is_one_line_with_its_code() -> None:
    result = CliRunner().invoke(group, ["refused"])
    assert result.exit_code == 1 and result.output == "bastion: wrong vault key\n"

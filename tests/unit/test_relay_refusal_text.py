"""A refusal reason quoting outside text (a target's disconnect message, a typed name) reaches
the user's terminal without control characters."""

from __future__ import annotations

from typing import Any

from bastion.relay.channels import UserChannel


class _Chan:
    def __init__(self) -> None:
        self.stderr = b""
        self.status: int | None = None

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data

    def exit(self, status: int) -> None:
        self.status = status


def test_a_hostile_reason_is_shown_on_one_line_without_escapes() -> None:
    channel = UserChannel.__new__(UserChannel)
    channel.chan = _Chan()  # type: ignore[assignment]
    channel._term = None
    channel.refuse("target said: \x1b]52;c;cm0gLXJmIH4K\x07 bye\nbastion: all fine" + "x" * 1000)
    chan: Any = channel.chan
    text = chan.stderr.decode()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\x1b" not in text and "\x07" not in text
    assert text.startswith("bastion: target said: ?]52;c;")
    assert len(text) < 450

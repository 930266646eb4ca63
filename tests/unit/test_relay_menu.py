"""The target menu takes only ASCII digits; anything else a client sends is ignored."""

from __future__ import annotations

import asyncio

from bastion.config.model import Target
from bastion.relay.menu import TargetMenu


class FakeChan:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


def _menu() -> tuple[TargetMenu, FakeChan]:
    chan = FakeChan()
    targets = [Target(name="web01", host="127.0.0.1"), Target(name="db01", host="127.0.0.1")]
    return TargetMenu(chan, targets), chan  # type: ignore[arg-type]


def test_non_ascii_digits_and_bytes_are_ignored_not_a_crash() -> None:
    async def run() -> None:
        menu, chan = _menu()
        choice = asyncio.ensure_future(menu.choose(None))
        await asyncio.sleep(0)
        # U+00B2 (superscript two) and U+0663 (Arabic-Indic three) are str.isdigit(), and
        # int() of them used to raise out of the channel callback.
        menu.feed("\u00b2".encode("latin-1") + "\u0663".encode() + b"\xff\r")
        assert b"No such entry" in chan.written
        menu.feed(b"2\r")
        request = await asyncio.wait_for(choice, 1)
        assert request is not None and request.target == "db01"

    asyncio.run(run())

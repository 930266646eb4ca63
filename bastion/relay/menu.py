"""The target menu shown when the SSH user name names no target."""

from __future__ import annotations

import asyncio

import asyncssh

from bastion.config.model import Target
from bastion.policy.access import TargetRequest

_MAX_INPUT = 16


def target_list(targets: list[Target]) -> str:
    """The plain list printed for exec requests without a target."""
    if not targets:
        return "no targets are available to you\n"
    return "".join(f"{t.name}\n" for t in targets)


class TargetMenu:
    """A numbered menu on a pty: digits echo, Enter picks, Ctrl-C, Ctrl-D or q leaves."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], targets: list[Target]) -> None:
        self._chan = chan
        self._targets = targets
        self._typed = ""
        self._choice: asyncio.Future[Target | None] = asyncio.get_running_loop().create_future()

    async def choose(self, request: TargetRequest | None) -> TargetRequest | None:
        """Show the menu and wait for a choice; None if the user left."""
        lines = ["Targets you may reach:"]
        lines += [f"  {n:>2}) {t.name}" for n, t in enumerate(self._targets, start=1)]
        lines += ["Choose a number (q to quit): "]
        self._chan.write("\r\n".join(lines).encode())
        target = await self._choice
        if target is None:
            return None
        username = request.username if request else ""
        return TargetRequest(target=target.name, login=None, username=username)

    def feed(self, data: bytes) -> None:
        """Handle keystrokes typed at the menu."""
        for byte in data:
            if self._choice.done():
                return
            char = chr(byte)
            if char in "\x03\x04qQ":
                self._chan.write(b"\r\n")
                self._choice.set_result(None)
            elif char in "\r\n":
                self._pick()
            elif char in "\x7f\x08" and self._typed:
                self._typed = self._typed[:-1]
                self._chan.write(b"\b \b")
            elif "0" <= char <= "9" and len(self._typed) < _MAX_INPUT:  # ASCII only: "²".isdigit()
                self._typed += char
                self._chan.write(char.encode())

    def _pick(self) -> None:
        number = int(self._typed) if self._typed else 0
        self._typed = ""
        if 1 <= number <= len(self._targets):
            self._chan.write(b"\r\n")
            self._choice.set_result(self._targets[number - 1])
        else:
            self._chan.write(b"\r\nNo such entry. Choose a number (q to quit): ")

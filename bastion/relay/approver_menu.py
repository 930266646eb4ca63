"""The approver menu: ``ssh -p 2222 approvals@bastion`` lists held commands and decides them.

The connection's identity is the approver; only configured approvers see requests, nobody sees
their own, approving asks for the approver's TOTP code and denying for a reason (the rules are
ApprovalService's). Without a pty (``ssh approvals@bastion list``) the pending list is printed.
Text from requesters (command lines, names) is shown with control characters escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncssh

from bastion.approvals.service import ApprovalService, Approver
from bastion.approvals.store import ApprovalRequest
from bastion.errors import EXIT_REFUSED, BastionError

APPROVER_USER = "approvals"  # the SSH user name that opens this menu instead of a target
_MAX_LINE = 500


def safe(text: str) -> str:
    """Text typed by other people, shown without terminal control characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def describe(r: ApprovalRequest, now: float) -> str:
    """One request on one line (plus its command on the next)."""
    left = max(0, int(r.expires - now))
    return (f"{r.id}  {safe(r.requester_name)} as {r.login}@{r.target}  "
            f"rule {safe(r.rule or '-')}  expires in {left // 60}m{left % 60:02d}s\r\n"
            f"      {safe(r.command)}")


class ApproverMenu:
    """The menu on a pty: numbered pending requests, approve with TOTP, deny with a reason."""

    def __init__(self, write: Callable[[str], None], service: ApprovalService,
                 approver: Approver, clock: Callable[[], float] = time.time) -> None:
        self._write = write
        self._service = service
        self._approver = approver
        self._clock = clock
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._typed = ""
        self._secret = False  # echo '*' instead of the characters (TOTP code)

    # -- input --------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Keystrokes typed at the menu: a small line editor (Backspace, Ctrl-U, Enter)."""
        for char in data.decode("utf-8", "replace"):
            if char in "\x03\x04":
                self._write("\r\n")
                self._lines.put_nowait(None)
            elif char in "\r\n":
                self._write("\r\n")
                line, self._typed = self._typed, ""
                self._lines.put_nowait(line)
            elif char in "\x7f\x08":
                if self._typed:
                    self._typed = self._typed[:-1]
                    self._write("\b \b")
            elif char == "\x15":
                self._write("\b \b" * len(self._typed))
                self._typed = ""
            elif char.isprintable() and len(self._typed) < _MAX_LINE:
                self._typed += char
                self._write("*" if self._secret else char)

    async def _ask(self, prompt: str, secret: bool = False) -> str | None:
        self._secret = secret
        self._write(prompt)
        try:
            return await self._lines.get()
        finally:
            self._secret = False

    # -- the menu -----------------------------------------------------------------------------
    async def run(self) -> int:
        """Show the menu until the approver quits; the exit status."""
        if not self._service.may_decide(self._approver):
            self._write(f"bastion: {safe(self._approver.name)} is not an approver\r\n")
            return EXIT_REFUSED
        while True:
            pending = self._service.pending_for(self._approver)
            now = self._clock()
            self._write(f"\r\nApproval requests ({safe(self._approver.name)}):\r\n")
            if not pending:
                self._write("  none pending\r\n")
            for number, request in enumerate(pending, start=1):
                self._write(f"  {number:>2}) {describe(request, now)}\r\n")
            answer = await self._ask("Choose a number, Enter to refresh, q to quit: ")
            if answer is None or answer.strip().lower() == "q":
                return 0
            answer = answer.strip()
            if not answer:
                continue
            if not answer.isdigit() or not 1 <= int(answer) <= len(pending):
                self._write("No such entry.\r\n")
                continue
            if not await self._decide(pending[int(answer) - 1]):
                return 0

    async def _decide(self, request: ApprovalRequest) -> bool:
        """Approve or deny one request; False if the approver left."""
        self._write(f"\r\n{describe(request, self._clock())}\r\n")
        action = await self._ask("a) approve  d) deny  b) back: ")
        if action is None:
            return False
        action = action.strip().lower()
        if action not in ("a", "d"):
            return True
        approve = action == "a"
        code = None
        if approve and self._service.config.require_totp:
            code = await self._ask("Your TOTP code: ", secret=True)
            if code is None:
                return False
        reason = await self._ask("Reason" + (" (optional)" if approve else "") + ": ")
        if reason is None:
            return False
        try:
            decided = self._service.decide(request.id, self._approver, approve, reason, code)
        except BastionError as exc:
            self._write(f"bastion: {safe(str(exc))}\r\n")
            return True
        self._write(f"Request {decided.id} {decided.state.value}.\r\n")
        return True


class ApproverSession(asyncssh.SSHServerSession[bytes]):
    """The SSH channel of an ``approvals@bastion`` connection: runs the menu, or lists for exec."""

    def __init__(self, service: ApprovalService, approver: Approver) -> None:
        self._service = service
        self._approver = approver
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._pty = False
        self._command: str | None = None
        self._menu: ApproverMenu | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: object) -> bool:
        self._pty = True
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._menu is not None:
            self._menu.feed(data)

    def eof_received(self) -> bool:
        if self._menu is not None:
            self._menu.feed(b"\x04")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _write(self, text: str) -> None:
        if self._chan is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write(text.encode())

    async def _run(self) -> None:
        assert self._chan is not None
        status = 0
        try:
            if self._pty and self._command is None:
                self._menu = ApproverMenu(self._write, self._service, self._approver)
                status = await self._menu.run()
            elif not self._service.may_decide(self._approver):
                self._chan.write_stderr(f"bastion: {safe(self._approver.name)} is not an "
                                        "approver\n".encode())
                status = EXIT_REFUSED
            else:
                now = time.time()
                for request in self._service.pending_for(self._approver):
                    self._write(describe(request, now).replace("\r\n", "\n") + "\n")
        except BastionError as exc:
            self._write(f"bastion: {safe(str(exc))}\r\n")
            status = EXIT_REFUSED
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.exit(status)

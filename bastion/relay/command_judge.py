"""Acting on a judged command line: note it, refuse it, or wait for an approver.

Shared by the pty stage (command_stage.py), the script stage (command_script.py) and exec
checks. Every line read is noted (marker, session.json, audit) through ``masked_line``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from bastion.approvals.store import ApprovalRequest, ApprovalState
from bastion.errors import BastionError
from bastion.policy.commands import CommandDecision, CommandScope, Verdict
from bastion.relay.pipeline import ChannelInfo, StageContext

if TYPE_CHECKING:
    from bastion.relay.command_stage import CommandCatcher


def masked_line(line: str) -> str:
    """The command line as it may be written to disk (the masking helper plugs in here)."""
    return line


class Approvals(Protocol):
    """What command control needs from bastion.approvals.ApprovalService."""

    def open(self, *, session_id: str, channel: int, requester_key: str, requester_name: str,
             target: str, login: str, command: str, rule: str | None) -> ApprovalRequest: ...

    async def wait(self, request_id: str, cancelled: asyncio.Event) -> ApprovalRequest: ...

    def withdraw(self, request_id: str, reason: str) -> None: ...


def strictest(decisions: Sequence[CommandDecision]) -> CommandDecision:
    """The decision with the strictest verdict (the first of equals)."""
    best = decisions[0]
    for decision in decisions[1:]:
        if decision.verdict.rank > best.verdict.rank:
            best = decision
    return best


def continues_line(line: str) -> bool:
    """Whether the line ends in an unescaped backslash (the shell reads another line)."""
    stripped = line.rstrip("\n")
    return (len(stripped) - len(stripped.rstrip("\\"))) % 2 == 1


def describe(decision: CommandDecision) -> str:
    """The policy's one line for the user (it names the rule, or why the line is unchecked)."""
    return decision.message or f"{decision.verdict.value} ({decision.reason})"


class LineJudge:
    """Notes, refuses or waits for approval of one judged line; shared by the stages."""

    def __init__(self, catcher: CommandCatcher, info: ChannelInfo, ctx: StageContext,
                 scope: CommandScope) -> None:
        self.catcher = catcher
        self.info = info
        self.ctx = ctx
        self.scope = scope
        self.waiting: ApprovalRequest | None = None

    def evaluate(self, texts: Sequence[str]) -> CommandDecision:
        """The strictest decision over the candidate texts of one line."""
        return strictest([self.catcher.policy.evaluate(text, self.scope) for text in texts])

    async def enforce(self, decision: CommandDecision, line: str,
                      cancelled: asyncio.Event) -> bool:
        """Record the verdict and, for approve, wait for it; True if the line may run."""
        ctx, shown = self.ctx, masked_line(line)
        verdict = decision.verdict
        if verdict is Verdict.ALLOW:
            ctx.note_command(shown, "allow", decision.rule)
            return True
        if verdict is Verdict.WARN:
            ctx.note_command(shown, "warn", decision.rule)
            if decision.message:
                ctx.notify_user(decision.message)
            return True
        if verdict is Verdict.DENY:
            ctx.note_command(shown, "deny", decision.rule)
            ctx.notify_user(describe(decision))
            return False
        return await self._approval(decision, shown, cancelled)

    async def _approval(self, decision: CommandDecision, shown: str,
                        cancelled: asyncio.Event) -> bool:
        ctx, approvals = self.ctx, self.catcher.approvals
        ctx.note_command(shown, "approve", decision.rule)
        if approvals is None:
            ctx.note_command(shown, "refused", decision.rule)
            ctx.notify_user(f"command needs approval, and no approvals are configured: "
                            f"{describe(decision)}")
            return False
        info = self.info
        try:
            request = approvals.open(
                session_id=info.session_id, channel=info.channel,
                requester_key=info.identity_key, requester_name=info.user,
                target=info.target.name, login=info.login, command=shown, rule=decision.rule)
            self.waiting = request
            ctx.notify_user(f"{describe(decision)}; waiting for approval (request "
                            f"{request.id}) ... Ctrl-C cancels")
            try:
                outcome = await approvals.wait(request.id, cancelled)
            except asyncio.CancelledError:  # the channel went away: nobody may approve it now
                approvals.withdraw(request.id, "the user's channel closed")
                raise
        except BastionError as exc:  # the state DB failed: the command does not run
            ctx.note_command(shown, "refused", decision.rule)
            ctx.notify_user(f"approval failed: {exc}; the command was not run")
            return False
        finally:
            self.waiting = None
        who = outcome.decided_name or "bastion"
        why = f": {outcome.reason}" if outcome.reason else ""
        if outcome.state is ApprovalState.APPROVED:
            ctx.note_command(shown, "approved", decision.rule)
            ctx.marker(f"approved: request {request.id} by {who}{why}")
            ctx.notify_user(f"approved by {who}{why}")
            return True
        ctx.note_command(shown, "refused", decision.rule)
        ctx.marker(f"refused: request {request.id} {outcome.state.value} by {who}{why}")
        ctx.notify_user(f"request {request.id} {outcome.state.value}"
                        f"{'' if outcome.state is ApprovalState.CANCELLED else ' by ' + who}"
                        f"{why}; the command was not run")
        return False

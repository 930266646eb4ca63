"""``bastion approvals list|approve|deny``: decide held commands from the bastion host.

The CLI acts as a named approver (``--as ISSUER|SUBJECT`` or a config user's name): its groups
come from that identity's current key binding (its last device login) or its config entry, and
approving asks for that identity's TOTP code (``--totp CODE``, or a prompt). Whoever runs this
reads the state database, so only operators of the bastion host can; the TOTP code is what
proves the named approver is at the keyboard.
"""

from __future__ import annotations

import json
import time

import click

from bastion.approvals.service import ApprovalService, Approver
from bastion.approvals.store import ApprovalRequest, ApprovalStore
from bastion.audit import AuditLog
from bastion.cli.options import config_option
from bastion.config import Config, load_config
from bastion.credentials.vaultkey import load_vault_key
from bastion.errors import UsageError
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import LOCAL_ISSUER
from bastion.identity.totp import TotpStore
from bastion.state.backends import open_state


def _service(config: Config, with_totp: bool) -> ApprovalService:
    db = open_state(config)
    totp = TotpStore(db, load_vault_key(config.vault)) if with_totp else None
    audit = AuditLog(config.paths.audit_log, config.server.node_id, stream=None)
    return ApprovalService(ApprovalStore(db), config.approvals, audit, config.server.node_id,
                           totp=totp)


def _approver(config: Config, text: str) -> Approver:
    """The approver named by ``--as``: ISSUER|SUBJECT (from its key binding) or a config user."""
    if not text or not text.isprintable():
        raise UsageError("--as needs ISSUER|SUBJECT or a config user name")
    if "|" not in text or text.startswith(f"{LOCAL_ISSUER}|"):
        name = text.rpartition("|")[2]
        for user in config.users:
            if user.name == name:
                return Approver(f"{LOCAL_ISSUER}|{name}", name, user.groups,
                                rule_names=(name,))
        if "|" not in text:
            raise UsageError(f"no config user {name!r}; give ISSUER|SUBJECT for IdP users")
    db = open_state(config)
    for binding in KeyBindings(db).entries():
        if binding.identity.key == text:
            return Approver.of(binding.identity)
    raise UsageError(f"{text} has no current key binding: sign in through the bastion once, "
                     "so its groups are known")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _safe(text: str) -> str:
    """Text typed by users, shown without its control characters (no terminal escapes)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _line(r: ApprovalRequest) -> str:
    decided = (f"  {r.state.value} by {_safe(r.decided_name or '-')} at {_when(r.decided_at)}"
               f"{': ' + _safe(r.reason) if r.reason else ''}" if r.state.final else "")
    return (f"{r.id}  {_when(r.created)}  {_safe(r.requester_name)}  {r.login}@{r.target}  "
            f"rule={_safe(r.rule or '-')}  expires={_when(r.expires)}{decided}\n"
            f"    {_safe(r.command)}")


@click.group("approvals")
def approvals() -> None:
    """Commands held for approval: list, approve, deny."""


@approvals.command("list")
@config_option
@click.option("--all", "everything", is_flag=True, help="Recent requests in any state.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def approvals_list(config_path: str, everything: bool, as_json: bool) -> None:
    """Pending requests (with --all, the recent ones in any state)."""
    config = load_config(config_path)
    store = _service(config, with_totp=False).store
    rows = store.recent() if everything else store.pending(time.time())
    for r in rows:
        if as_json:
            click.echo(json.dumps({
                "id": r.id, "state": r.state.value, "user": r.requester_name,
                "target": r.target, "login": r.login, "command": r.command, "rule": r.rule,
                "created": _when(r.created), "expires": _when(r.expires),
                "decided_by": r.decided_name, "decided_at": _when(r.decided_at),
                "reason": r.reason}))
        else:
            click.echo(_line(r))
    if not rows and not as_json:
        click.echo("no pending approval requests" if not everything else "no requests",
                   err=True)


def _decide(config_path: str, request_id: str, as_who: str, approve: bool,
            reason: str | None, totp_code: str | None) -> None:
    config = load_config(config_path)
    approver = _approver(config, as_who)
    service = _service(config, with_totp=approve and config.approvals.require_totp)
    if approve and config.approvals.require_totp and not totp_code:
        totp_code = click.prompt(f"TOTP code for {approver.name}", hide_input=True,
                                 err=True)
    decided = service.decide(request_id.strip().lower(), approver, approve, reason, totp_code)
    click.echo(f"request {decided.id} {decided.state.value} by {_safe(approver.name)}")


@approvals.command("approve")
@config_option
@click.argument("request_id", metavar="ID")
@click.option("--as", "as_who", required=True, metavar="IDENTITY",
              help="Who approves: ISSUER|SUBJECT or a config user name.")
@click.option("--reason", default=None, help="Why (recorded with the decision).")
@click.option("--totp", "totp_code", default=None, metavar="CODE",
              help="The approver's TOTP code (prompted for if not given).")
def approvals_approve(config_path: str, request_id: str, as_who: str, reason: str | None,
                      totp_code: str | None) -> None:
    """Approve request ID: the held command runs."""
    _decide(config_path, request_id, as_who, True, reason, totp_code)


@approvals.command("deny")
@config_option
@click.argument("request_id", metavar="ID")
@click.option("--as", "as_who", required=True, metavar="IDENTITY",
              help="Who denies: ISSUER|SUBJECT or a config user name.")
@click.option("--reason", required=True, help="Why (shown to the user and recorded).")
def approvals_deny(config_path: str, request_id: str, as_who: str, reason: str) -> None:
    """Deny request ID: the held command is dropped and the user is told why."""
    _decide(config_path, request_id, as_who, False, reason, None)

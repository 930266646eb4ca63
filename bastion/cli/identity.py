"""``bastion keys list|revoke`` and ``bastion totp enroll|reset``: bindings and second factors."""

from __future__ import annotations

import json
import time

import click

from bastion.audit import AuditLog
from bastion.cli.display import printable
from bastion.cli.options import config_option
from bastion.config import Config, load_config
from bastion.credentials.vaultkey import load_vault_key
from bastion.errors import UsageError
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import LOCAL_ISSUER
from bastion.identity.qr import qr_text
from bastion.identity.totp import TotpStore
from bastion.state.backends import open_state


def _audit(config: Config) -> AuditLog:
    # Like the server's: to the file and to stderr (the journal, when run from a unit).
    return AuditLog(config.paths.audit_log, config.server.node_id)


def _identity_key(text: str) -> str:
    """``ISSUER|SUBJECT`` as shown by ``keys list``, or a config user's name."""
    if "|" in text:
        issuer, _, subject = text.rpartition("|")
        if issuer and subject:
            return text
        raise UsageError(f"{text!r} is not ISSUER|SUBJECT")
    if text and text.isprintable() and " " not in text:
        return f"{LOCAL_ISSUER}|{text}"
    raise UsageError(f"{text!r} is not an identity (ISSUER|SUBJECT, or a config user name)")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


@click.group("keys")
def keys() -> None:
    """Public keys bound to people by a device login."""


@keys.command("list")
@config_option
@click.option("--all", "include_expired", is_flag=True, help="Include expired bindings.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def keys_list(config_path: str, include_expired: bool, as_json: bool) -> None:
    """Show key bindings: key, identity, groups, expiry."""
    config = load_config(config_path)
    bindings = KeyBindings(open_state(config))
    rows = bindings.entries(include_expired=include_expired)
    for b in rows:
        if as_json:
            click.echo(json.dumps({
                "key": b.fingerprint, "identity": b.identity.key, "name": b.identity.name,
                "email": b.identity.email, "groups": list(b.identity.groups),
                "client": b.client, "created": _when(b.created), "expires": _when(b.expires),
                "last_used": _when(b.last_used)}))
        else:
            click.echo(f"{printable(b.fingerprint)}  {printable(b.identity.key)}  "
                       f"{printable(b.identity.name)}  "
                       f"groups={printable(','.join(b.identity.groups)) or '-'}  "
                       f"expires={_when(b.expires)}  last_used={_when(b.last_used)}")
    if not rows and not as_json:
        click.echo("no key bindings", err=True)


@keys.command("revoke")
@config_option
@click.argument("fingerprint", required=False)
@click.option("--identity", "identity", metavar="ISSUER|SUBJECT",
              help="Revoke every key bound to this identity.")
@click.option("--all", "everything", is_flag=True, help="Revoke every binding.")
def keys_revoke(config_path: str, fingerprint: str | None, identity: str | None,
                everything: bool) -> None:
    """End a binding (by key fingerprint), an identity's bindings, or all of them."""
    if sum(x is not None and x is not False for x in (fingerprint, identity, everything)) != 1:
        raise UsageError("give exactly one of: FINGERPRINT, --identity ISSUER|SUBJECT, --all")
    config = load_config(config_path)
    bindings = KeyBindings(open_state(config))
    if fingerprint is not None:
        if not fingerprint.startswith("SHA256:"):
            fingerprint = "SHA256:" + fingerprint
        revoked = bindings.revoke(fingerprint=fingerprint)
    elif identity is not None:
        revoked = bindings.revoke(identity_key=_identity_key(identity))
    else:
        revoked = bindings.revoke(everything=True)
    audit = _audit(config)
    for b in revoked:
        audit.emit("binding.revoked", by="cli", **b.audit_fields())
    audit.close()
    if not revoked:
        raise UsageError("no binding matched; `bastion keys list` shows them")
    click.echo(f"revoked {len(revoked)} binding{'s' if len(revoked) != 1 else ''}; "
               "the key needs a new device login from its next connection")


@click.group("totp")
def totp() -> None:
    """TOTP second factors."""


def _store(config: Config) -> TotpStore:
    return TotpStore(open_state(config), load_vault_key(config.vault))


@totp.command("enroll")
@config_option
@click.argument("identity")
@click.option("--replace", is_flag=True, help="Replace an existing secret.")
@click.option("--label", default=None, help="Account name shown in the authenticator app.")
def totp_enroll(config_path: str, identity: str, replace: bool, label: str | None) -> None:
    """Create a TOTP secret for IDENTITY (ISSUER|SUBJECT or a config user name)."""
    config = load_config(config_path)
    key = _identity_key(identity)
    _check_known(config, key)
    uri = _store(config).enroll(key, label or key.rpartition("|")[2], replace=replace)
    audit = _audit(config)
    issuer, _, subject = key.rpartition("|")
    audit.emit("totp.enrolled", by="cli", issuer=issuer, subject=subject, inband=False)
    audit.close()
    click.echo(qr_text(uri.reveal()))
    click.echo(uri.reveal())
    click.echo("Scan the QR code or add the URI above to an authenticator app; it is not "
               "shown again.", err=True)


def _check_known(config: Config, key: str) -> None:
    """Enroll only someone who can log in: a config user, or an identity with a key binding
    (it signed in through the identity provider at least once); never a typo."""
    issuer, _, subject = key.rpartition("|")
    if issuer == LOCAL_ISSUER:
        if any(user.name == subject for user in config.users):
            return
        raise UsageError(f"{subject!r} is not a user in {config.source}; give a config user "
                         "name or ISSUER|SUBJECT as `bastion keys list --all` shows it")
    bindings = KeyBindings(open_state(config))
    if any(b.identity.key == key for b in bindings.entries(include_expired=True)):
        return
    raise UsageError(f"{key!r} has never signed in (no key binding, see `bastion keys list "
                     "--all`); let it sign in once, or turn on [identity] "
                     "totp_inband_enrollment")


@totp.command("reset")
@config_option
@click.argument("identity")
def totp_reset(config_path: str, identity: str) -> None:
    """Remove IDENTITY's TOTP secret (it must enroll again)."""
    config = load_config(config_path)
    key = _identity_key(identity)
    if not _store(config).remove(key):
        raise UsageError(f"{key} has no TOTP secret")
    issuer, _, subject = key.rpartition("|")
    audit = _audit(config)
    audit.emit("totp.reset", by="cli", issuer=issuer, subject=subject)
    audit.close()
    click.echo(f"removed the TOTP secret of {printable(key)}")

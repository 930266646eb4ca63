"""``bastion vault``: store, list, remove target credentials and rotate the vault key.

Secrets come in through a file, stdin or a hidden prompt and go out only into the sealed vault
file: no command here ever prints one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bastion.audit import AuditLog
from bastion.cli.display import printable
from bastion.cli.options import config_option
from bastion.config import Config, load_config
from bastion.credentials.vault import (
    Credential,
    Vault,
    check_names,
    key_id,
    load_vault_key,
    password_credential,
    private_key_credential,
    vault_lock,
)
from bastion.credentials.vaultkey import encode_vault_key, read_vault_key_file
from bastion.errors import ConfigError, UsageError, VaultError
from bastion.fsutil import write_atomic
from bastion.identity.totp import TotpStore
from bastion.secret import Secret
from bastion.state.backends import open_state

_MAX_KEY_FILE_BYTES = 1024 * 1024


@click.group("vault")
def vault() -> None:
    """Store target credentials in the encrypted vault."""


@vault.command("set")
@config_option
@click.argument("target")
@click.argument("login")
@click.option("--key-file", metavar="PATH", type=click.Path(dir_okay=False),
              help="Unencrypted OpenSSH or PEM private key to store.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--password-prompt", is_flag=True, help="Ask for the password (not echoed).")
def vault_set(config_path: str, target: str, login: str, key_file: str | None,
              password_stdin: bool, password_prompt: bool) -> None:
    """Store the credential bastion uses to log in to TARGET as LOGIN."""
    if sum((key_file is not None, password_stdin, password_prompt)) != 1:
        raise UsageError("give exactly one of --key-file, --password-stdin or --password-prompt")
    config = load_config(config_path)
    if config.target(target) is None:
        raise ConfigError(f"{target!r} is not a target in {config.source}")
    check_names(target, login)
    key = load_vault_key(config.vault)  # before asking for a secret: fail early on a bad key
    Vault.open(config.vault.path, key, create=True)
    credential = _read_credential(target, login, key_file, password_stdin)
    with vault_lock(config.vault.path):
        opened = Vault.open(config.vault.path, key, create=True)
        verb = "replaced" if opened.get(target, login) is not None else "stored"
        opened.set(target, login, credential)
        opened.save()
    click.echo(printable(f"{verb} {credential.kind} for {login}@{target} in {config.vault.path}"))


@vault.command("list")
@config_option
def vault_list(config_path: str) -> None:
    """Show which target/login pairs have a credential (never the secrets)."""
    config = load_config(config_path)
    opened = _open(config)
    rows = opened.entries()
    if not rows:
        click.echo(printable(f"no credentials in {config.vault.path}"))
        return
    table = [("TARGET", "LOGIN", "KIND", "")]
    table += [(printable(t), printable(lg), printable(kind),
               "" if config.target(t) else "(target not in config)")
              for t, lg, kind in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                   .rstrip() + ("  " + row[3] if row[3] else ""))


@vault.command("remove")
@config_option
@click.argument("target")
@click.argument("login")
def vault_remove(config_path: str, target: str, login: str) -> None:
    """Delete the credential for TARGET/LOGIN."""
    config = load_config(config_path)
    with vault_lock(config.vault.path):
        opened = _open(config)
        if not opened.remove(target, login):
            raise VaultError(f"no credential for {login}@{target} in {config.vault.path}")
        opened.save()
    click.echo(printable(f"removed credential for {login}@{target} from {config.vault.path}"))


@vault.command("rotate-key")
@config_option
@click.option("--new-key-file", metavar="PATH", required=True, type=click.Path(dir_okay=False),
              help="File with the new key (make one with `bastion keygen vault --out PATH`).")
def vault_rotate_key(config_path: str, new_key_file: str) -> None:
    """Re-encrypt the vault and the TOTP secrets under a new key, then install it (key_file)
    or say exactly where to put it."""
    config = load_config(config_path)
    new_path = Path(new_key_file)
    new_key = read_vault_key_file(new_path, f"new vault key file {new_path}")
    old_key = load_vault_key(config.vault)
    audit = AuditLog(config.paths.audit_log, config.server.node_id)  # before changing anything
    with vault_lock(config.vault.path):
        opened = Vault.open(config.vault.path, old_key)
        old_id, new_id = opened.key_id, key_id(new_key)
        if old_id == new_id:
            raise VaultError(f"{new_path} holds the key the vault is already sealed with "
                             f"(key id {old_id})")
        # One state-database transaction around the vault rewrite: the TOTP secrets and the
        # vault change together, or (on any error) neither does.
        totp = TotpStore(open_state(config), old_key)
        resealed = totp.reseal_all(new_key, before_commit=lambda: opened.rotate(new_key))
        installed = _install_key(config, new_path, new_key)
    audit.emit("vault.rotated", by="cli", old_key_id=old_id, new_key_id=new_id,
               credentials=len(opened.entries()), totp_secrets=resealed)
    audit.close()
    click.echo(f"re-encrypted {config.vault.path} ({len(opened.entries())} credentials) and "
               f"{resealed} TOTP secrets: key id {old_id} -> {new_id}")
    if installed is not None:
        click.echo(f"installed the new key in {installed} (mode 0600); the old key is gone and "
                   "no longer needed (it opens only backups taken before now)")
        click.echo("a running bastion re-reads that file at its next login or session and goes "
                   "on; no restart is needed")
        return
    click.echo("the old key no longer opens the vault; a running bastion refuses new sessions "
               "(audit event vault.refused) until it gets the new key: now "
               + _where_to_put(config, new_path))
    click.echo("then restart bastion (sessions in progress end); `bastion vault list` checks "
               "the configured key")


def _install_key(config: Config, new_path: Path, new_key: Secret[bytes]) -> Path | None:
    """Put the new key where the configuration reads it, if that is a file; its path."""
    key_file = config.vault.key_file
    if key_file is None:
        return None
    if new_path.resolve() == key_file.resolve():
        return key_file
    try:
        write_atomic(key_file, (encode_vault_key(new_key).reveal() + "\n").encode("ascii"),
                     0o600)
    except OSError as exc:
        raise VaultError(f"the vault and TOTP secrets are sealed under the new key, but "
                         f"{key_file} could not be replaced ({exc.strerror}): copy {new_path} "
                         f"over {key_file} (mode 0600) now") from None
    return key_file


def _open(config: Config) -> Vault:
    return Vault.open(config.vault.path, load_vault_key(config.vault))


def _read_credential(target: str, login: str, key_file: str | None,
                     password_stdin: bool) -> Credential:
    if key_file is not None:
        try:
            with open(key_file, "rb") as fh:
                data = fh.read(_MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise VaultError(f"cannot read key file {key_file}: {exc.strerror}") from None
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise VaultError(f"{key_file} is too large to be a private key")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise VaultError(f"{key_file} is not an OpenSSH or PEM private key") from None
        return private_key_credential(text, key_file)
    if password_stdin:
        password = sys.stdin.read()
        # One trailing line break is the end of the line, not part of the password.
        password = password.removesuffix("\n").removesuffix("\r")
        return password_credential(password)
    password = click.prompt(f"password for {login}@{target}", hide_input=True,
                            confirmation_prompt=True, err=True)
    return password_credential(str(password))


def _where_to_put(config: Config, new_path: Path) -> str:
    cfg = config.vault
    if cfg.key_file is not None:
        return (f"copy {new_path} over {cfg.key_file} (keep it mode 0600) or set "
                f"vault.key_file = \"{new_path.resolve()}\" in {config.source}")
    if cfg.key_env is not None:
        return (f"set environment variable {cfg.key_env} to the content of {new_path} "
                "where bastion runs (e.g. in its systemd EnvironmentFile)")
    name = cfg.key_credential
    return (f"replace systemd credential {name} with {new_path}: "
            f"LoadCredential={name}:{new_path}, or `systemd-creds encrypt --name={name} "
            f"{new_path} /etc/credstore.encrypted/{name}` for LoadCredentialEncrypted={name}")

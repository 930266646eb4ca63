"""``bastion upload``, ``bastion verify`` and ``bastion keygen signing``: the evidence commands."""

from __future__ import annotations

import json
import os
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import click

from bastion.audit import AuditLog
from bastion.cli.display import printable
from bastion.cli.options import config_option
from bastion.config.load import load_config, parse_evidence, parse_storage
from bastion.config.model import Config, EvidenceConfig, StorageConfig
from bastion.config.reader import Source as ConfigSource
from bastion.config.reader import Table
from bastion.errors import (
    BastionError,
    ConfigError,
    StorageError,
    UsageError,
    VerificationFailed,
)
from bastion.evidence.signing import (
    Signer,
    generate_signing_key,
    key_id_of,
    load_public_key,
    public_pem,
)
from bastion.evidence.sources import LocalSource, Source
from bastion.evidence.verify import TrustedKey, verify_source
from bastion.state.backends import open_state
from bastion.state.sessions import SessionRegistry
from bastion.storage.client import make_client, parse_s3_uri, storage_error
from bastion.storage.objects import ObjectStore
from bastion.storage.reader import S3Source
from bastion.storage.upload import EXIT_OK, Summary, Uploader, UploadLock, UploadSettings


@click.command("signing")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (mode 0600; never overwritten; .pub beside it).")
def keygen_signing(out: str) -> None:
    """Write a new Ed25519 manifest-signing key and print its public key."""
    public = generate_signing_key(Path(out))
    click.echo(public_pem(public), nl=False)
    click.echo(f"key id {key_id_of(public)}; public key written to {out}.pub", err=True)


# -- upload ---------------------------------------------------------------------------------------

def _print_summary(summary: Summary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_json(), sort_keys=True))
        return
    where = f"s3://{summary.bucket}/{summary.prefix}".rstrip("/")
    click.echo(printable(f"{summary.status}: {len(summary.uploaded)} sessions uploaded "
               f"({summary.objects_uploaded} objects, {summary.bytes_uploaded} bytes) to {where}; "
               f"{len(summary.already_in_store)} already there, {len(summary.removed)} removed "
               f"locally, {len(summary.kept)} kept; Object Lock: {summary.object_lock}"))
    for failure in summary.failed:
        click.echo(printable(f"FAIL {failure['session']}: {failure['error']}"), err=True)
    for item in summary.unsealed:
        click.echo(printable(f"UNSEALED {item['session']}: {item['error']}"), err=True)
    for item in summary.stuck:
        click.echo(printable(f"STUCK {item['session']}: {item['error']}"), err=True)


@click.command("upload")
@config_option
@click.option("--wait/--no-wait", default=False,
              help="If another upload runs, wait for it (default: exit at once, status 0).")
@click.option("--json/--no-json", "as_json", default=None,
              help="JSON summary on stdout (default when stdout is not a terminal).")
def upload(config_path: str, wait: bool, as_json: bool | None) -> None:
    """Upload sealed sessions to S3, verify them there, then remove them locally."""
    config = load_config(config_path)
    if config.storage is None:
        raise ConfigError(f"{config.source}: no [storage] section: nowhere to upload to")
    storage = config.storage
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if config.evidence is None or config.evidence.signing_key is None:
        # Nothing is ever sealed, so there is nothing to upload: not a failure of this run
        # (the timer would otherwise fail every few minutes).
        note = "nothing sealed to upload: [evidence] signing_key is not set"
        click.echo(json.dumps({"status": "ok", "note": note, "uploaded": []}) if as_json
                   else note)
        sys.exit(EXIT_OK)
    lock = UploadLock(config.paths.state_dir)
    if not lock.acquire(wait):
        busy = Summary(bucket=storage.bucket, prefix=storage.prefix, status="busy")
        if as_json:
            click.echo(json.dumps(busy.as_json(), sort_keys=True))
        else:
            click.echo("busy: another bastion upload is running; this one exits")
        sys.exit(EXIT_OK)
    try:
        settings = UploadSettings(
            spool_dir=config.paths.spool_dir, state_dir=config.paths.state_dir,
            bucket=storage.bucket, prefix=storage.prefix,
            object_lock_mode=storage.object_lock_mode, retention_days=storage.retention_days,
            concurrency=storage.concurrency, multipart_threshold=storage.multipart_threshold,
            keep_days=config.evidence.keep_days if config.evidence else 0,
            trusted_keys=_upload_keys(config.evidence, config.source),
            running=_running_here(config))
        client = make_client(storage.endpoint_url, storage.region, storage.max_attempts)
        uploader = Uploader(settings, ObjectStore(client, storage.bucket))
        summary = _run_with_progress(uploader, show=sys.stderr.isatty() and not as_json)
    finally:
        lock.release()
    audit = AuditLog(config.paths.audit_log, config.server.node_id)  # file and stderr
    audit.emit("upload.run", status=summary.status, bucket=summary.bucket,
               prefix=summary.prefix, uploaded=summary.uploaded, removed=summary.removed,
               failed=summary.failed, unsealed=[u["session"] for u in summary.unsealed],
               stuck=[u["session"] for u in summary.stuck],
               objects=summary.objects_uploaded, bytes=summary.bytes_uploaded)
    audit.close()
    _print_summary(summary, as_json)
    sys.exit(summary.exit_code())


def _running_here(config: Config) -> frozenset[str] | None:
    """The sessions this node's server says it records (None if the registry is unreadable:
    then stuck sessions are not judged)."""
    try:
        db = open_state(config)
        try:
            return frozenset(r.session_id for r in SessionRegistry(db).running()
                             if r.node == config.server.node_id)
        finally:
            db.close()
    except BastionError:
        return None


def _upload_keys(evidence: EvidenceConfig | None, source: object) -> tuple[TrustedKey, ...]:
    """The keys a manifest must verify with before it goes up: ``public_keys``, else the
    public half of this bastion's ``signing_key``; none is a config error (fail closed)."""
    if evidence is not None and evidence.public_keys:
        return tuple(TrustedKey.of(load_public_key(p)) for p in evidence.public_keys)
    if evidence is not None and evidence.signing_key is not None:
        return (TrustedKey.of(Signer.from_file(evidence.signing_key).public),)
    raise ConfigError(f"{source}: [evidence] has neither public_keys nor signing_key: upload "
                      "cannot check manifests before they go into the bucket")


def _run_with_progress(uploader: Uploader, show: bool) -> Summary:
    if not show:
        return uploader.run()
    total = uploader.pending_bytes(uploader.pending())
    guard = threading.Lock()
    with click.progressbar(length=max(total, 1), label="uploading", file=sys.stderr) as bar:
        def advance(count: int) -> None:
            with guard:
                bar.update(count)
        uploader.progress = advance
        return uploader.run()


# -- verify ---------------------------------------------------------------------------------------

def _evidence_settings(path: Path) -> tuple[EvidenceConfig | None, StorageConfig | None]:
    """Only the [evidence] and [storage] sections of a config (a verifier's config may hold
    nothing else)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    root = Table(data, (), ConfigSource(path.resolve(), text))
    evidence = parse_evidence(root.table("evidence")) if root.has("evidence") else None
    storage = parse_storage(root.table("storage")) if root.has("storage") else None
    return evidence, storage


@click.command("verify")
@click.argument("target", metavar="PATH|s3://BUCKET/PREFIX")
@click.option("--config", "-c", "config_path", metavar="FILE", default=None,
              help="Config with [evidence] public_keys (and [storage] endpoint_url).")
@click.option("--public-key", "public_keys", metavar="FILE", multiple=True,
              help="A trusted Ed25519 public key (PEM); repeatable. Overrides the config's.")
@click.option("--endpoint-url", default=None, metavar="URL",
              help="S3 endpoint (else the config's, else AWS_ENDPOINT_URL_S3 or AWS).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(target: str, config_path: str | None, public_keys: tuple[str, ...],
           endpoint_url: str | None, as_json: bool) -> None:
    """Verify signatures, recording hashes and the hash chain of PATH or s3://BUCKET/PREFIX."""
    evidence: EvidenceConfig | None = None
    storage: StorageConfig | None = None
    if config_path is None and os.environ.get("BASTION_CONFIG") \
            and Path(os.environ["BASTION_CONFIG"]).is_file():
        config_path = os.environ["BASTION_CONFIG"]  # given explicitly, a missing file is an error
    if config_path and (not public_keys or target.startswith("s3://")):
        evidence, storage = _evidence_settings(Path(config_path))
    key_files = [Path(p) for p in public_keys] or list(evidence.public_keys if evidence else ())
    if not key_files:
        raise UsageError("no trusted public key: give --public-key FILE or a --config whose "
                         "[evidence] section lists public_keys")
    keys = [TrustedKey.of(load_public_key(p)) for p in key_files]
    source: Source
    if target.startswith("s3://"):
        bucket, prefix = parse_s3_uri(target)
        client = make_client(endpoint_url or (storage.endpoint_url if storage else None),
                             storage.region if storage else None,
                             storage.max_attempts if storage else 3)
        source = S3Source(client, bucket, prefix)
    else:
        source = LocalSource(Path(target))
    try:
        report = verify_source(source, keys)
    except (VerificationFailed, StorageError):
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise storage_error(exc, target) from None
        raise
    if as_json:
        # escaped: unsigned manifest fields may hold C1 controls or bidi overrides
        click.echo(json.dumps(report.as_json(), sort_keys=True))
    else:
        for line in report.lines():
            click.echo(printable(line))
    sys.exit(0 if report.ok else VerificationFailed.exit_code)


def register(cli: Any) -> None:
    """Add the evidence commands to the top-level group."""
    cli.add_command(upload)
    cli.add_command(verify)

"""The one place replay calls evidence verification (and reads a session from S3 through it).

Kept to a few small functions so that when verification moves (to ``bastion.evidence``) only the
imports here change. S3 sessions are read through the verifier's own source, so replay shows the
first-written version of every object: the same bytes that were verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, ReplayError, StorageError
from bastion.evidence.signing import load_public_key
from bastion.evidence.sources import LocalSource, Source
from bastion.evidence.verify import TrustedKey, verify_source
from bastion.storage.client import storage_error
from bastion.storage.reader import S3Source

MANIFEST_FILES = ("manifest.json", "manifest.sig")


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one session: ok, and the lines that say why (not)."""

    ok: bool
    lines: tuple[str, ...]

    @property
    def reason(self) -> str:
        """The first failure (or the summary) in one line."""
        fails = [line.removeprefix("FAIL ") for line in self.lines if line.startswith("FAIL ")]
        return fails[0] if fails else (self.lines[-1] if self.lines else "not verified")


def _keys(public_keys: Sequence[Path]) -> list[TrustedKey]:
    return [TrustedKey.of(load_public_key(p)) for p in public_keys]


def _run(source: Source, public_keys: Sequence[Path]) -> Verdict:
    if not public_keys:
        return Verdict(False, ("FAIL no trusted public key: give --public-key FILE or a config "
                               "whose [evidence] section lists public_keys",))
    try:
        report = verify_source(source, _keys(public_keys))
    except StorageError:
        raise
    except BastionError as exc:
        return Verdict(False, (f"FAIL {exc}",))
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise storage_error(exc, source.description) from None
        raise
    return Verdict(report.ok, tuple(report.lines()))


def verify_folder(folder: Path, public_keys: Sequence[Path]) -> Verdict:
    """Verify one session folder on disk (manifest signature, recording hashes)."""
    return _run(LocalSource(folder), public_keys)


def verify_s3(client: Any, bucket: str, prefix: str, public_keys: Sequence[Path]) -> Verdict:
    """Verify one session folder in S3 (also: nothing overwritten or deleted after upload)."""
    return _run(S3Source(client, bucket, prefix), public_keys)


def _component(name: str, where: str) -> str:
    """``name`` if it is one plain path component; a key is the store's to choose, and a name
    like ".." or "a/b" would put a file outside the private download folder."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ReplayError(f"{where}: refusing the stored name {name[:80]!r} (not a plain "
                          "file or folder name)")
    return name


def download_s3(client: Any, bucket: str, prefix: str, dest: Path) -> Path:
    """Copy one S3 session folder (first-written versions, recordings unpacked) into ``dest``;
    return the local folder."""
    source = S3Source(client, bucket, prefix)
    try:
        sessions = list(source.sessions())
        if len(sessions) != 1:
            raise ReplayError(f"{source.description}: expected one session, found "
                              f"{len(sessions)}")
        evidence = sessions[0]
        folder = dest / _component(evidence.folder, source.description)
        folder.mkdir()
        for name, raw in zip(MANIFEST_FILES, (evidence.manifest_raw, evidence.signature_raw),
                             strict=True):
            if raw is not None:
                (folder / name).write_bytes(raw)
        for name in sorted(evidence.stored_names):
            # "x" never writes through anything already there (nothing should be).
            with (folder / _component(name, source.description)).open("xb") as fh:
                for chunk in evidence.open_file(name):
                    fh.write(chunk)
    except (BastionError, OSError) as exc:
        if isinstance(exc, BastionError):
            raise
        raise ReplayError(f"cannot download {source.description}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise storage_error(exc, source.description) from None
        raise
    return folder

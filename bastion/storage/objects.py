"""Putting one object into S3 so that it is verified: checksums S3 checks, never an overwrite.

Each object goes up with its SHA-256 (``ChecksumSHA256``; per part and composite for multipart
uploads), which S3 recomputes and refuses on mismatch, and with ``If-None-Match: *`` so that
bastion never replaces an object (in a versioned bucket a replacement would be a second version,
which ``bastion verify`` reports as tampering). After the upload a HEAD with checksum mode
confirms size and checksum; a store that reports no checksum has the object read back and
compared, and with a retention asked for the HEAD must show that Object Lock mode and date. An
object that is already there is read back and compared instead.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import StorageError
from bastion.evidence.manifest import hash_chunks
from bastion.evidence.sources import gunzip
from bastion.storage.client import error_code, storage_error

_CHUNK = 1 << 20
MIN_PART = 5 * 1024 * 1024  # S3's smallest part (all but the last)
CONTENT_SHA_META = "bastion-content-sha256"  # SHA-256 of the uncompressed content

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Prepared:
    """A local file ready to upload: its bytes on disk, its checksums and where it goes."""

    key: str
    path: Path
    size: int
    checksum: str  # what S3 reports as ChecksumSHA256 (composite "...-N" for multipart)
    part_size: int | None  # None: one PUT
    part_checksums: tuple[str, ...]
    content_sha256: str  # of the uncompressed content (equals the file's for plain files)
    compressed: bool


@dataclass(frozen=True)
class Placed:
    """An object that is in S3 and verified."""

    key: str
    version_id: str | None
    uploaded: bool  # False: it was there already and was verified by reading it back
    size: int


@dataclass(frozen=True)
class LockSettings:
    """Object Lock retention to apply to new objects (None: the bucket default applies)."""

    mode: str | None
    days: int

    def until(self) -> dt.datetime:
        """The retain-until date for an object written now."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(days=self.days)

    def put_args(self, until: dt.datetime | None = None) -> dict[str, Any]:
        """The PUT/CreateMultipartUpload arguments for this retention."""
        if not self.mode:
            return {}
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": until or self.until()}

    def confirm(self, head: dict[str, Any], where: str, earliest: dt.datetime) -> None:
        """Raise unless the HEAD shows this mode, retained until ``earliest`` or later: a store
        may take the lock headers and ignore them, and then nothing protects the object."""
        if not self.mode:
            return
        mode = head.get("ObjectLockMode")
        until = head.get("ObjectLockRetainUntilDate")
        if mode != self.mode or not isinstance(until, dt.datetime):
            raise StorageError(f"{where}: the store shows no {self.mode} Object Lock on it "
                               f"(mode {mode or 'none'}); keeping the local copy")
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
        if until < earliest:
            raise StorageError(f"{where}: retained only until {until:%Y-%m-%dT%H:%M:%SZ}, "
                               f"{self.days} days asked; keeping the local copy")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def compress(source: Path, target: Path) -> None:
    """Gzip ``source`` into ``target`` deterministically (no name, mtime 0)."""
    with source.open("rb") as src, target.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        shutil.copyfileobj(src, gz, _CHUNK)


def _s3_checksum(chunks: Iterable[bytes],
                 part_size: int | None) -> tuple[int, str, tuple[str, ...]]:
    """Size, ChecksumSHA256 (composite "...-N" when in parts of ``part_size``) and the part
    checksums of a byte stream, as S3 computes them."""
    size = 0
    whole = hashlib.sha256()
    parts: list[str] = []
    part_digest = hashlib.sha256()
    in_part = 0
    for chunk in chunks:
        size += len(chunk)
        whole.update(chunk)
        view = memoryview(chunk)
        while part_size and view:
            take = min(len(view), part_size - in_part)
            part_digest.update(view[:take])
            in_part += take
            view = view[take:]
            if in_part == part_size:
                parts.append(_b64(part_digest.digest()))
                part_digest, in_part = hashlib.sha256(), 0
    if part_size and in_part:
        parts.append(_b64(part_digest.digest()))
    if part_size:
        composite = hashlib.sha256(b"".join(base64.b64decode(p) for p in parts)).digest()
        return size, f"{_b64(composite)}-{len(parts)}", tuple(parts)
    return size, _b64(whole.digest()), ()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def prepare(key: str, path: Path, content_sha256: str, compressed: bool,
            multipart_threshold: int) -> Prepared:
    """Compute the checksums S3 will be asked to verify for ``path``."""
    size = path.stat().st_size
    part_size = max(multipart_threshold, MIN_PART) if size > multipart_threshold else None
    size, checksum, parts = _s3_checksum(_file_chunks(path), part_size)
    return Prepared(key=key, path=path, size=size, checksum=checksum, part_size=part_size,
                    part_checksums=parts, content_sha256=content_sha256,
                    compressed=compressed)


class ObjectStore:
    """One bucket, accessed through a boto3 client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def object_lock_enabled(self) -> bool:
        """Whether the bucket was created with Object Lock."""
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in ("ObjectLockConfigurationNotFoundError",
                                   "ObjectLockConfigurationNotFound", "NotImplemented"):
                return False
            raise storage_error(exc, f"s3://{self.bucket}: reading Object Lock settings") from None
        return bool(conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD (with its checksum), or None if there is no such key."""
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key,
                                                           ChecksumMode="ENABLED")
            return head
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise storage_error(exc, f"s3://{self.bucket}/{key}: HEAD") from None

    def _read_back(self, item: Prepared) -> None:
        """Compare an object already in S3 with the local content, byte for byte (by hash)."""
        def chunks() -> Iterator[bytes]:
            body = self.client.get_object(Bucket=self.bucket, Key=item.key)["Body"]
            try:
                while chunk := body.read(_CHUNK):
                    yield chunk
            finally:
                body.close()
        try:
            # Inflated a bounded piece at a time, one gzip member only (as verify reads it):
            # an object put there by someone else may be a bomb.
            _, sha = hash_chunks(gunzip(chunks()) if item.compressed else chunks())
        except StorageError:
            raise
        except Exception as exc:
            raise storage_error(exc, f"s3://{self.bucket}/{item.key}: reading back") from None
        if sha != item.content_sha256:
            raise StorageError(f"s3://{self.bucket}/{item.key} already exists with other "
                               "content; not overwriting it (check it: this may be tampering)")

    def _read_stored(self, item: Prepared, version: str | None) -> None:
        """Read the object back (at most one byte more than expected) and compare its S3
        checksum with ours: for a store that computes none, the only proof of what it holds."""
        where = f"s3://{self.bucket}/{item.key}"
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": item.key}
        if version and version != "null":
            args["VersionId"] = version

        def chunks() -> Iterator[bytes]:
            body = self.client.get_object(**args)["Body"]
            try:
                left = item.size + 1
                while left > 0 and (chunk := body.read(min(_CHUNK, left))):
                    left -= len(chunk)
                    yield chunk
            finally:
                body.close()
        try:
            size, checksum, _ = _s3_checksum(chunks(), item.part_size)
        except Exception as exc:
            raise storage_error(exc, f"{where}: reading back") from None
        if (size, checksum) != (item.size, item.checksum):
            raise StorageError(f"{where}: the store reports no SHA-256 checksum and the bytes "
                               "read back differ from those uploaded; keeping the local copy")

    def check(self, item: Prepared, head: dict[str, Any] | None = None) -> dict[str, Any]:
        """Confirm the object S3 holds has our size and SHA-256 checksum; return its HEAD."""
        head = head if head is not None else self.head(item.key)
        where = f"s3://{self.bucket}/{item.key}"
        if head is None:
            raise StorageError(f"{where}: missing after upload")
        if head.get("ContentLength") != item.size:
            raise StorageError(f"{where}: size {head.get('ContentLength')} after upload, "
                               f"expected {item.size}")
        stored = head.get("ChecksumSHA256")
        if stored is not None and stored != item.checksum:
            raise StorageError(f"{where}: SHA-256 checksum {stored} after upload, "
                               f"expected {item.checksum}")
        if stored is None:
            # The content-hash metadata is only what bastion sent: it proves nothing about the
            # bytes kept, so read them.
            self._read_stored(item, head.get("VersionId"))
        return head

    def _confirm_existing_lock(self, lock: LockSettings, head: dict[str, Any], key: str) -> None:
        """An object placed earlier (by an interrupted run) was asked for ``days`` from about
        when it was written; allow an hour for a slow upload and clock skew."""
        written = head.get("LastModified")
        if not isinstance(written, dt.datetime):
            written = dt.datetime.now(dt.UTC) - dt.timedelta(days=lock.days)
        elif written.tzinfo is None:
            written = written.replace(tzinfo=dt.UTC)
        earliest = written + dt.timedelta(days=lock.days) - dt.timedelta(hours=1)
        lock.confirm(head, f"s3://{self.bucket}/{key}", earliest)

    def place(self, item: Prepared, lock: LockSettings, progress: Progress) -> Placed:
        """Upload ``item`` unless it is there already; either way, verify what S3 holds (and
        the retention asked for)."""
        existing = self.head(item.key)
        if existing is not None:
            if existing.get("ChecksumSHA256") != item.checksum:
                self._read_back(item)  # other bytes may still be the same content
            else:
                self.check(item, existing)
            self._confirm_existing_lock(lock, existing, item.key)
            progress(item.size)
            return Placed(item.key, existing.get("VersionId"), False, item.size)
        until = lock.until()
        args: dict[str, Any] = {
            "Bucket": self.bucket, "Key": item.key,
            "Metadata": {CONTENT_SHA_META: item.content_sha256},
            "ContentType": "application/gzip" if item.compressed else "application/json",
            **lock.put_args(until),
        }
        try:
            if item.part_size is None:
                with item.path.open("rb") as fh:
                    self.client.put_object(Body=fh, ChecksumSHA256=item.checksum,
                                           IfNoneMatch="*", **args)
                progress(item.size)
            else:
                self._multipart(item, args, progress)
        except StorageError:
            raise
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                # Someone (an earlier, interrupted run) finished it meanwhile: verify that.
                self._read_back(item)
                head = self.head(item.key) or {}
                self._confirm_existing_lock(lock, head, item.key)
                return Placed(item.key, head.get("VersionId"), False, item.size)
            raise storage_error(exc, f"s3://{self.bucket}/{item.key}: upload") from None
        head = self.check(item)
        # S3 keeps the date to the second (or millisecond): compare at that precision.
        lock.confirm(head, f"s3://{self.bucket}/{item.key}", until.replace(microsecond=0))
        return Placed(item.key, head.get("VersionId"), True, item.size)

    def _multipart(self, item: Prepared, args: dict[str, Any], progress: Progress) -> None:
        assert item.part_size is not None
        upload_id = self.client.create_multipart_upload(ChecksumAlgorithm="SHA256",
                                                        **args)["UploadId"]
        parts = []
        try:
            with item.path.open("rb") as fh:
                for number, checksum in enumerate(item.part_checksums, start=1):
                    data = fh.read(item.part_size)
                    answer = self.client.upload_part(
                        Bucket=self.bucket, Key=item.key, UploadId=upload_id,
                        PartNumber=number, Body=data, ChecksumSHA256=checksum)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"],
                                  "ChecksumSHA256": checksum})
                    progress(len(data))
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=item.key, UploadId=upload_id, IfNoneMatch="*",
                MultipartUpload={"Parts": parts})
        except BaseException:
            # Leave no half-upload behind to be billed; the next run starts the object anew.
            # The store may be gone; the first error is the one to report.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=item.key,
                                                   UploadId=upload_id)
            raise

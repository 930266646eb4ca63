"""Putting one object into S3 so that it is verified: checksums S3 checks, never an overwrite.

Each object goes up with its SHA-256 (``ChecksumSHA256``; per part and composite for multipart
uploads), which S3 recomputes and refuses on mismatch, and with ``If-None-Match: *`` so that
bastion never replaces an object (in a versioned bucket a replacement would be a second version,
which ``bastion verify`` reports as tampering). After the upload a HEAD with checksum mode
confirms size and checksum. An object that is already there is read back and compared instead.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import StorageError
from bastion.evidence.manifest import hash_chunks
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

    def put_args(self) -> dict[str, Any]:
        """The PUT/CreateMultipartUpload arguments for this retention."""
        if not self.mode:
            return {}
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.days)
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": until}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def compress(source: Path, target: Path) -> None:
    """Gzip ``source`` into ``target`` deterministically (no name, mtime 0)."""
    with source.open("rb") as src, target.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        shutil.copyfileobj(src, gz, _CHUNK)


def prepare(key: str, path: Path, content_sha256: str, compressed: bool,
            multipart_threshold: int) -> Prepared:
    """Compute the checksums S3 will be asked to verify for ``path``."""
    size = path.stat().st_size
    whole = hashlib.sha256()
    part_size = max(multipart_threshold, MIN_PART) if size > multipart_threshold else None
    parts: list[str] = []
    part_digest = hashlib.sha256()
    in_part = 0
    with path.open("rb") as fh:
        while chunk := fh.read(min(_CHUNK, (part_size or _CHUNK) - in_part)):
            whole.update(chunk)
            if part_size:
                part_digest.update(chunk)
                in_part += len(chunk)
                if in_part == part_size:
                    parts.append(_b64(part_digest.digest()))
                    part_digest, in_part = hashlib.sha256(), 0
    if part_size and in_part:
        parts.append(_b64(part_digest.digest()))
    if part_size:
        composite = hashlib.sha256(b"".join(base64.b64decode(p) for p in parts)).digest()
        checksum = f"{_b64(composite)}-{len(parts)}"
    else:
        checksum = _b64(whole.digest())
    return Prepared(key=key, path=path, size=size, checksum=checksum, part_size=part_size,
                    part_checksums=tuple(parts), content_sha256=content_sha256,
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
                inflater = zlib.decompressobj(wbits=31) if item.compressed else None
                while chunk := body.read(_CHUNK):
                    yield inflater.decompress(chunk) if inflater else chunk
                if inflater:
                    yield inflater.flush()
            finally:
                body.close()
        try:
            _, sha = hash_chunks(chunks())
        except StorageError:
            raise
        except Exception as exc:
            raise storage_error(exc, f"s3://{self.bucket}/{item.key}: reading back") from None
        if sha != item.content_sha256:
            raise StorageError(f"s3://{self.bucket}/{item.key} already exists with other "
                               "content; not overwriting it (check it: this may be tampering)")

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
        if stored is None and head.get("Metadata", {}).get(CONTENT_SHA_META) != \
                item.content_sha256:
            raise StorageError(f"{where}: the store reports no SHA-256 checksum and no "
                               "content hash; cannot confirm the upload")
        return head

    def place(self, item: Prepared, lock: LockSettings, progress: Progress) -> Placed:
        """Upload ``item`` unless it is there already; either way, verify what S3 holds."""
        existing = self.head(item.key)
        if existing is not None:
            if existing.get("ChecksumSHA256") != item.checksum:
                self._read_back(item)  # other bytes may still be the same content
            else:
                self.check(item, existing)
            progress(item.size)
            return Placed(item.key, existing.get("VersionId"), False, item.size)
        args: dict[str, Any] = {
            "Bucket": self.bucket, "Key": item.key,
            "Metadata": {CONTENT_SHA_META: item.content_sha256},
            "ContentType": "application/gzip" if item.compressed else "application/json",
            **lock.put_args(),
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
                return Placed(item.key, head.get("VersionId"), False, item.size)
            raise storage_error(exc, f"s3://{self.bucket}/{item.key}: upload") from None
        head = self.check(item)
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

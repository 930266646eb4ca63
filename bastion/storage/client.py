"""The boto3 S3 client bastion uses: the normal credential chain, an optional endpoint, retries.

Credentials are never part of bastion's config: boto3 finds them the usual way (environment,
shared credentials file, instance or container role, systemd ``LoadCredential=`` exported as
environment by the unit).
"""

from __future__ import annotations

import re
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from bastion.errors import StorageError, UsageError

_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")

# Errors that mean "the store is not there", as opposed to "the store said no".
UNREACHABLE = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into (bucket, prefix without surrounding slashes)."""
    m = _S3_URI.match(uri)
    if not m:
        raise UsageError(f"{uri!r} is not an s3://BUCKET/PREFIX address")
    return m.group(1), (m.group(2) or "").strip("/")


def make_client(endpoint_url: str | None = None, region: str | None = None,
                max_attempts: int = 5) -> Any:
    """An S3 client; exponential backoff retries come from botocore's standard mode."""
    config = BotoConfig(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=5, read_timeout=60,
        # S3-compatible stores on an endpoint rarely have virtual-host DNS names.
        s3={"addressing_style": "path"} if endpoint_url else {},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
                            config=config)
    if endpoint_url:
        # botocore answers a redirect by asking the bucket's region of the same endpoint, whose
        # redirect it answers the same way, until RecursionError: a configured endpoint has
        # one region, so a redirect is an error to report.
        client.meta.events.register_first("needs-retry.s3", _refuse_redirect)
    return client


def _refuse_redirect(response: Any = None, **_kwargs: Any) -> None:
    """Raise StorageError for a redirect answer (status 301/302/307/308 or a redirect code)."""
    if response is None:
        return
    http, parsed = response
    status = getattr(http, "status_code", None)
    code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if status in (301, 302, 307, 308) or code in ("PermanentRedirect", "TemporaryRedirect"):
        where = getattr(http, "headers", {}).get("Location") or "another address"
        raise StorageError(f"the object store redirected the request (HTTP {status}) to "
                           f"{str(where)[:200]}; bastion does not follow redirects: check "
                           "endpoint_url and region")


class StoreUnreachable(StorageError):
    """The object store did not answer (after botocore's retries)."""


def storage_error(exc: Exception, what: str) -> StorageError:
    """One line for a failed S3 call: unreachable store, missing credentials or S3's answer."""
    if isinstance(exc, StorageError):
        return type(exc)(f"{what}: {exc}")
    if isinstance(exc, UNREACHABLE):
        return StoreUnreachable(f"{what}: cannot reach the object store ({exc})")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what}: no AWS credentials found (environment, "
                            "~/.aws/credentials or an instance role)")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return StorageError(f"{what}: {err.get('Code', '?')}: {err.get('Message', '')}".rstrip())
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


def error_code(exc: Exception) -> str:
    """The S3 error code of a ClientError ('' for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""

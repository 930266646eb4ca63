"""The canonical JSON forms that manifests are signed in.

Manifests from schema 2 on are in the JSON Canonicalization Scheme (RFC 8785, "JCS"), encoded by
PyPI ``rfc8785`` (the implementation sigstore-python uses): an auditor can re-derive the signed
bytes from the JSON they hold with any JCS library, in any language.

Schema 1 manifests (the first release) used a home-made form, kept here only to verify them:
UTF-8 JSON with keys sorted by code point, no insignificant whitespace, non-ASCII characters
unescaped, no trailing newline (Python ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)``).

Verifiers never re-encode a manifest to check a signature: the signature covers the stored
bytes; the canonical form only makes those bytes reproducible and unambiguous, so a manifest not
in its schema's form is refused.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from bastion.errors import ManifestError


def _check(value: Any, where: str) -> None:
    match value:
        case None | bool() | str():
            return
        case int():
            if abs(value) > 2**53 - 1:  # JCS numbers are IEEE doubles: larger ints lose digits
                raise ManifestError(f"manifest field {where} is too large for JSON")
        case float():
            if value != value or value in (float("inf"), float("-inf")):
                raise ManifestError(f"manifest field {where} is not a finite number")
        case list() | tuple():
            for index, item in enumerate(value):
                _check(item, f"{where}[{index}]")
        case dict():
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ManifestError(f"manifest field {where} has a non-string key {key!r}")
                _check(item, f"{where}.{key}" if where else key)
        case _:
            raise ManifestError(f"manifest field {where} has a {type(value).__name__}, "
                                "which JSON cannot hold")


def jcs(doc: dict[str, Any]) -> bytes:
    """Encode ``doc`` in RFC 8785 canonical form (ManifestError if JSON cannot hold it)."""
    _check(doc, "")
    return rfc8785.dumps(doc)


def is_jcs(data: bytes) -> bool:
    """Whether ``data`` is exactly the RFC 8785 encoding of the JSON object it holds."""
    doc = _load(data)
    if doc is None:
        return False
    try:
        return jcs(doc) == data
    except (ManifestError, rfc8785.CanonicalizationError, RecursionError):
        return False


def legacy_canonical_json(doc: dict[str, Any]) -> bytes:
    """Encode ``doc`` in the schema 1 form (sorted keys, no spaces, UTF-8)."""
    _check(doc, "")
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


def is_legacy_canonical(data: bytes) -> bool:
    """Whether ``data`` is exactly the schema 1 encoding of the JSON object it holds."""
    doc = _load(data)
    if doc is None:
        return False
    try:
        return legacy_canonical_json(doc) == data
    except (ManifestError, RecursionError):
        return False


def _load(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None

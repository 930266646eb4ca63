"""The canonical JSON form that manifests are hashed and signed in.

Canonical form (documented in docs/evidence.md): UTF-8 bytes of the JSON text with object keys
sorted by code point, no insignificant whitespace (separators ``,`` and ``:``), non-ASCII
characters written as themselves (not ``\\u`` escapes), no trailing newline. Numbers are
integers where the value is whole; the rare float is written in its shortest round-trip form
(Python's ``repr``); NaN and infinities are refused. Verifiers never re-encode a manifest to
check a signature: the signature covers the stored bytes, and the canonical form only makes those
bytes reproducible and unambiguous.
"""

from __future__ import annotations

import json
from typing import Any

from bastion.errors import ManifestError


def _check(value: Any, where: str) -> None:
    match value:
        case None | bool() | int() | str():
            return
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


def canonical_json(doc: dict[str, Any]) -> bytes:
    """Encode ``doc`` in the canonical form (sorted keys, no spaces, UTF-8)."""
    _check(doc, "")
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


def is_canonical(data: bytes) -> bool:
    """Whether ``data`` is exactly the canonical encoding of the JSON object it holds."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    try:
        return canonical_json(doc) == data
    except ManifestError:
        return False

"""A wrapper for secret material whose repr, str and format never show the value."""

from __future__ import annotations

import hmac
from typing import Generic, NoReturn, TypeVar

T = TypeVar("T", str, bytes)


class Secret(Generic[T]):
    """Holds a password, key or token; only ``reveal()`` gives the value back."""

    __slots__ = ("_value",)
    _value: T

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """Return the secret value; call only where it is handed to a library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "Secret(***)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, str) and isinstance(b, str):
            return hmac.compare_digest(a.encode(), b.encode())
        if isinstance(a, bytes) and isinstance(b, bytes):
            return hmac.compare_digest(a, b)
        return False

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets cannot be pickled")

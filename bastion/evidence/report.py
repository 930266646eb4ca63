"""What a verify run found: per session, per node chain, and the verdict."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SessionResult:
    """What verifying one session folder found."""

    where: str
    session_id: str | None = None
    node_id: str | None = None
    sequence: int | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (check, message)

    def as_json(self) -> dict[str, Any]:
        """The result for ``--json``."""
        return {"where": self.where, "session_id": self.session_id, "node_id": self.node_id,
                "sequence": self.sequence, "ok": not self.failures,
                "failures": [{"check": c, "message": m} for c, m in self.failures]}


@dataclass
class ChainResult:
    """One node's chain as far as the scope holds it."""

    node_id: str
    first: int
    last: int
    count: int
    failures: list[str]
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        """The result for ``--json``."""
        return {"node_id": self.node_id, "first": self.first, "last": self.last,
                "count": self.count, "ok": not self.failures,
                "failures": [{"check": "chain", "message": m} for m in self.failures],
                "notes": self.notes}


@dataclass
class Report:
    """Everything a verify run found; ``ok`` only if something was checked and all passed."""

    scope: str
    sessions: list[SessionResult]
    chains: list[ChainResult]
    failures: list[str] = field(default_factory=list)  # scope-level

    @property
    def ok(self) -> bool:
        """True only if at least one session verified and nothing failed."""
        return (bool(self.sessions) and not self.failures
                and all(not s.failures for s in self.sessions)
                and all(not c.failures for c in self.chains))

    def failure_count(self) -> int:
        """How many failures there are in total."""
        return (len(self.failures) + sum(len(s.failures) for s in self.sessions)
                + sum(len(c.failures) for c in self.chains))

    def as_json(self) -> dict[str, Any]:
        """The whole report for ``--json``."""
        return {"ok": self.ok, "scope": self.scope, "failures": self.failure_count(),
                "errors": self.failures,
                "sessions": [s.as_json() for s in self.sessions],
                "chains": [c.as_json() for c in self.chains]}

    def lines(self) -> Iterator[str]:
        """Human-readable lines, one per session, chain and failure."""
        for result in self.sessions:
            name = result.session_id or result.where
            if result.failures:
                for check, message in result.failures:
                    yield f"FAIL {name}: {check}: {message}"
            else:
                yield f"ok   {name} (node {result.node_id}, sequence {result.sequence})"
        for chain in self.chains:
            for message in chain.failures:
                yield f"FAIL chain {chain.node_id}: {message}"
            for note in chain.notes:
                yield f"note chain {chain.node_id}: {note}"
            if not chain.failures:
                yield (f"ok   chain {chain.node_id}: sequences {chain.first}..{chain.last} "
                       f"linked ({chain.count} manifests)")
        for message in self.failures:
            yield f"FAIL {message}"
        verdict = "VERIFIED" if self.ok else f"NOT VERIFIED ({self.failure_count()} failures)"
        yield f"{verdict}: {len(self.sessions)} sessions in {self.scope}"

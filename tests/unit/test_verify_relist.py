"""A bucket listed while an upload adds to it: a manifest that landed behind the listing is not
a gap (the source is listed again once), and a manifest really missing still is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from harness.evidence import make_sealer, record_sessions

from bastion.evidence.signing import load_public_key
from bastion.evidence.sources import LocalSource, SessionEvidence
from bastion.evidence.verify import TrustedKey, verify_source


class RacingSource:
    """The first listing misses one session; listed again, it is there (or, if
    ``removed``, it never is)."""

    def __init__(self, root: Path, missing: str, removed: bool) -> None:
        self.all = list(LocalSource(root).sessions())
        self.missing, self.removed = missing, removed
        self.description = str(root)
        self.relists = 0

    def sessions(self) -> Iterator[SessionEvidence]:
        return iter([e for e in self.all if e.folder != self.missing])

    def relisted(self, seen: set[str]) -> Iterator[SessionEvidence]:
        self.relists += 1
        return iter([e for e in self.all if e.where not in seen
                     and not (self.removed and e.folder == self.missing)])


def _chain(tmp_path: Path) -> tuple[list[Path], TrustedKey]:
    folders = record_sessions(tmp_path / "spool", 4, output_bytes=100)
    sealer, public = make_sealer(tmp_path)
    for folder in folders:
        sealer.seal(folder)
    return folders, TrustedKey.of(load_public_key(public))


def test_a_manifest_that_landed_behind_the_listing_is_no_gap(tmp_path: Path) -> None:
    folders, key = _chain(tmp_path)
    source = RacingSource(tmp_path / "spool", folders[1].name, removed=False)
    report = verify_source(source, [key])
    assert report.ok, list(report.lines())
    assert source.relists == 1 and len(report.sessions) == 4


def test_a_manifest_really_missing_is_still_a_gap(tmp_path: Path) -> None:
    folders, key = _chain(tmp_path)
    source = RacingSource(tmp_path / "spool", folders[1].name, removed=True)
    report = verify_source(source, [key])
    assert not report.ok
    [chain] = report.chains
    assert chain.failures[0].startswith("gap: sequence 2 missing")


def test_a_complete_chain_is_listed_once(tmp_path: Path) -> None:
    _, key = _chain(tmp_path)
    source = RacingSource(tmp_path / "spool", "none", removed=False)
    assert verify_source(source, [key]).ok and source.relists == 0

"""``bastion verify`` on local folders: every kind of tampering is caught and named."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness.evidence import make_sealer, record_sessions

from bastion.cli.main import _register, cli
from bastion.errors import VerificationFailed
from bastion.evidence.canonical import jcs
from bastion.evidence.seal import Sealer
from bastion.evidence.signing import generate_signing_key, load_public_key
from bastion.evidence.sources import LocalSource
from bastion.evidence.verify import (
    Report,
    TrustedKey,
    Verifier,
    default_session_policies,
    verify_source,
)


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[list[Path], Path, Sealer]:
    """Four sealed sessions in a spool; returns their folders, the public key and the sealer."""
    folders = record_sessions(tmp_path / "spool", 4)
    sealer, pub = make_sealer(tmp_path)
    for folder in folders:
        sealer.seal(folder)
    return folders, pub, sealer


def run(path: Path, pub: Path) -> Report:
    return verify_source(LocalSource(path), [TrustedKey.of(load_public_key(pub))])


def failures(report: Report) -> list[str]:
    found = [f"{s.session_id or s.where}: {check}: {msg}"
             for s in report.sessions for check, msg in s.failures]
    found += [f"chain: {m}" for c in report.chains for m in c.failures]
    return found + report.failures


def test_untouched_evidence_verifies(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    report = run(folders[0].parent, pub)
    assert report.ok, failures(report)
    assert [s.sequence for s in report.sessions if s.sequence] != []
    assert report.chains[0].first == 1 and report.chains[0].last == 4
    assert run(folders[2], pub).ok  # one session folder alone


def test_changed_byte_in_a_recording(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    cast = folders[1] / "1-shell.cast"
    data = bytearray(cast.read_bytes())
    data[-10] ^= 0x01
    cast.write_bytes(bytes(data))
    report = run(folders[0].parent, pub)
    assert not report.ok
    assert failures(report) == [f"{folders[1].name}: files: file 1-shell.cast was "
                                f"altered: " + failures(report)[0].split("altered: ")[1]]


def test_changed_manifest_field(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    path = folders[1] / "manifest.json"
    doc = json.loads(path.read_bytes())
    doc["identity"]["subject"] = "somebody-else"
    path.write_bytes(jcs(doc))
    found = failures(run(folders[0].parent, pub))
    assert f"{folders[1].name}: signature: signature" in found[0]
    assert any("chain" in f for f in found)  # the unsigned manifest is a hole in the chain


def test_bad_signature(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    path = folders[2] / "manifest.sig"
    doc = json.loads(path.read_bytes())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 0xFF
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    path.write_bytes(jcs(doc))
    found = failures(run(folders[0].parent, pub))
    assert found[0].startswith(f"{folders[2].name}: signature: signature (key id ed25519:")


def test_manifest_removed_from_the_middle(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    shutil.rmtree(folders[1])  # the whole session gone, as a deleter would do
    found = failures(run(folders[0].parent, pub))
    assert len(found) == 1 and "gap: sequence 2 missing" in found[0]


def test_manifest_file_deleted_but_recordings_left(sealed: tuple[list[Path], Path,
                                                                  Sealer]) -> None:
    folders, pub, _ = sealed
    (folders[2] / "manifest.json").unlink()
    found = failures(run(folders[0].parent, pub))
    assert any("manifest.json is missing" in f for f in found)
    assert any("gap: sequence 3 missing" in f for f in found)


def test_replaced_manifest_even_if_validly_signed(sealed: tuple[list[Path], Path,
                                                                  Sealer]) -> None:
    folders, pub, sealer = sealed
    # Someone with the key rewrites session 2's manifest (same sequence, new content).
    path = folders[1] / "manifest.json"
    doc = json.loads(path.read_bytes())
    doc["end_reason"] = "nothing happened here"
    raw = jcs(doc)
    path.write_bytes(raw)
    (folders[1] / "manifest.sig").write_bytes(sealer.signer.signature_file(raw))
    found = failures(run(folders[0].parent, pub))
    assert found == [f"chain: chain broken at sequence 3 ({folders[2].name}): its previous hash "
                     f"is not that of sequence 2 ({folders[1].name}); a manifest was replaced "
                     "or reordered"]


def test_manifest_copied_over_another_session(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    for name in ("manifest.json", "manifest.sig"):
        shutil.copy(folders[0] / name, folders[1] / name)
    found = failures(run(folders[0].parent, pub))
    assert any("location: folder" in f for f in found)
    assert any("claimed by two manifests" in f for f in found)


def test_wrong_public_key(sealed: tuple[list[Path], Path, Sealer], tmp_path: Path) -> None:
    folders, _, _ = sealed
    other = tmp_path / "other.key"
    generate_signing_key(other)
    report = run(folders[0].parent, Path(f"{other}.pub"))
    assert not report.ok
    assert all(any(check == "signature" for check, _ in s.failures) for s in report.sessions)


def test_nothing_verifies_by_accident(tmp_path: Path,
                                      sealed: tuple[list[Path], Path, Sealer]) -> None:
    with pytest.raises(VerificationFailed, match="empty check list"):
        Verifier([])
    with pytest.raises(VerificationFailed, match="no trusted public key"):
        default_session_policies([])
    (tmp_path / "empty").mkdir()
    _, pub, _ = sealed
    report = run(tmp_path / "empty", pub)
    assert not report.ok and report.failures == [f"no sessions found in {tmp_path / 'empty'}"]


def test_verify_cli_exit_codes_and_json(sealed: tuple[list[Path], Path, Sealer]) -> None:
    folders, pub, _ = sealed
    _register()
    runner = CliRunner()
    good = runner.invoke(cli, ["verify", str(folders[0].parent), "--public-key", str(pub)])
    assert good.exit_code == 0, good.output
    assert good.output.splitlines()[-1].startswith("VERIFIED: 4 sessions")
    (folders[3] / "1-shell.cast").write_bytes(b"forged\n")
    bad = runner.invoke(cli, ["verify", str(folders[0].parent), "--public-key", str(pub),
                              "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["failures"] == 1
    [failed] = [s for s in report["sessions"] if not s["ok"]]
    assert failed["session_id"] == folders[3].name
    assert failed["failures"][0]["check"] == "files"
    nokey = runner.invoke(cli, ["verify", str(folders[0].parent)], env={"BASTION_CONFIG": ""})
    assert nokey.exit_code == 2 and "no trusted public key" in nokey.output


def test_verify_json_escapes_hostile_manifest_text(sealed: tuple[list[Path], Path, Sealer],
                                                  ) -> None:
    folders, pub, _ = sealed
    manifest = folders[1] / "manifest.json"
    doc = json.loads(manifest.read_bytes())
    doc["node_id"] = "n\x9d52;c;SGVsbG8=\x9c\x9b6n\u202e"
    manifest.write_bytes(jcs(doc))
    _register()
    result = CliRunner().invoke(cli, ["verify", str(folders[1]), "--public-key", str(pub),
                                      "--json"])
    assert result.exit_code == 1
    assert result.stdout.isascii() and "\\u009d52;c;" in result.stdout
    assert json.loads(result.stdout)["sessions"][0]["node_id"] == doc["node_id"]

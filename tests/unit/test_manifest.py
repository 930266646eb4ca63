"""Manifests: canonical form, sealing into a per-node hash chain, crash safety, signing keys."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness.evidence import NODE, make_sealer, record_sessions

from bastion.cli.main import _register, cli
from bastion.config.load import parse_config
from bastion.config.reader import Source
from bastion.errors import ConfigError, ManifestError
from bastion.evidence.canonical import is_legacy_canonical, legacy_canonical_json
from bastion.evidence.manifest import parse_manifest
from bastion.evidence.seal import Sealer, is_sealed
from bastion.evidence.signing import SignatureFile, Signer, generate_signing_key, load_public_key


def test_legacy_canonical_form_sorts_keys_without_spaces_in_utf8() -> None:
    data = legacy_canonical_json({"b": 1, "a": {"z": [1, "é"], "y": None}, "c": True})
    assert data == '{"a":{"y":null,"z":[1,"é"]},"b":1,"c":true}'.encode()
    assert is_legacy_canonical(data)
    assert not is_legacy_canonical(b'{"b":1, "a":2}')
    assert not is_legacy_canonical(b'{"b":1,"a":2}')
    with pytest.raises(ManifestError):
        legacy_canonical_json({"x": float("nan")})


def test_sealing_writes_signed_manifest_linked_to_the_previous(tmp_path: Path) -> None:
    first, second = record_sessions(tmp_path / "spool", 2)
    sealer, pub = make_sealer(tmp_path)
    m1 = parse_manifest(sealer.seal(first).read_bytes())
    m2 = parse_manifest(sealer.seal(second).read_bytes())

    assert (m1.sequence, m1.previous) == (1, None)
    assert (m2.sequence, m2.previous) == (2, m1.digest)
    assert m1.doc["node_id"] == NODE and m1.doc["state"] == "closed"
    assert m1.doc["identity"]["subject"] == "user0"
    assert m1.doc["target"]["login"] == "deploy"
    assert m1.doc["commands"] == [] and m1.doc["approvals"] == [] and m1.doc["masks"] == {}
    cast = first / "1-shell.cast"
    [entry] = m1.recordings
    assert entry.name == "1-shell.cast" and entry.size == cast.stat().st_size
    assert entry.sha256 == hashlib.sha256(cast.read_bytes()).hexdigest()

    signature = SignatureFile.parse((first / "manifest.sig").read_bytes())
    assert signature.key_id == sealer.signer.key_id
    assert signature.verify(m1.raw, load_public_key(pub))
    assert sealer.head().sequence == 2 and sealer.head().digest == m2.digest


def test_sealing_is_idempotent_and_a_new_sealer_continues_the_chain(tmp_path: Path) -> None:
    a, b = record_sessions(tmp_path / "spool", 2)
    sealer, _ = make_sealer(tmp_path)
    path = sealer.seal(a)
    before = path.read_bytes()
    assert sealer.seal(a).read_bytes() == before  # not re-sealed, not renumbered
    again, _ = make_sealer(tmp_path)  # as after a restart: the head comes from disk
    assert parse_manifest(again.seal(b).read_bytes()).previous == hashlib.sha256(
        before).hexdigest()


def test_crash_between_manifest_and_head_neither_forks_nor_gaps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = record_sessions(tmp_path / "spool", 3)
    sealer, _ = make_sealer(tmp_path)
    sealer.seal(a)

    def crash(self: Sealer, head: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Sealer, "_store_head", crash)
    with pytest.raises(ManifestError, match="cannot seal"):
        sealer.seal(b)
    monkeypatch.undo()
    assert is_sealed(b)  # the manifest was committed; the head update was lost

    restarted, _ = make_sealer(tmp_path)
    m_b = parse_manifest((b / "manifest.json").read_bytes())
    m_c = parse_manifest(restarted.seal(c).read_bytes())
    assert (m_b.sequence, m_c.sequence) == (2, 3)
    assert m_c.previous == m_b.digest


def test_sealing_refuses_unfinished_foreign_or_misplaced_sessions(tmp_path: Path) -> None:
    [folder] = record_sessions(tmp_path / "spool", 1)
    sealer, _ = make_sealer(tmp_path)
    meta = json.loads((folder / "session.json").read_text())

    meta["state"] = "active"
    (folder / "session.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match="not a finished state"):
        sealer.seal(folder)

    meta["state"] = "closed"
    (folder / "session.json").write_text(json.dumps(meta))
    other, _ = make_sealer(tmp_path, node_id="another-node")
    with pytest.raises(ManifestError, match="is not this node"):
        other.seal(folder)

    moved = folder.rename(folder.parent / "20260101T000000Z-000000000000")
    with pytest.raises(ManifestError, match="does not match its folder"):
        sealer.seal(moved)
    assert not is_sealed(moved)


def test_unreadable_chain_head_stops_sealing(tmp_path: Path) -> None:
    [folder] = record_sessions(tmp_path / "spool", 1)
    sealer, _ = make_sealer(tmp_path)
    sealer.chain_dir.mkdir(parents=True)
    (sealer.chain_dir / f"{NODE}.json").write_text("{broken")
    with pytest.raises(ManifestError, match=r"chain head .* unreadable"):
        sealer.seal(folder)


def test_seal_spool_seals_finished_sessions_in_order(tmp_path: Path) -> None:
    folders = record_sessions(tmp_path / "spool", 3)
    sealer, _ = make_sealer(tmp_path)
    sealed, failed = sealer.seal_spool(tmp_path / "spool")
    assert failed == []
    assert [p.parent for p in sealed] == folders
    assert [parse_manifest(p.read_bytes()).sequence for p in sealed] == [1, 2, 3]


def test_keygen_signing_writes_a_private_key_0600_and_prints_the_public_key(
        tmp_path: Path) -> None:
    _register()
    out = tmp_path / "signing.key"
    result = CliRunner().invoke(cli, ["keygen", "signing", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "BEGIN PUBLIC KEY" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert Path(f"{out}.pub").read_text() in result.stdout
    Signer.from_file(out)
    again = CliRunner().invoke(cli, ["keygen", "signing", "--out", str(out)])
    assert again.exit_code == 2 and "not overwriting" in again.output


def _config(text: str, tmp_path: Path) -> object:
    import tomllib

    base = '[vault]\nkey_env = "K"\n'
    path = tmp_path / "bastion.toml"
    return parse_config(tomllib.loads(base + text), Source(path, base + text))


def test_config_evidence_and_storage_sections(tmp_path: Path) -> None:
    config = _config('[evidence]\nsigning_key = "k.pem"\npublic_keys = ["a.pub"]\n'
                     '[storage]\nbucket = "evidence-bucket"\nprefix = "prod/eu"\n'
                     'object_lock_mode = "COMPLIANCE"\nretention_days = 365\n', tmp_path)
    assert config.evidence.signing_key == tmp_path / "k.pem"  # type: ignore[attr-defined]
    storage = config.storage  # type: ignore[attr-defined]
    assert (storage.bucket, storage.prefix, storage.object_lock_mode) == (
        "evidence-bucket", "prod/eu", "COMPLIANCE")
    with pytest.raises(ConfigError, match=r"storage\.object_lock_mode: expected"):
        _config('[storage]\nbucket = "b-b-b"\nobject_lock_mode = "strict"\n', tmp_path)
    with pytest.raises(ConfigError, match="retention_days"):
        _config('[storage]\nbucket = "b-b-b"\nobject_lock_mode = "GOVERNANCE"\n', tmp_path)
    with pytest.raises(ConfigError, match=r"storage\.prefix"):
        _config('[storage]\nbucket = "b-b-b"\nprefix = "/x/"\n', tmp_path)
    assert _config("", tmp_path).storage is None  # type: ignore[attr-defined]


def test_interrupted_and_refused_sessions_are_sealed_with_their_state(tmp_path: Path) -> None:
    interrupted = record_sessions(tmp_path / "spool", 1, state="interrupted")
    refused = record_sessions(tmp_path / "spool", 1, state="refused")
    sealer, _ = make_sealer(tmp_path)
    sealed, failed = sealer.seal_spool(tmp_path / "spool")
    assert failed == []
    states = {p.parent: parse_manifest(p.read_bytes()).doc["state"] for p in sealed}
    assert states == {interrupted[0]: "interrupted", refused[0]: "refused"}


def test_a_signing_key_other_users_may_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    generate_signing_key(key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"accessible to other users \(mode 0644\); run chmod"):
        Signer.from_file(key)

"""Schema 2 manifests: every file listed and checked, exits and commands on record, RFC 8785
bytes; schema 1 evidence sealed by the previous release still verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from click.testing import CliRunner
from harness.evidence import make_sealer

from bastion.cli.main import _register, cli
from bastion.errors import ManifestError
from bastion.evidence.manifest import parse_manifest
from bastion.evidence.signing import load_public_key
from bastion.evidence.sources import LocalSource
from bastion.evidence.verify import Report, TrustedKey, verify_source
from bastion.recording import ChannelKind, Spool
from bastion.recording.layout import SESSION_FILE

FIXTURE = Path(__file__).parent.parent / "fixtures" / "evidence-schema1"
NODE = "bastion-test"


def record_mixed_session(spool_dir: Path) -> Path:
    """A finished session with a pty shell and a plain exec channel, as the relay records."""
    spool = Spool(spool_dir, NODE)
    spool.lock()
    rec = spool.start_session({
        "identity": {"subject": "zoe", "name": "Zoë 😀"}, "client": {"address": "127.0.0.1"},
        "target": {"name": "web01", "login": "deploy"}})
    rec.set_field("masks", {"\ufb00-rule": 1, "😀-rule": 2})  # JCS orders these by UTF-16
    shell = rec.open_channel(ChannelKind.SHELL, pty=True, width=80, height=24, term="xterm",
                             command=None, user="zoe", target="web01", login="deploy")
    shell.input(b"ls\r")
    shell.output(b"ls\r\nfile\r\n")
    rec.note_command(1, 0.25, "ls", "allow")
    shell.exited(0, None)
    exec_ = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                             command="bash", user="zoe", target="web01", login="deploy")
    exec_.input(b"touch /tmp/proof\necho visible\n")
    exec_.output(bytes(range(256)))
    exec_.stderr(b"warning: caf\xc3\xa9\n")
    rec.note_command(2, 1.5, "touch /tmp/proof", "warn", "touch-tmp")
    exec_.exited(None, "KILL")
    rec.finish("closed", "client closed")
    spool.unlock()
    return rec.path


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[Path, Path]:
    folder = record_mixed_session(tmp_path / "spool")
    sealer, pub = make_sealer(tmp_path, NODE)
    sealer.seal(folder)
    return folder, pub


def verify(path: Path, pub: Path) -> Report:
    return verify_source(LocalSource(path), [TrustedKey.of(load_public_key(pub))])


def failures(report: Report) -> list[str]:
    return [f"{check}: {message}" for s in report.sessions for check, message in s.failures]


def test_manifest_lists_every_file_with_exits_and_commands(sealed: tuple[Path, Path]) -> None:
    folder, pub = sealed
    raw = (folder / "manifest.json").read_bytes()
    manifest = parse_manifest(raw)
    assert manifest.schema == 2
    assert rfc8785.dumps(json.loads(raw)) == raw  # any JCS implementation re-derives the bytes
    assert [f.name for f in manifest.files] == [
        "1-shell.cast", "2-exec.stdin", "2-exec.stdout", "2-exec.stderr", "2-exec.timing",
        SESSION_FILE]
    for entry in manifest.files:
        data = (folder / entry.name).read_bytes()
        assert entry.size == len(data)
    doc: dict[str, Any] = manifest.doc
    assert [(c["number"], c["kind"], c["pty"], c["exit_status"], c["exit_signal"])
            for c in doc["channels"]] == [(1, "shell", True, 0, None),
                                          (2, "exec", False, None, "KILL")]
    assert doc["channels"][1]["command"] == "bash"
    assert [(c["channel"], c["line"], c["verdict"]) for c in doc["commands"]] == [
        (1, "ls", "allow"), (2, "touch /tmp/proof", "warn")]
    assert list(doc["masks"]) == ["😀-rule", "\ufb00-rule"]  # UTF-16 order, not code points
    assert verify(folder, pub).ok


def test_one_flipped_byte_in_a_stream_fails_verify(sealed: tuple[Path, Path]) -> None:
    folder, pub = sealed
    stdout = folder / "2-exec.stdout"
    data = bytearray(stdout.read_bytes())
    data[100] ^= 0x01
    stdout.write_bytes(bytes(data))
    found = failures(verify(folder, pub))
    assert len(found) == 1 and found[0].startswith("files: file 2-exec.stdout was altered")


def test_changed_session_json_or_missing_timing_fails_verify(sealed: tuple[Path, Path]) -> None:
    folder, pub = sealed
    meta = json.loads((folder / SESSION_FILE).read_text())
    meta["commands"] = []
    (folder / SESSION_FILE).write_text(json.dumps(meta))
    assert failures(verify(folder, pub))[0].startswith("files: file session.json was altered")
    (folder / "2-exec.timing").unlink()
    assert failures(verify(folder, pub)) == ["files: file 2-exec.timing is missing"]


def test_a_stream_the_manifest_does_not_list_fails_verify(sealed: tuple[Path, Path]) -> None:
    folder, pub = sealed
    (folder / "3-exec.stdout").write_bytes(b"planted")
    assert failures(verify(folder, pub)) == ["files: files not in the manifest: 3-exec.stdout"]


def test_a_manifest_not_in_jcs_form_is_refused(sealed: tuple[Path, Path]) -> None:
    folder, _ = sealed
    doc = json.loads((folder / "manifest.json").read_bytes())
    legacy = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert legacy != (folder / "manifest.json").read_bytes()  # the masks keys sort apart
    with pytest.raises(ManifestError, match="RFC 8785"):
        parse_manifest(legacy)
    with pytest.raises(ManifestError, match="schema 3 is not one this release knows"):
        parse_manifest(rfc8785.dumps({**doc, "schema": 3}))


def test_a_damaged_recovered_session_seals_and_verifies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", NODE)
    spool.lock()
    rec = spool.start_session({"identity": {}, "client": {}, "target": {}})
    writer = rec.open_channel("shell", width=80, height=24, term=None, command=None,
                              user="u", target="t", login="l")
    writer.output(b"one\r\n")
    writer.output(b"two\r\n")
    writer.flush()
    spool.unlock()
    lines = writer.path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    writer.path.write_bytes(b"\n".join(lines))
    again = Spool(tmp_path / "spool", NODE)
    again.lock()
    again.recover()
    again.unlock()
    sealer, pub = make_sealer(tmp_path, NODE)
    manifest = parse_manifest(sealer.seal(rec.path).read_bytes())
    assert manifest.doc["state"] == "damaged"
    assert manifest.doc["recording_errors"] == ["1-shell.cast: invalid lines 2 (kept as found)"]
    assert verify(rec.path, pub).ok


def test_schema1_evidence_of_the_previous_release_still_verifies(tmp_path: Path) -> None:
    copy = tmp_path / "evidence"
    shutil.copytree(FIXTURE, copy)
    manifests = [parse_manifest(p.read_bytes()) for p in copy.glob("*/manifest.json")]
    assert {m.schema for m in manifests} == {1}
    report = verify(copy, copy / "signing.pub")
    assert report.ok, failures(report)
    assert report.chains[0].count == 2
    _register()
    result = CliRunner().invoke(cli, ["verify", str(copy), "--public-key",
                                      str(copy / "signing.pub")])
    assert result.exit_code == 0 and "VERIFIED: 2 sessions" in result.output
    # A schema 1 cast altered is still caught.
    cast = next(copy.glob("*/1-shell.cast"))
    cast.write_bytes(cast.read_bytes().replace(b'"o"', b'"i"', 1))
    assert failures(verify(copy, copy / "signing.pub"))[0].startswith(
        "files: file 1-shell.cast was altered")

"""Hostile evidence: whatever is planted in a session folder is that session's one-line failure.

Tampered content never verifies nor replays as verified, one bad session never stops the others
from being verified, and nothing planted (a FIFO, a folder, a symlink loop, a gzip bomb) hangs,
exhausts or crashes the verifier.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness.evidence import make_sealer, record_sessions

from bastion.cli.main import _register, cli
from bastion.errors import ReplayError, VerificationFailed
from bastion.evidence.signing import SignatureFile, load_public_key
from bastion.evidence.sources import LocalSource, gunzip
from bastion.evidence.verify import Report, TrustedKey, verify_source
from bastion.replay.session import open_session_folder
from bastion.replay.transcript import transcript

FIXTURE = Path(__file__).parent.parent / "fixtures" / "evidence-schema1"
SCHEMA1 = "20261130T134453Z-69051fe67a67"


@pytest.fixture
def spool(tmp_path: Path) -> tuple[list[Path], Path]:
    """Three sealed sessions; their folders and the public key."""
    folders = record_sessions(tmp_path / "spool", 3)
    sealer, pub = make_sealer(tmp_path)
    for folder in folders:
        sealer.seal(folder)
    return folders, pub


def run(path: Path, pub: Path) -> Report:
    return verify_source(LocalSource(path), [TrustedKey.of(load_public_key(pub))])


def fails(report: Report) -> dict[str, list[str]]:
    return {Path(s.where).name: [f"{c}: {m}" for c, m in s.failures]
            for s in report.sessions if s.failures}


# -- 1: schema 1 sessions play only what the signed manifest covers ----------------------------

def forged_schema1(tmp_path: Path) -> Path:
    folder = tmp_path / SCHEMA1
    shutil.copytree(FIXTURE / SCHEMA1, folder)
    meta = json.loads((folder / "session.json").read_text())
    meta["channels"] = [{"number": 1, "kind": "shell", "pty": True, "files": ["1-sftp.cast"]}]
    meta["commands"] = [{"channel": 1, "t": 0.5, "line": "forged command"}]
    (folder / "session.json").write_text(json.dumps(meta))
    (folder / "1-sftp.cast").write_text(
        '{"version": 2, "width": 80, "height": 24, "term": {"type": "xterm"}}\n'
        '[0.5, "o", "FORGED OUTPUT\\r\\n"]\n')
    return folder


def test_schema1_forged_file_is_extra_and_never_replayed(tmp_path: Path) -> None:
    folder = forged_schema1(tmp_path)
    report = run(folder, FIXTURE / "signing.pub")
    assert not report.ok
    assert fails(report) == {SCHEMA1: ["files: files not in the manifest: 1-sftp.cast"]}
    session = open_session_folder(folder)
    assert [c.files for c in session.channels] == [("1-shell.cast",)]
    text = "\n".join(transcript(session, session.channel(None)))
    assert "FORGED" not in text and "forged command" not in text
    with pytest.raises(ReplayError, match="not a bastion recording name"):
        session.file("1-sftp.cast")


def test_sealed_folder_opens_only_files_the_manifest_covers(spool: tuple[list[Path], Path],
                                                           ) -> None:
    folders, _ = spool
    session = open_session_folder(folders[0])
    assert session.covered is not None and "1-shell.cast" in session.covered
    with pytest.raises(ReplayError, match="not covered by the signed manifest"):
        session.file("2-exec.cast")


# -- 2: a .gz must hold exactly the bytes hashed, and agree with a plain copy -----------------

def test_second_gzip_member_or_trailing_bytes_is_altered(spool: tuple[list[Path], Path]) -> None:
    folders, pub = spool
    cast = folders[1] / "1-shell.cast"
    original = cast.read_bytes()
    cast.unlink()
    packed = folders[1] / "1-shell.cast.gz"
    packed.write_bytes(gzip.compress(original))
    assert run(folders[1].parent, pub).ok
    packed.write_bytes(gzip.compress(original) + gzip.compress(b'[9.0, "o", "injected"]\n'))
    assert fails(run(folders[1].parent, pub)) == {folders[1].name: [
        "files: file 1-shell.cast was altered: compressed file has data after its end"]}
    packed.write_bytes(gzip.compress(original) + b"\0\0\0\0")
    assert not run(folders[1].parent, pub).ok


def test_gz_beside_plain_copy_must_agree(spool: tuple[list[Path], Path]) -> None:
    folders, pub = spool
    (folders[1] / "1-shell.cast.gz").write_bytes(gzip.compress(b"forged\n"))
    assert fails(run(folders[1].parent, pub)) == {folders[1].name: [
        "files: file 1-shell.cast was altered: 1-shell.cast.gz differs from 1-shell.cast"]}
    same = (folders[1] / "1-shell.cast").read_bytes()
    (folders[1] / "1-shell.cast.gz").write_bytes(gzip.compress(same))
    assert run(folders[1].parent, pub).ok


def test_gunzip_drains_a_full_piece() -> None:
    data = os.urandom(3 << 20) + b"\0" * (5 << 20)
    packed = gzip.compress(data)
    assert b"".join(gunzip([packed])) == data
    assert b"".join(gunzip(packed[i:i + 4096] for i in range(0, len(packed), 4096))) == data
    with pytest.raises(VerificationFailed, match="truncated"):
        b"".join(gunzip([packed[:-10]]))


# -- 3: a gzip bomb is altered at once ---------------------------------------------------------

def test_gzip_bomb_is_altered_without_inflating_it(spool: tuple[list[Path], Path]) -> None:
    folders, pub = spool
    (folders[1] / "1-shell.cast").unlink()
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(deflate.compress(b"\0" * (1 << 24)) for _ in range(8)) + deflate.flush()
    (folders[1] / "1-shell.cast.gz").write_bytes(bomb)  # 128 MiB of zeros in 128 kB
    assert max(len(piece) for piece in gunzip([bomb])) <= 1 << 20
    [message] = fails(run(folders[1], pub))[folders[1].name]
    assert message.startswith("files: file 1-shell.cast was altered: larger than the manifest")


# -- 4: a bad session is that session's failure; the others still verify ---------------------

@pytest.mark.parametrize("plant", ["schema_list", "sig_deep", "manifest_dir", "sig_dir",
                                   "manifest_loop", "manifest_fifo", "sig_fifo"])
def test_one_bad_session_fails_alone(spool: tuple[list[Path], Path], plant: str) -> None:
    folders, pub = spool
    bad = folders[1]
    manifest, sig = bad / "manifest.json", bad / "manifest.sig"
    match plant:
        case "schema_list":
            manifest.write_bytes(b'{"schema":[]}')
        case "sig_deep":
            sig.write_bytes(b"[" * 100_000)
        case "manifest_dir" | "sig_dir":
            target = manifest if plant == "manifest_dir" else sig
            target.unlink()
            target.mkdir()
        case "manifest_loop":
            manifest.unlink()
            manifest.symlink_to(manifest.name)
        case "manifest_fifo" | "sig_fifo":
            target = manifest if plant == "manifest_fifo" else sig
            target.unlink()
            os.mkfifo(target)
    report = run(folders[0].parent, pub)
    found = fails(report)
    assert list(found) == [bad.name], found
    [message] = found[bad.name]
    assert "\n" not in message
    good = [s for s in report.sessions if not s.failures]
    assert len(good) == 2
    if plant.endswith(("fifo", "dir")):
        assert "not a regular file" in message or "Is a directory" in message
    _register()
    result = CliRunner().invoke(cli, ["verify", str(folders[0].parent), "--public-key",
                                      str(pub)])
    assert result.exit_code == 1 and "internal error" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_deeply_nested_signature_file_is_malformed() -> None:
    with pytest.raises(VerificationFailed, match="malformed signature file"):
        SignatureFile.parse(b"[" * 100_000)


def test_replay_refuses_a_fifo_manifest(spool: tuple[list[Path], Path]) -> None:
    folders, _ = spool
    (folders[1] / "manifest.json").unlink()
    os.mkfifo(folders[1] / "manifest.json")
    with pytest.raises(ReplayError, match="not a regular file"):
        open_session_folder(folders[1])

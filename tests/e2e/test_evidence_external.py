"""docs/evidence.md's "Verifying without bastion" commands, run as written (openssl, jq,
sha256sum, node) on a real sealed session: they pass, and they fail on tampering."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from harness.evidence import make_sealer

from bastion.recording import ChannelKind, Spool

pytestmark = pytest.mark.e2e

DOC = Path(__file__).parent.parent.parent / "docs" / "evidence.md"
NODE = "bastion-test"


def documented_blocks() -> list[str]:
    """The sh blocks docs/evidence.md says this test runs, in order."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- [^>]*test_evidence_external\.py[^>]*-->\n```sh\n(.*?)```",
                        text, re.S)
    assert len(blocks) == 2, "docs/evidence.md lost a block this test runs"
    return blocks


def run(block: str, folder: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=folder,
                          env={**os.environ, "PUBKEY": str(pub)}, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[Path, Path]:
    spool = Spool(tmp_path / "spool", NODE)
    spool.lock()
    rec = spool.start_session({"identity": {"name": "Zoë 😀"}, "client": {},
                               "target": {"name": "web01"}})
    rec.set_field("masks", {"\ufb00-rule": 1, "😀-rule": 2, "a": 0})
    shell = rec.open_channel(ChannelKind.SHELL, pty=True, width=80, height=24, term="xterm",
                             command=None, user="zoe", target="web01", login="deploy")
    shell.input(b"echo caf\xc3\xa9\r")
    shell.output(b"caf\xc3\xa9\r\n")
    rec.note_command(1, 4.0, "echo café", "allow")  # 4.0: JCS writes 4
    exec_ = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                             command="cat > f", user="zoe", target="web01", login="deploy")
    exec_.input(os.urandom(100_000))
    exec_.exited(0, None)
    rec.finish("closed", "client closed")
    spool.unlock()
    sealer, pub = make_sealer(tmp_path, NODE)
    sealer.seal(rec.path)
    return rec.path, pub


def test_documented_openssl_and_sha256sum_verification(sealed: tuple[Path, Path]) -> None:
    folder, pub = sealed
    signature_and_hashes, canonical_form = documented_blocks()
    done = run(signature_and_hashes, folder, pub)
    assert done.returncode == 0, done.stderr
    assert "Signature Verified Successfully" in done.stdout
    assert done.stdout.count(": OK") == 6  # 1-shell.cast, 2-exec x4, session.json
    done = run(canonical_form, folder, pub)
    assert done.returncode == 0, done.stderr

    # One flipped byte in a stream: sha256sum says which file.
    stdin = folder / "2-exec.stdin"
    data = bytearray(stdin.read_bytes())
    data[5000] ^= 0x01
    stdin.write_bytes(bytes(data))
    done = run(signature_and_hashes, folder, pub)
    assert done.returncode != 0 and "2-exec.stdin: FAILED" in done.stdout


def test_documented_commands_refuse_a_changed_manifest(sealed: tuple[Path, Path]) -> None:
    folder, pub = sealed
    signature_and_hashes, canonical_form = documented_blocks()
    manifest = folder / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"closed"', b'"killed"', 1))
    done = run(signature_and_hashes, folder, pub)
    assert done.returncode != 0 and "Signature Verification Failure" in done.stdout
    # Re-encoded but equal JSON is not the canonical form the node check derives.
    doc = json.loads(manifest.read_bytes())
    manifest.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False), encoding="utf-8")
    assert run(canonical_form, folder, pub).returncode != 0

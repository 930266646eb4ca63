"""``bastion verify s3://...`` against SeaweedFS: passes on an upload, names every tampering."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.evidence import NODE, Site

from bastion.demo.s3 import SeaweedS3
from bastion.evidence.canonical import jcs
from bastion.evidence.signing import generate_signing_key
from bastion.recording import ChannelKind, Spool

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the module; each test uses its own bucket."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as s3:
        yield s3


def uploaded(store: SeaweedS3, root: Path, bucket: str, count: int,
             lock: bool) -> tuple[Site, list[str]]:
    """``count`` sessions recorded, sealed and uploaded; returns the site and each session's
    key prefix in chain order."""
    store.create_bucket(bucket, object_lock=lock)
    site = Site(root, store, bucket, lock_mode="GOVERNANCE" if lock else "none")
    folders = site.record(count)
    code, summary, stderr = site.upload()
    assert code == 0, (summary, stderr)
    prefixes = []
    for folder in folders:
        day = folder.name[:8]
        prefixes.append(f"evidence/{day[:4]}/{day[4:6]}/{day[6:8]}/{NODE}/{folder.name}")
    return site, prefixes


def report(site: Site, *args: str) -> tuple[int, dict[str, Any]]:
    proc = site.verify("--json", *args)
    return proc.returncode, json.loads(proc.stdout)


def named_failures(result: dict[str, Any]) -> dict[str, list[str]]:
    """{session id or "chain": ["check: message", ...]}."""
    found: dict[str, list[str]] = {}
    for session in result["sessions"]:
        name = session["session_id"] or session["where"].rsplit("/", 1)[-1]
        for failure in session["failures"]:
            found.setdefault(name, []).append(f"{failure['check']}: {failure['message']}")
    for chain in result["chains"]:
        for failure in chain["failures"]:
            found.setdefault("chain", []).append(failure["message"])
    return found


def test_every_tampering_is_caught_and_named(store: SeaweedS3, tmp_path: Path) -> None:
    # A bucket without versioning, so that tampering really replaces or removes bytes.
    site, keys = uploaded(store, tmp_path, "verify-plain", 6, lock=False)
    code, result = report(site)
    assert code == 0 and result["ok"], result
    assert result["chains"][0]["first"] == 1 and result["chains"][0]["last"] == 6

    client = store.client()
    ids = [k.rsplit("/", 1)[-1] for k in keys]

    def get(key: str) -> bytes:
        body: bytes = client.get_object(Bucket=site.bucket, Key=key)["Body"].read()
        return body

    # 1: a changed byte in a recording
    cast = bytearray(gzip.decompress(get(f"{keys[0]}/1-shell.cast.gz")))
    cast[-5] ^= 0x01
    client.put_object(Bucket=site.bucket, Key=f"{keys[0]}/1-shell.cast.gz",
                      Body=gzip.compress(bytes(cast)))
    # 2: a changed manifest field
    doc = json.loads(get(f"{keys[1]}/manifest.json"))
    doc["target"]["login"] = "nobody"
    client.put_object(Bucket=site.bucket, Key=f"{keys[1]}/manifest.json",
                      Body=jcs(doc))
    # 4: a bad signature
    sig = json.loads(get(f"{keys[3]}/manifest.sig"))
    raw = bytearray(base64.b64decode(sig["signature"]))
    raw[10] ^= 0x80
    sig["signature"] = base64.b64encode(bytes(raw)).decode()
    client.put_object(Bucket=site.bucket, Key=f"{keys[3]}/manifest.sig", Body=jcs(sig))
    # 5: a manifest removed from the middle of the chain (its whole session deleted)
    for suffix in ("manifest.json", "manifest.sig", "1-shell.cast.gz", "session.json.gz"):
        client.delete_object(Bucket=site.bucket, Key=f"{keys[4]}/{suffix}")

    code, result = report(site)
    assert code == 1 and not result["ok"]
    found = named_failures(result)
    assert found[ids[0]] == [found[ids[0]][0]]
    assert found[ids[0]][0].startswith("files: file 1-shell.cast was altered")
    assert found[ids[1]][0].startswith("signature: signature (key id ed25519:")
    assert found[ids[3]][0].startswith("signature: signature (key id ed25519:")
    assert ids[2] not in found and ids[5] not in found and ids[4] not in found
    # Unsigned manifests 2 and 4 and the removed 5 are holes in the chain: 1 | 3 | 6.
    assert found["chain"] == [
        f"gap: sequence 2 missing between {ids[0]} and {ids[2]} (a manifest was removed)",
        f"gap: sequence 4..5 missing between {ids[2]} and {ids[5]} (a manifest was removed)"]

    # Human output names each failure, and the verdict.
    human = site.verify()
    assert human.returncode == 1
    assert f"FAIL {ids[0]}: files: file 1-shell.cast was altered" in human.stdout
    assert "NOT VERIFIED (5 failures): 5 sessions" in human.stdout


def test_wrong_public_key_fails_everything(store: SeaweedS3, tmp_path: Path) -> None:
    site, keys = uploaded(store, tmp_path, "verify-wrong-key", 2, lock=True)
    other = tmp_path / "other.key"
    generate_signing_key(other)
    code, result = report(site, "--public-key", f"{other}.pub")
    assert code == 1
    found = named_failures(result)
    assert all(found[k.rsplit("/", 1)[-1]][0].startswith("signature:") for k in keys)
    assert report(site)[0] == 0


def test_versioned_bucket_first_written_version_counts(store: SeaweedS3, tmp_path: Path) -> None:
    site, keys = uploaded(store, tmp_path, "verify-versions", 3, lock=True)
    client = store.client()
    ids = [k.rsplit("/", 1)[-1] for k in keys]
    # Overwrite a recording with other content: a newer version appears, the first stays.
    client.put_object(Bucket=site.bucket, Key=f"{keys[0]}/1-shell.cast.gz",
                      Body=gzip.compress(b'{"version": 2}\n'))
    # "Delete" a manifest: Object Lock keeps the version, a delete marker hides it.
    client.delete_object(Bucket=site.bucket, Key=f"{keys[1]}/manifest.json")

    code, result = report(site)
    assert code == 1
    found = named_failures(result)
    assert found[ids[0]] == ["versions: 1-shell.cast.gz has 2 versions: it was overwritten "
                             "after upload (the first-written version was verified)"]
    assert found[ids[1]] == ["versions: manifest.json was deleted (a delete marker hides it)"]
    assert "chain" not in found  # the first-written manifests still form the whole chain


def test_byte_exact_streams_upload_and_verify(store: SeaweedS3, tmp_path: Path) -> None:
    bucket = "verify-streams"
    store.create_bucket(bucket, object_lock=False)
    site = Site(tmp_path, store, bucket, lock_mode="none")
    payload = os.urandom(8 * 1024 * 1024)  # above the multipart threshold, even gzipped
    spool = Spool(site.spool, NODE)
    spool.lock()
    rec = spool.start_session({"identity": {}, "client": {}, "target": {"name": "web01"}})
    writer = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                              command="cat > f", user="u", target="web01", login="deploy")
    for start in range(0, len(payload), 32768):
        writer.input(payload[start:start + 32768])
    writer.exited(0, None)
    rec.finish("closed", "client closed")
    spool.unlock()
    site.sealer.seal(rec.path)
    code, summary, stderr = site.upload()
    assert code == 0, (summary, stderr)
    day = rec.session_id[:8]
    base = f"evidence/{day[:4]}/{day[4:6]}/{day[6:8]}/{NODE}/{rec.session_id}"
    keys = {key for key, _ in site.versions()}
    assert keys == {f"{base}/{name}" for name in (
        "1-exec.stdin.gz", "1-exec.stdout.gz", "1-exec.stderr.gz", "1-exec.timing.gz",
        "session.json.gz", "manifest.sig", "manifest.json")}
    client = store.client()
    stored = gzip.decompress(client.get_object(Bucket=bucket,
                                               Key=f"{base}/1-exec.stdin.gz")["Body"].read())
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(payload).hexdigest()
    code, result = report(site)
    assert code == 0 and result["ok"], result

    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=f"{base}/1-exec.stdin.gz",
                      Body=gzip.compress(bytes(flipped)))
    code, result = report(site)
    assert code == 1
    assert named_failures(result)[rec.session_id][0].startswith(
        "files: file 1-exec.stdin was altered")

"""``bastion upload`` checks each session before it goes into the (Object-Locked) bucket, and
places manifests in chain order so that ``bastion verify`` during an upload sees no false gap."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.evidence import Site, record_sessions

from bastion.demo.s3 import SeaweedS3
from bastion.evidence.seal import Sealer
from bastion.evidence.signing import Signer, generate_signing_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as s3:
        yield s3


def test_an_edited_manifest_is_refused_and_left_in_the_spool(
        store: SeaweedS3, tmp_path: Path) -> None:
    store.create_bucket("refuse-edited")
    site = Site(tmp_path, store, "refuse-edited")
    [good, edited] = site.record(2)
    manifest = edited / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["identity"] = {**doc.get("identity", {}), "name": "someone-else"}
    manifest.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))

    code, summary, _ = site.upload()
    assert code == 1 and summary["status"] == "failed"
    [failure] = summary["failed"]
    assert failure["session"] == edited.name
    assert "does not verify with any trusted public key" in failure["error"]
    assert edited.is_dir() and (edited / "manifest.json").is_file()
    keys = [key for key, _ in site.versions()]
    assert keys and not any(edited.name in key for key in keys)  # nothing of it went up
    assert summary["uploaded"] == [good.name]


def test_a_manifest_signed_by_an_unknown_key_is_refused(
        store: SeaweedS3, tmp_path: Path) -> None:
    store.create_bucket("refuse-foreign")
    site = Site(tmp_path, store, "refuse-foreign")
    generate_signing_key(tmp_path / "foreign.key")
    foreign = Sealer(Signer.from_file(tmp_path / "foreign.key"), tmp_path / "foreign-chain",
                     "bastion-test")
    [folder] = record_sessions(site.spool, 1)
    foreign.seal(folder)

    code, summary, stderr = site.upload()
    assert code == 1, stderr
    assert [f["session"] for f in summary["failed"]] == [folder.name]
    assert folder.is_dir() and site.versions() == []
    human = subprocess.run(site.argv("upload", "--config", str(site.config), "--no-json"),
                           capture_output=True, text=True, env=site.env(), timeout=120)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert f"FAIL {folder.name}:" in human.stderr


def _gaps(result: subprocess.CompletedProcess[str]) -> list[str]:
    report = json.loads(result.stdout)
    return [f["message"] for chain in report["chains"] for f in chain["failures"]]


def test_verify_during_an_upload_never_sees_a_false_gap_and_a_removal_is_reported(
        store: SeaweedS3, tmp_path: Path) -> None:
    store.create_bucket("ordered", object_lock=False)  # so the removal below can happen
    site = Site(tmp_path, store, "ordered", concurrency=6, lock_mode="none")
    folders = []
    for _ in range(10):  # a slow session, then quick ones that would overtake it
        folders += site.record(1, output_bytes=6_000_000)
        folders += site.record(5, output_bytes=600)
    names = [f.name for f in folders]

    upload = subprocess.Popen(site.argv("upload", "--config", str(site.config), "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=site.env())
    runs_during_upload = 0
    try:
        while upload.poll() is None:
            result = site.verify("--json")
            still_running = upload.poll() is None
            assert result.stdout, result.stderr
            assert _gaps(result) == [], _gaps(result)
            runs_during_upload += still_running
    finally:
        out, err = upload.communicate(timeout=120)
    assert upload.returncode == 0, out + err
    assert sorted(json.loads(out)["uploaded"]) == sorted(names)
    assert runs_during_upload >= 1  # verify really looked while the upload ran

    final = site.verify()
    assert final.returncode == 0, final.stdout + final.stderr
    assert "VERIFIED: 60 sessions" in final.stdout

    # A manifest really removed from the middle of the chain is still a gap.
    client = store.client()
    removed = next(v["Key"] for v in client.list_objects_v2(
        Bucket=site.bucket, MaxKeys=1000)["Contents"]
        if v["Key"].endswith(f"{names[30]}/manifest.json"))
    client.delete_object(Bucket=site.bucket, Key=removed)
    tampered = site.verify("--json")
    assert tampered.returncode != 0
    assert any(g.startswith("gap: sequence 31 missing") for g in _gaps(tampered)), \
        tampered.stdout
